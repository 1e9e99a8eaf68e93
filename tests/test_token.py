"""CNX token: supply, cap, genesis split, minter role, EIP-2612 permit."""
from __future__ import annotations

import ape
import pytest
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

from crynux_common.permit import sign_permit
from tests.conftest import CNX
from tests.isolation import isolated

CAP = 8_617_333_262 * CNX


@pytest.fixture
def token(project, owner, treasury):
    """A fresh token per test: other modules' session fixtures move the shared one's funds."""
    return owner.deploy(project.CNXToken, owner, treasury)


def test_metadata(token):
    assert token.name() == "Crynux"
    assert token.symbol() == "CNX"
    assert token.decimals() == 18
    assert token.cap() == CAP == token.CAP()


def test_genesis_mints_twenty_percent_to_treasury(token, treasury):
    assert token.totalSupply() == CAP // 5
    assert token.balanceOf(treasury) == CAP // 5
    assert token.mintable() == CAP - CAP // 5


def test_constructor_rejects_zero_treasury(project, owner):
    with ape.reverts(project.CNXToken.CNXZeroTreasury):
        owner.deploy(project.CNXToken, owner, ape.utils.ZERO_ADDRESS)


def test_mint_failsIfNotMinter(token, alice):
    role = token.MINTER_ROLE()
    with ape.reverts(token.AccessControlUnauthorizedAccount, account=alice.address, neededRole=role):
        token.mint(alice, CNX, sender=alice)


def test_mint_byMinter(token, owner, alice):
    token.grantRole(token.MINTER_ROLE(), owner, sender=owner)
    before = token.totalSupply()
    tx = token.mint(alice, 5 * CNX, sender=owner)
    assert token.balanceOf(alice) == 5 * CNX
    assert token.totalSupply() == before + 5 * CNX
    assert tx.events[0].event_name == "Transfer"


def test_mint_failsOverCap(token, owner, alice):
    token.grantRole(token.MINTER_ROLE(), owner, sender=owner)
    remaining = token.mintable()
    token.mint(alice, remaining, sender=owner)
    assert token.totalSupply() == CAP
    with ape.reverts(token.ERC20ExceededCap, increasedSupply=CAP + 1, cap=CAP):
        token.mint(alice, 1, sender=owner)


def _permit_signature(token, owner_key, spender, value, nonce, deadline):
    """Signed with the clients' own permit code (crynux_common.permit), checked by the token."""
    return sign_permit(
        Account.from_key(owner_key), token=token.address, chain_id=ape.chain.chain_id,
        spender=str(spender), value=value, nonce=nonce, deadline=deadline,
    )


@pytest.fixture
def signer_key():
    return "0x" + "11" * 32


def test_permit_setsAllowance(token, signer_key, bob):
    holder = Account.from_key(signer_key).address
    deadline = ape.chain.pending_timestamp + 3600
    v, r, s = _permit_signature(token, signer_key, bob.address, 7 * CNX, 0, deadline)
    token.permit(holder, bob, 7 * CNX, deadline, v, r, s, sender=bob)
    assert token.allowance(holder, bob) == 7 * CNX
    assert token.nonces(holder) == 1


def test_permit_failsIfReplayed(token, signer_key, bob):
    holder = Account.from_key(signer_key).address
    deadline = ape.chain.pending_timestamp + 3600
    v, r, s = _permit_signature(token, signer_key, bob.address, 7 * CNX, 0, deadline)
    token.permit(holder, bob, 7 * CNX, deadline, v, r, s, sender=bob)
    with ape.reverts(token.ERC2612InvalidSigner):
        token.permit(holder, bob, 7 * CNX, deadline, v, r, s, sender=bob)


def test_permit_failsIfExpired(token, signer_key, bob):
    holder = Account.from_key(signer_key).address
    deadline = ape.chain.pending_timestamp - 1
    v, r, s = _permit_signature(token, signer_key, bob.address, CNX, 0, deadline)
    with ape.reverts(token.ERC2612ExpiredSignature, deadline=deadline):
        token.permit(holder, bob, CNX, deadline, v, r, s, sender=bob)


@settings(max_examples=20)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["mint", "transfer"]),
            st.integers(min_value=0, max_value=3),  # from account index
            st.integers(min_value=0, max_value=3),  # to account index
            st.integers(min_value=0, max_value=CAP),
        ),
        max_size=8,
    )
)
def test_mints_and_transfers_keep_cap_and_balances(chain, project, accounts, ops):
    """No sequence of mints and transfers breaks the cap or the sum of balances."""
    with isolated(chain):
        admin, treasury = accounts[0], accounts[1]
        holders = [accounts[i] for i in range(4)]
        tok = admin.deploy(project.CNXToken, admin, treasury)
        tok.grantRole(tok.MINTER_ROLE(), admin, sender=admin)
        for kind, i, j, amount in ops:
            if kind == "mint":
                if tok.totalSupply() + amount > CAP:
                    with ape.reverts(tok.ERC20ExceededCap):
                        tok.mint(holders[j], amount, sender=admin)
                else:
                    tok.mint(holders[j], amount, sender=admin)
            else:
                bal = tok.balanceOf(holders[i])
                amount = amount % (bal + 1)
                tok.transfer(holders[j], amount, sender=holders[i])
            assert tok.totalSupply() <= CAP
            assert sum(tok.balanceOf(h) for h in holders) == tok.totalSupply()


def test_suite_runs_on_anvil(chain):
    """The tests run on a real Anvil node (ape-foundry), not the in-process EthTester."""
    assert chain.provider.name == "foundry"
    assert "anvil" in chain.provider.web3.client_version.lower()
