"""relay_client.chain: deployment files, compiled ABIs, struct decoding, the relay's key."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_account import Account

from crynux_common.deployment import DeployedContract, Deployment
from relay_client.chain import (
    DeploymentError,
    TaskView,
    _decode,
    load_account,
    load_compiled_abi,
    load_deployment,
)

MARKET = "0x" + "12" * 20
REGISTRY = "0x" + "34" * 20
ABI = [{"type": "function", "name": "getTask", "inputs": [], "outputs": [], "stateMutability": "view"}]


def _build(tmp_path: Path) -> Path:
    build = tmp_path / ".build"
    build.mkdir()
    (build / "__local__.json").write_text(json.dumps({"contractTypes": {"TaskMarket": {"abi": ABI}}}))
    return build


def test_loadDeployment_readsTheProjectFormat(tmp_path: Path):
    path = tmp_path / "local.json"
    Deployment(network="local", chain_id=31337,
               contracts={"TaskMarket": DeployedContract(address=MARKET, abi=ABI),
                          "NodeRegistry": DeployedContract(address=REGISTRY, abi=[])}).save(path)
    d = load_deployment(path, tmp_path / "nowhere")
    assert d.market_address.lower() == MARKET and d.market_abi == ABI and d.chain_id == 31337
    assert d.registry_address is not None and d.registry_address.lower() == REGISTRY


def test_loadDeployment_takesMissingAbiFromApeBuild(tmp_path: Path):
    path = tmp_path / "flat.json"
    path.write_text(json.dumps({"TaskMarket": MARKET}))
    d = load_deployment(path, _build(tmp_path))
    assert d.market_abi == ABI and d.chain_id is None and d.registry_address is None


@pytest.mark.parametrize("content", ["not json", json.dumps({"contracts": {"Other": {"address": MARKET}}})])
def test_loadDeployment_failsIfNoMarket(tmp_path: Path, content: str):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DeploymentError):
        load_deployment(path, _build(tmp_path))


def test_loadCompiledAbi_failsIfNotCompiled(tmp_path: Path):
    with pytest.raises(DeploymentError, match="ape compile"):
        load_compiled_abi(tmp_path, "TaskMarket")


def test_decode_mapsStructFieldsToSnakeCase():
    out = {"name": "info", "type": "tuple", "components": [
        {"name": "creator", "type": "address"},
        {"name": "argsHash", "type": "bytes32"},
        {"name": "auditors", "type": "address[2]"},
        {"name": "inner", "type": "tuple[]", "components": [{"name": "numImages", "type": "uint8"}]},
    ]}
    value = (MARKET, b"\x01" * 32, (MARKET, REGISTRY), [(3,), (4,)])
    assert _decode(value, out) == {
        "creator": MARKET, "args_hash": b"\x01" * 32, "auditors": (MARKET, REGISTRY),
        "inner": [{"num_images": 3}, {"num_images": 4}],
    }


def test_taskView_isAssigned_coversExecutorAndAuditorsButNotZero():
    zero = "0x" + "00" * 20
    view = TaskView(task_id=1, creator=MARKET, task_type=0, status=3, args_hash=b"", fee=1, num_images=1,
                    executor=REGISTRY, auditors=(zero, MARKET.upper().replace("0X", "0x")), delivered=False,
                    drawn=True)
    assert view.is_assigned(REGISTRY) and view.is_assigned(MARKET) and not view.is_assigned(zero)
    assert not view.is_assigned("0x" + "56" * 20)


def test_loadAccount_fromFileOrEnvironment(tmp_path: Path):
    key = "0x" + "42" * 32
    (tmp_path / "k").write_text(key + "\n")
    assert load_account(tmp_path / "k", None).address == Account.from_key(key).address  # type: ignore[union-attr]
    assert load_account(None, key).address == Account.from_key(key).address  # type: ignore[union-attr]
    assert load_account(None, None) is None
