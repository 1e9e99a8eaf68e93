"""Roles, parameters, permit, the emission hook, commit/disclose guards and the audit module."""

from __future__ import annotations

import ape
import pytest
from ape.contracts import ContractContainer
from eth_utils import keccak

from crynux_common.enums import TaskStatus
from tests.conftest import CNX
from tests.market.conftest import Request, by_address, commitment, image_score
from tests.test_token import _permit_signature

RECORDER_CODE = "0x365f5f37365fa000"  # LOG0(calldata); STOP


def test_attestDelivery_onlyRelay(helpers, market, nodes, creators):
    helpers.join(nodes[0])
    t, _ = helpers.create(creators[0])
    helpers.commit(t, nodes[0], image_score(1, 1))
    role = market.RELAY_ROLE()
    with ape.reverts(
        market.AccessControlUnauthorizedAccount, account=creators[0].address, neededRole=role
    ):
        market.attestDelivery(t, sender=creators[0])


def test_attestDelivery_failsBeforeCommit(helpers, market, nodes, creators):
    helpers.join(nodes[0])
    t, _ = helpers.create(creators[0])
    with ape.reverts(market.WrongStatus, taskId=t, status=TaskStatus.STARTED):
        helpers.deliver(t)


def test_commit_guards(helpers, market, nodes, creators):
    helpers.join(nodes[0])
    helpers.join(nodes[1])
    t, _ = helpers.create(creators[0])
    executor = by_address(nodes, helpers.task(t).executor)
    other = nodes[1] if executor == nodes[0] else nodes[0]
    with ape.reverts(market.ZeroCommitment, taskId=t):
        market.commit(t, b"\x00" * 32, sender=executor)
    with ape.reverts(market.NotAssigned, taskId=t, caller=other.address):
        market.commit(t, b"\x01" * 32, sender=other)
    helpers.commit(t, executor, image_score(1, 1))
    with ape.reverts(market.NotAssigned, taskId=t, caller=executor.address):
        market.commit(t, b"\x01" * 32, sender=executor)


def test_commit_lateButBeforeTimeout_scoresSix(helpers, market, registry, nodes, creators):
    helpers.set_params(auditRateBps=0)
    helpers.join(nodes[0])
    t, _ = helpers.create(creators[0])
    helpers.travel(60)  # past T = 50 s, before the 180 s timeout
    helpers.commit(t, nodes[0], image_score(1, 1))
    tx = helpers.deliver(t)
    (rel,) = tx.events.filter(registry.NodeReleased)
    assert rel.taskScore == 6


def test_commitmentOf_and_disclose_guards(helpers, market, nodes, creators):
    helpers.set_params(auditRateBps=10_000)
    for n in nodes[:3]:
        helpers.join(n)
    t, _ = helpers.create(creators[0])
    e = by_address(nodes, helpers.task(t).executor)
    score = image_score(1, 1)
    _, salt = helpers.commit(t, e, score)
    assert market.commitmentOf(t, e) == commitment(t, e.address, score, salt)
    helpers.deliver(t)
    a0, a1 = (by_address(nodes, x) for x in helpers.task(t).auditors)
    assert market.commitmentOf(t, a0) == b"\x00" * 32
    with ape.reverts(market.WrongStatus, taskId=t, status=TaskStatus.AUDITING):
        helpers.disclose(t, e, score, salt)
    helpers.commit(t, a0, score)
    _, s1 = helpers.commit(t, a1, score)
    assert market.commitmentOf(t, a1) == commitment(t, a1.address, score, s1)
    with ape.reverts(market.CommitmentMismatch, taskId=t, node=e.address):
        helpers.disclose(t, e, image_score(1, 2), salt)
    with ape.reverts(market.NotAssigned, taskId=t, caller=creators[0].address):
        helpers.disclose(t, creators[0], score, salt)
    with ape.reverts(market.ScoreTooLong, taskId=t, length=97):
        helpers.disclose(t, e, b"\x01" * 97, salt)
    helpers.disclose(t, e, score, salt)
    with ape.reverts(market.AlreadyDisclosed, taskId=t, node=e.address):
        helpers.disclose(t, e, score, salt)


def test_setParams_onlyAdmin_andRanges(helpers, market, creators, owner):
    p = market.params()
    role = market.DEFAULT_ADMIN_ROLE()
    with ape.reverts(
        market.AccessControlUnauthorizedAccount, account=creators[0].address, neededRole=role
    ):
        market.setParams(tuple(p.values()), sender=creators[0])
    with ape.reverts(market.ParamOutOfRange, field=6, value=10_001):
        helpers.set_params(auditRateBps=10_001)
    with ape.reverts(market.ParamOutOfRange, field=11, value=65):
        helpers.set_params(maxQueueClasses=65)
    with ape.reverts(market.ParamOutOfRange, field=0, value=0):
        helpers.set_params(nonGenerationTime=0)
    tx = helpers.set_params(secondsPerImage=25)
    assert tx.events.filter(market.ParamsChanged)[0].params[1] == 25  # secondsPerImage
    assert market.estimatedTime(0, 2) == 80


