"""Selection: eligibility rules, exclusions, locality, and a property test that draws thousands
of selections over random node sets (previewSelect through batched eth_calls) and checks that
no ineligible or excluded node is ever chosen and that frequencies match the weights."""
from __future__ import annotations

import math
from collections import Counter

import ape
import requests
from eth_abi import encode
from eth_utils import to_checksum_address
from eth_utils import function_signature_to_4byte_selector as selector
from hypothesis import given
from hypothesis import strategies as st

from crynux_common.enums import NodeStatus as S
from tests.registry.conftest import QOS_ONE, ZERO, Req, h, isolated, run_task

PREVIEW = selector("previewSelect((uint16,bytes32,bytes32),uint256,address,address)")
GPUS = ["RTX 4090", "RTX 3060"]


def preview_many(registry, req: Req, seeds, ex_a: str = ZERO, ex_b: str = ZERO) -> list[str]:
    """previewSelect for every seed, as one raw JSON-RPC batch of eth_calls (web3's batching
    costs ~3 ms a call in Python; a raw batch ~0.1 ms)."""
    calls = [
        {
            "jsonrpc": "2.0",
            "id": i,
            "method": "eth_call",
            "params": [
                {
                    "to": registry.address,
                    "data": "0x"
                    + (
                        PREVIEW
                        + encode(
                            ["(uint16,bytes32,bytes32)", "uint256", "address", "address"],
                            [req.t(), seed, ex_a, ex_b],
                        )
                    ).hex(),
                },
                "latest",
            ],
        }
        for i, seed in enumerate(seeds)
    ]
    replies = sorted(requests.post(ape.chain.provider.uri, json=calls, timeout=60).json(), key=lambda r: r["id"])
    return [to_checksum_address("0x" + r["result"][-40:]) for r in replies]


def set_level(registry, market, node, level: int):
    """With qosWindow = 1 a task score sets the QoS: one task puts the node at `level`."""
    run_task(registry, market, node, score=level)


def window_one(registry, owner):
    p = list(registry.params())
    p[4] = 1
    registry.setParams(p, sender=owner)


# ------------------------------------------------------------------ eligibility, deterministic


def test_select_noneWhenNoNode(registry):
    assert registry.previewSelect(Req().t(), 1, ZERO, ZERO) == ZERO
    assert registry.previewSelect(Req(gpu=h("RTX 4090"), min_vram=24).t(), 1, ZERO, ZERO) == ZERO


def test_lockRandom_returnsZeroAndChangesNothingWhenNone(registry, nodes, join, market):
    join(nodes[0], vram=8)
    tx = registry.lockRandom(Req(min_vram=16).t(), 5, ZERO, ZERO, sender=market)
    assert tx.return_value == ZERO
    assert registry.statusOf(nodes[0]) == S.AVAILABLE
    assert not tx.events


def test_lockRandom_locksThePreviewedNode(registry, nodes, join, market):
    for a in nodes[:5]:
        join(a)
    for seed in range(6):
        expected = registry.previewSelect(Req().t(), seed, ZERO, ZERO)
        tx = registry.lockRandom(Req().t(), seed, ZERO, ZERO, sender=market)
        assert tx.return_value == expected
        assert registry.statusOf(expected) == S.BUSY
        assert tx.events.filter(registry.NodeStatusChanged)[0].node == expected
        registry.release(expected, 10, True, sender=market)


def test_select_requiredGpuNeedsExactVram(registry, nodes, join):
    join(nodes[0], gpu="RTX 4090", vram=24)
    join(nodes[1], gpu="RTX 4090", vram=48)
    join(nodes[2], gpu="RTX 3090", vram=24)
    req = Req(min_vram=24, gpu=h("RTX 4090"))
    assert set(preview_many(registry, req, range(60))) == {nodes[0].address}
    assert registry.isEligible(nodes[0], req.t())
    assert not registry.isEligible(nodes[1], req.t())
    assert not registry.isEligible(nodes[2], req.t())
    assert registry.previewSelect(Req(min_vram=16, gpu=h("RTX 4090")).t(), 1, ZERO, ZERO) == ZERO


def test_select_minVram(registry, nodes, join):
    join(nodes[0], gpu="A", vram=8)
    join(nodes[1], gpu="B", vram=16)
    join(nodes[2], gpu="A", vram=24)
    picks = set(preview_many(registry, Req(min_vram=16), range(80)))
    assert picks == {nodes[1].address, nodes[2].address}
    assert not registry.isEligible(nodes[0], Req(min_vram=16).t())
    assert registry.isEligible(nodes[0], Req(min_vram=8).t())


def test_select_onlyAvailableNodes(registry, nodes, join, market):
    a, b, c, d = nodes[:4]
    for x in (a, b, c, d):
        join(x)
    registry.lock(b, sender=market)
    registry.pause(sender=c)
    registry.quit(sender=d)
    assert set(preview_many(registry, Req(), range(60))) == {a.address}
    for x in (b, c, d):
        assert not registry.isEligible(x, Req().t())


def test_select_excludesBothGivenNodes(registry, nodes, join):
    """Excluded nodes in the same (group, level) set and at various positions are skipped."""
    for a in nodes[:5]:
        join(a)
    addrs = [a.address for a in nodes[:5]]
    for i in range(5):
        for j in range(5):
            picks = Counter(preview_many(registry, Req(), range(40 * i + j * 7, 40 * i + j * 7 + 120), addrs[i], addrs[j]))
            allowed = set(addrs) - {addrs[i], addrs[j]}
            assert set(picks) == allowed


def test_select_excludingEveryoneGivesNone(registry, nodes, join):
    join(nodes[0])
    join(nodes[1])
    assert set(preview_many(registry, Req(), range(30), nodes[0].address, nodes[1].address)) == {ZERO}


