"""EIP-2612 permits of the CNX token, signed off-chain (node join, SDK createTask, tests)."""
from __future__ import annotations

from typing import Any

from eth_account.messages import encode_typed_data
from eth_utils import to_checksum_address

PERMIT_TYPES: dict[str, list[dict[str, str]]] = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "Permit": [
        {"name": "owner", "type": "address"},
        {"name": "spender", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ],
}


def sign_permit(
    account: Any,
    *,
    token: str,
    chain_id: int,
    spender: str,
    value: int,
    nonce: int,
    deadline: int,
    name: str = "Crynux",
    version: str = "1",
) -> tuple[int, bytes, bytes]:
    """(v, r, s) of a permit letting `spender` move `value` of `account`'s tokens.

    `account` is an eth-account LocalAccount; `name`/`version` are the token's EIP-712
    domain (read them from `eip712Domain()` when the token may differ from CNX).
    """
    typed = {
        "types": PERMIT_TYPES,
        "primaryType": "Permit",
        "domain": {
            "name": name,
            "version": version,
            "chainId": int(chain_id),
            "verifyingContract": to_checksum_address(token),
        },
        "message": {
            "owner": account.address,
            "spender": to_checksum_address(spender),
            "value": int(value),
            "nonce": int(nonce),
            "deadline": int(deadline),
        },
    }
    signed = account.sign_message(encode_typed_data(full_message=typed))
    return int(signed.v), int(signed.r).to_bytes(32, "big"), int(signed.s).to_bytes(32, "big")