def _permit(token, signer, spender: str, value: int, deadline: int):
    """EIP-2612 permit signature (v, r, s) of `signer` for `spender`, at its current nonce."""
    return _permit_signature(
        token, signer.private_key, spender, value, token.nonces(signer), deadline
    )


@pytest.fixture
def permit_signer(accounts, chain, token, treasury):
    signer = accounts.generate_test_account()
    chain.provider.set_balance(signer.address, 10**20)
    token.transfer(signer, 100 * CNX, sender=treasury)
    return signer


def test_createTaskWithPermit(market, token, chain, permit_signer):
    deadline = chain.pending_timestamp + 3600
    v, r, s = _permit(token, permit_signer, market.address, 5 * CNX, deadline)
    market.createTaskWithPermit(Request(fee=5 * CNX).t(), deadline, v, r, s, sender=permit_signer)
    assert token.balanceOf(permit_signer) == 95 * CNX
    assert token.nonces(permit_signer) == 1


def test_createTaskWithPermit_frontRunPermitStillCreates(
    market, token, chain, treasury, permit_signer
):
    deadline = chain.pending_timestamp + 3600
    v, r, s = _permit(token, permit_signer, market.address, 21 * CNX, deadline)
    token.permit(
        permit_signer.address, market.address, 21 * CNX, deadline, v, r, s, sender=treasury
    )
    req = Request(fee=7 * CNX, always_audit=True)  # escrow 3 x 7 CNX
    tx = market.createTaskWithPermit(req.t(), deadline, v, r, s, sender=permit_signer)
    assert token.balanceOf(permit_signer) == 79 * CNX
    assert len(tx.events.filter(market.TaskCreated)) == 1


def test_emissionHook_recordsEverySuccessfulNode(helpers, market, nodes, creators, chain, owner):
    hook = "0x" + "77" * 20
    chain.provider.set_code(hook, RECORDER_CODE)
    role = market.DEFAULT_ADMIN_ROLE()
    with ape.reverts(
        market.AccessControlUnauthorizedAccount, account=creators[0].address, neededRole=role
    ):
        market.setEmission(hook, 0, sender=creators[0])
    tx = market.setEmission(hook, 0, sender=owner)
    assert tx.events.filter(market.EmissionChanged)[0].taskMining.lower() == hook
    assert market.taskMining().lower() == hook
    helpers.set_params(auditRateBps=0)
    helpers.join(nodes[0])
    t, _ = helpers.create(creators[0])
    helpers.commit(t, nodes[0], image_score(1, 1))
    tx = helpers.deliver(t)
    calls = [log for log in tx.logs if log["address"].lower() == hook and not log["topics"]]
    assert len(calls) == 1
    data = calls[0]["data"]
    data = bytes.fromhex(data[2:]) if isinstance(data, str) else bytes(data)
    assert data[:4] == keccak(b"recordSuccess(address)")[:4]
    assert data[16:36].hex() == nodes[0].address[2:].lower()


def test_onNodeAvailable_onlyRegistry(market, creators):
    with ape.reverts(market.NotRegistry, caller=creators[0].address):
        market.onNodeAvailable(creators[0], sender=creators[0])


def test_auditModule_refusesDirectCalls(project, market, creators):
    # Not project.MarketAudits: Ape's source scan stops after 500 files, and once a full compile
    # has copied OpenZeppelin into contracts/.cache it no longer reaches contracts/libraries/.
    # The compiled type is in the manifest either way.
    module = ContractContainer(project.manifest.contract_types["MarketAudits"]).at(market.auditModule())
    with ape.reverts(module.NotDelegated):
        module.disclose(1, b"", b"\x00" * 32, sender=creators[0])
    with ape.reverts(module.NotDelegated):
        module.timeoutAudit(1, sender=creators[0])


def test_timeout_nothingDueForQueuedOrFinalTasks(helpers, market, creators, nodes):
    t, _ = helpers.create(creators[0])
    with ape.reverts(market.NothingDue, taskId=t):
        market.timeout(t, sender=creators[0])
    with ape.reverts(market.NothingDue, taskId=999):
        market.timeout(999, sender=creators[0])


def test_constructor_rejectsZeroAddresses(project, owner, token, registry):
    zero = "0x" + "00" * 20
    with ape.reverts(project.TaskMarket.ZeroAddress):
        owner.deploy(project.TaskMarket, token, registry, zero)
    with ape.reverts(project.TaskMarket.ZeroAddress):
        owner.deploy(project.TaskMarket, zero, registry, owner)
