"""The node's Ethereum key: an encrypted eth-account keystore or an Ape account alias.

The password comes from a file (`password_file`) or an environment variable (named by
`password_env`, CRYNUX_NODE_PASSWORD by default). The private key is never printed or
logged: the wallet's repr shows the address only, and errors never include the key or the
password.

An Ape account alias is Ape's own keystore file `<ape data folder>/accounts/<alias>.json`
(a standard version-3 keystore), decrypted the same way: Ape is not needed at run time.

    wallet = load_wallet(config)
    wallet.address            # checksum address
    wallet.account            # eth_account LocalAccount (signs transactions and relay requests)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from eth_account import Account
from eth_account.signers.local import LocalAccount

if TYPE_CHECKING:
    from node_client.config import NodeConfig


class WalletError(Exception):
    """No key could be loaded (missing file, no password, wrong password, malformed keystore)."""


class Wallet:
    """Holds the decrypted account; shows only its address."""

    __slots__ = ("_account", "source")

    def __init__(self, account: LocalAccount, source: str) -> None:
        self._account = account
        self.source = source

    @property
    def account(self) -> LocalAccount:
        return self._account

    @property
    def address(self) -> str:
        return str(self._account.address)

    def __repr__(self) -> str:
        return f"Wallet({self.address}, from {self.source})"

    __str__ = __repr__


def _read_password(password_file: Path | None, password_env: str) -> str:
    if password_file is not None:
        try:
            lines = Path(password_file).read_text().splitlines()
        except OSError as exc:
            raise WalletError(f"cannot read the password file {password_file}: {exc.strerror}") from None
        return lines[0] if lines else ""
    value = os.environ.get(password_env)
    if value is None:
        raise WalletError(
            f"no keystore password: set the environment variable {password_env} or 'password_file'"
        )
    return value


def decrypt_keystore(path: Path, password: str) -> LocalAccount:
    try:
        keystore = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise WalletError(f"keystore not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise WalletError(f"keystore {path} is not readable JSON: {type(exc).__name__}") from None
    try:
        key = Account.decrypt(keystore, password)
    except ValueError:
        # eth-account says "MAC mismatch" for a wrong password; never echo anything else.
        raise WalletError(f"cannot decrypt the keystore {path}: wrong password?") from None
    except Exception as exc:  # malformed keystore: report the type, not the content
        raise WalletError(f"keystore {path} is malformed ({type(exc).__name__})") from None
    account: LocalAccount = Account.from_key(key)
    expected = keystore.get("address")
    if expected and account.address.lower().removeprefix("0x") != str(expected).lower().removeprefix("0x"):
        raise WalletError(f"keystore {path}: the key does not match the address it declares")
    return account


def ape_keystore_path(alias: str, data_folder: Path | None = None) -> Path:
    folder = data_folder or Path(os.environ.get("APE_DATA_FOLDER") or Path.home() / ".ape")
    return Path(folder).expanduser() / "accounts" / f"{alias}.json"


def load_wallet(config: NodeConfig) -> Wallet:
    """The node's key as configured (keystore file or Ape alias)."""
    if config.keystore is not None:
        path = Path(config.keystore)
        source = f"keystore {path}"
    elif config.ape_account is not None:
        path = ape_keystore_path(config.ape_account, config.ape_data_folder)
        source = f"ape account {config.ape_account!r}"
        if not path.exists():
            raise WalletError(f"no Ape account {config.ape_account!r} ({path} does not exist)")
    else:
        raise WalletError("no key configured: set 'keystore' or 'ape_account'")
    password = _read_password(config.password_file, config.password_env)
    return Wallet(decrypt_keystore(path, password), source)


def create_keystore(path: Path, password: str, *, private_key: bytes | None = None, iterations: int | None = None) -> str:
    """Writes a new (or the given) key encrypted to `path` (mode 0600); returns its address."""
    account = Account.from_key(private_key) if private_key is not None else Account.create()
    kwargs = {"kdf": "pbkdf2", "iterations": iterations} if iterations else {}
    data = Account.encrypt(account.key, password, **kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    return str(account.address)