def test_select_skipsNodesBelowVersionRule(registry, owner, nodes, join):
    join(nodes[0], version=(1, 0, 0))
    join(nodes[1], version=(1, 2, 0))
    p = list(registry.params())
    p[6] = 1  # minMinor = 1
    registry.setParams(p, sender=owner)
    assert set(preview_many(registry, Req(), range(100))) == {nodes[1].address}
    assert not registry.isEligible(nodes[0], Req().t())
    registry.pause(sender=nodes[1])
    # Only a stale node left: nobody is selected.
    assert registry.previewSelect(Req().t(), 3, ZERO, ZERO) == ZERO


def test_select_weightZeroNeverChosen(registry, owner, nodes, join, market):
    window_one(registry, owner)
    join(nodes[0])
    join(nodes[1])
    set_level(registry, market, nodes[0], 0)
    assert registry.weightOf(nodes[0]) == 0
    assert set(preview_many(registry, Req(), range(60))) == {nodes[1].address}


def test_select_localityDoublesWeight(registry, nodes, join):
    join(nodes[0], models=["base:sd15"])
    join(nodes[1], models=["base:sdxl"])
    n = 3000
    picks = Counter(preview_many(registry, Req(local_model=h("base:sd15")), range(n)))
    p = 2 / 3
    assert abs(picks[nodes[0].address] - n * p) < 5 * math.sqrt(n * p * (1 - p))
    # Without the locality request: even.
    picks = Counter(preview_many(registry, Req(), range(n)))
    assert abs(picks[nodes[0].address] - n / 2) < 5 * math.sqrt(n / 4)


def test_select_weightsFollowQosLevels(registry, owner, nodes, join, market):
    window_one(registry, owner)
    for a, level in zip(nodes[:3], [10, 5, 2]):
        join(a)
        set_level(registry, market, a, level)
    n = 3000
    picks = Counter(preview_many(registry, Req(), range(n)))
    for a, w in zip(nodes[:3], [10, 5, 2]):
        p = w / 17
        assert abs(picks[a.address] - n * p) < 5 * math.sqrt(n * p * (1 - p)), (w, picks)


# ------------------------------------------------------------------ property test

node_spec = st.tuples(
    st.integers(0, len(GPUS) - 1),  # gpu
    st.sampled_from([16, 24, 24]),  # vram
    st.sampled_from([10, 10, 10, 7, 3, 1]),  # QoS level (repeats share a set: exercises exclusion)
    st.booleans(),  # holds the local model
    st.sampled_from([S.AVAILABLE, S.AVAILABLE, S.AVAILABLE, S.BUSY, S.PAUSED]),
)


@given(
    specs=st.lists(node_spec, min_size=2, max_size=9),
    min_vram=st.sampled_from([0, 16, 24]),
    want_gpu=st.sampled_from([False, False, True]),
    want_model=st.sampled_from([True, True, False]),
    seed0=st.integers(0, 2**64),
    data=st.data(),
)
def test_select_property(
    chain, registry, owner, market, fresh_accounts, specs, min_vram, want_gpu, want_model, seed0, data
):
    model = h("base:model")
    # Excluded nodes: none, or any of the set (index -1 = no exclusion).
    ex = data.draw(st.tuples(st.integers(-1, len(specs) - 1), st.integers(-1, len(specs) - 1)), label="ex")
    with isolated(chain):
        window_one(registry, owner)
        accts = fresh_accounts[: len(specs)]
        for a, (g, vram, level, holds, state) in zip(accts, specs):
            models = [model] if holds else [h("lora:other")]
            registry.join(400 * 10**18, GPUS[g], vram, [1, 0, 0], models, sender=a)
            set_level(registry, market, a, level)
            if state == S.BUSY:
                registry.lock(a, sender=market)
            elif state == S.PAUSED:
                registry.pause(sender=a)
        req_vram = 24 if want_gpu and min_vram == 0 else min_vram
        req = Req(min_vram=req_vram, gpu=h(GPUS[0]) if want_gpu else b"\x00" * 32,
                  local_model=model if want_model else b"\x00" * 32)
        excluded = {accts[i].address for i in ex if 0 <= i < len(accts)}
        ex_a, ex_b = [accts[i].address if 0 <= i < len(accts) else ZERO for i in ex]

        weights = {}
        for a, (g, vram, level, holds, state) in zip(accts, specs):
            eligible = state == S.AVAILABLE and vram >= req.min_vram
            if want_gpu:
                eligible = eligible and g == 0 and vram == req.min_vram
            assert registry.isEligible(a, req.t()) == eligible
            if eligible and a.address not in excluded:
                weights[a.address] = level * (2 if want_model and holds else 1)
        total = sum(weights.values())

        n = 2000
        picks = Counter(preview_many(registry, req, range(seed0, seed0 + n), ex_a, ex_b))
        if total == 0:
            assert set(picks) == {ZERO}
            return
        assert set(picks) <= set(weights), "an ineligible or excluded node was chosen"
        # Per node, a binomial bound at 5 sigma (plus the 2^-8 bound of the capped rejection).
        for addr, w in weights.items():
            p = w / total
            sigma = math.sqrt(n * p * (1 - p))
            assert abs(picks[addr] - n * p) <= 5 * sigma + n / 256 + 1, (addr, picks[addr], n * p)
        # And a chi-square over all nodes (k - 1 degrees of freedom), far tail.
        k = len(weights)
        if k > 1:
            chi2 = sum((picks[a] - n * w / total) ** 2 / (n * w / total) for a, w in weights.items())
            assert chi2 < (k - 1) + 8 * math.sqrt(2 * (k - 1)) + 10, (chi2, k)
