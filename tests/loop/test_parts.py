"""The loop's parts on their own: configuration, wallet, journal, the test-only cheat."""
from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest
from eth_account import Account

from node_client.config import ConfigError, ModelsConfig, load_config
from node_client.journal import Journal, JournalEntry, Role, Stage
from node_client.wallet import WalletError, create_keystore, load_wallet
from node_client.worker import _cheat

PASSWORD = "s3cret-pass"


@pytest.fixture
def keystore(tmp_path: Path) -> tuple[Path, str, bytes]:
    acct = Account.create()
    path = tmp_path / "key.json"
    create_keystore(path, PASSWORD, private_key=acct.key, iterations=2)
    return path, acct.address, bytes(acct.key)


def test_config_environmentOverridesFile_andPathsAreRelativeToTheFile(tmp_path: Path, monkeypatch) -> None:
    cfg_file = tmp_path / "conf" / "node.yaml"
    cfg_file.parent.mkdir()
    cfg_file.write_text("rpc_url: http://file:8545\ndata_dir: state\npoll_interval: 5\n"
                        "models: {tiny_models: false}\ngpu: {name: CPU-TEST, vram_gb: 4}\n")
    monkeypatch.setenv("CRYNUX_NODE_POLL_INTERVAL", "0.5")
    monkeypatch.setenv("CRYNUX_NODE_MODELS__TINY_MODELS", "true")
    cfg = load_config(cfg_file)
    assert cfg.rpc_url == "http://file:8545"
    assert cfg.poll_interval == 0.5
    assert cfg.models.tiny_models is True
    assert cfg.data_dir == tmp_path / "conf" / "state"
    assert cfg.gpu is not None and (cfg.gpu.name, cfg.gpu.vram_gb) == ("CPU-TEST", 4)
    assert load_config(cfg_file, poll_interval=9).poll_interval == 9  # command line wins


def test_config_toml_andUnknownKeysAreRejected(tmp_path: Path) -> None:
    good = tmp_path / "node.toml"
    good.write_text('relay_url = "http://relay:1"\nbehaviour = "honest"\n[models]\nallow_download = false\n')
    cfg = load_config(good)
    assert cfg.relay_url == "http://relay:1" and cfg.models.allow_download is False
    bad = tmp_path / "bad.yaml"
    bad.write_text("rpc_urll: http://typo\n")
    with pytest.raises(ConfigError, match="rpc_urll"):
        load_config(bad)
    with pytest.raises(ConfigError, match="behaviour"):
        load_config(good, behaviour="lazy")


def test_modelsConfig_mirrorsTheRegistrySettings() -> None:
    from node_client.models import ModelSource, RegistrySettings

    assert set(ModelsConfig.model_fields) == set(RegistrySettings.model_fields)
    cfg = ModelsConfig.model_validate({"models": [{"id": "base:x", "path": "/m"}], "tiny_models": False})
    settings = RegistrySettings.model_validate(cfg.model_dump())
    assert settings.models == [ModelSource(id="base:x", path=Path("/m"))] and not settings.tiny_models


def test_wallet_decryptsKeystore_andNeverShowsTheKey(tmp_path: Path, keystore, monkeypatch, caplog) -> None:
    path, address, key = keystore
    monkeypatch.setenv("CRYNUX_NODE_PASSWORD", PASSWORD)
    cfg = load_config(None, keystore=path)
    with caplog.at_level(logging.DEBUG):
        wallet = load_wallet(cfg)
    assert wallet.address == address
    assert key.hex() not in repr(wallet) and key.hex() not in str(wallet)
    assert key.hex() not in caplog.text and PASSWORD not in caplog.text

    monkeypatch.setenv("CRYNUX_NODE_PASSWORD", "wrong")
    with pytest.raises(WalletError) as err:
        load_wallet(cfg)
    assert "wrong password" in str(err.value) and "wrong" not in str(err.value).replace("wrong password", "")

    monkeypatch.delenv("CRYNUX_NODE_PASSWORD")
    with pytest.raises(WalletError, match="CRYNUX_NODE_PASSWORD"):
        load_wallet(cfg)
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    assert load_wallet(load_config(None, keystore=path, password_file=tmp_path / "pw")).address == address


def test_wallet_readsAnApeAccountAlias(tmp_path: Path, keystore, monkeypatch) -> None:
    path, address, _ = keystore
    (tmp_path / "ape" / "accounts").mkdir(parents=True)
    (tmp_path / "ape" / "accounts" / "node1.json").write_text(path.read_text())
    monkeypatch.setenv("CRYNUX_NODE_PASSWORD", PASSWORD)
    cfg = load_config(None, ape_account="node1", ape_data_folder=tmp_path / "ape")
    assert load_wallet(cfg).address == address
    with pytest.raises(WalletError, match="no Ape account"):
        load_wallet(load_config(None, ape_account="other", ape_data_folder=tmp_path / "ape"))
    with pytest.raises(ConfigError, match="not both"):
        load_config(None, ape_account="node1", keystore=path)


def test_journal_upgradesTheFirstSchema_andKeepsOpenTasks(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    with sqlite3.connect(path) as db:  # the table as the first journal version wrote it
        db.execute("CREATE TABLE tasks (task_id INTEGER PRIMARY KEY, role TEXT NOT NULL, stage TEXT NOT NULL, "
                   "task_type INTEGER NOT NULL DEFAULT 0, score BLOB, salt BLOB, commitment BLOB, "
                   "result_dir TEXT, error TEXT)")
        db.execute("INSERT INTO tasks (task_id, role, stage, salt) VALUES (3, 'auditor', 'committed', x'01')")
    j = Journal(path)
    old = j.get(3)
    assert old is not None and old.stage == Stage.COMMITTED and old.salt == b"\x01" and old.timings == {}
    j.add_assigned(4, Role.EXECUTOR)
    j.advance(4, Stage.COMPUTED, score=b"\xaa" * 8, salt=b"\x02" * 32, timings={"infer_s": 0.5})
    j.advance(3, Stage.DONE, outcome="task success")
    again = Journal(path)  # reopened: durable
    assert [e.task_id for e in again.open_entries()] == [4]
    assert again.get(4).timings == {"infer_s": 0.5} and again.get(4).score == b"\xaa" * 8
    assert again.summary() == {"computed": 1, "done": 1}
    again.set_meta("event_cursor", "17")
    assert Journal(path).get_meta("event_cursor") == "17"
    entry, created = again.add_assigned(4, Role.AUDITOR)
    assert not created and entry.role == Role.EXECUTOR
    assert isinstance(entry, JournalEntry)


def test_cheat_isTestOnly_andChangesOnlyTheSeed() -> None:
    args = json.dumps({"task_config": {"seed": 5, "steps": 2}, "prompt": "x"}).encode()
    assert _cheat(args, "honest") == args
    assert json.loads(_cheat(args, "wrong_image")) == {"task_config": {"seed": 6, "steps": 2}, "prompt": "x"}
    text = json.dumps({"seed": 1, "messages": []}).encode()
    assert json.loads(_cheat(text, "wrong_image"))["seed"] == 2
