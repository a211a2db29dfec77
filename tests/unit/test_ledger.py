"""The ledger core by example: each block type, each rejection, holds, equivocation, slash,
cut/revert, and the same state hash whatever the arrival order."""

from __future__ import annotations

import dataclasses
import random

import pytest

from inos_node.economy.genesis import Genesis, create_genesis
from inos_node.economy.ledger import Ledger, Outcome, lock_required, settle_fee
from inos_node.economy.model import (
    ZERO_HASH,
    Block,
    BlockType,
    Payment,
    account_of_key,
    block_hash,
    sign_block,
)
from inos_node.errors import BlockRejected, LocalProtocolError, RemoteProtocolError
from inos_node.identity import Identity
from inos_node.receipts import sign_body
from inos_node.types import Metrics
from inos_node.wire.delegation import ReceiptBody
from inos_node.wire.ledger import (
    SyncBlocks,
    SyncHead,
    SyncHeads,
    SyncResponse,
    decode_block,
    decode_proof,
    decode_receipt,
    decode_sync_request,
    decode_sync_response,
    encode_block,
    encode_proof,
    encode_receipt,
    encode_sync_request,
    encode_sync_response,
)

A, B, C, W1, W2, W3, TREASURY = (Identity(bytes([i]) * 32) for i in range(1, 8))
START = 1000


@pytest.fixture(scope="module")
def genesis() -> Genesis:
    allocs = [(i.did, START) for i in (A, B, C, W1, W2, W3)]
    doc, _ = create_genesis(allocs, treasury=TREASURY.did, fee_bps=500)
    return Genesis.from_doc(doc)


def acct(identity: Identity) -> bytes:
    return account_of_key(identity.public_key)


def receipt(worker: Identity, job: str, output: bytes = b"out", capsule: str = "compute.blake3") -> bytes:
    body = ReceiptBody(job_id=job, requester="r", worker="w", capsule=capsule, input_digest=b"i" * 32,
                       output_digest=output.ljust(32, b"\0"), cost=1, metrics=Metrics())
    return encode_receipt(sign_body(worker, body))


def forge(block: Block, signer: Identity, **changes) -> Block:
    """A copy of ``block`` with ``changes``, signed by ``signer`` (bypassing next_block's checks)."""
    return sign_block(dataclasses.replace(block, **changes), signer.sign)


def check_supply(ledger: Ledger) -> None:
    s = ledger.supply()
    assert s["balances"] + s["escrow"] + s["staked"] == s["minted"]


# ------------------------------------------------------------------------------ block types


def test_transfer_credits_the_recipient_at_once(genesis):
    led = Ledger(genesis)
    b = led.next_block(A, BlockType.TRANSFER, amount=30, counterparty=B.did, timestamp_ms=5)
    res = led.offer(b)
    assert res.outcome is Outcome.APPLIED and res.applied == [b]
    assert led.account(A.did)["balance"] == START - 30
    assert led.account(B.did)["balance"] == START + 30
    assert led.account(A.did)["height"] == 1 and led.heads()[acct(A)] == (1, block_hash(b))
    assert (b.credits, b.balance, b.previous) == (START, START - 30, ZERO_HASH)
    # B spends the received credits: its block declares them
    b2 = led.next_block(B, BlockType.TRANSFER, amount=START + 30, counterparty=C.did)
    assert b2.credits == START + 30 and b2.balance == 0
    assert led.offer(b2).outcome is Outcome.APPLIED
    check_supply(led)


def test_replay_is_a_duplicate_noop(genesis):
    led = Ledger(genesis)
    b = led.next_block(A, BlockType.TRANSFER, amount=1, counterparty=B.did)
    led.offer(b)
    before = led.state_hash()
    again = led.offer(decode_block(encode_block(b)))
    assert again.outcome is Outcome.DUPLICATE and again.applied == []
    assert led.state_hash() == before


def test_escrow_lock_settle_pays_workers_fee_and_refunds_rest(genesis):
    led = Ledger(genesis)
    need = lock_required(100 + 50, 500)
    assert need == 158
    lock = led.next_block(A, BlockType.ESCROW_LOCK, amount=200, job="job-1",
                          payments=[(W1.did, 100), (W2.did, 50)], deadline_ms=99)
    assert led.offer(lock).outcome is Outcome.APPLIED
    assert led.account(A.did)["escrow"] == 200 and led.account(A.did)["balance"] == START - 200
    assert led.escrow(A.did, "job-1")["state"] == "open"
    assert [e["job"] for e in led.open_escrows(A.did)] == ["job-1"]
    settle = led.next_block(A, BlockType.SETTLE, job="job-1", payments=[(W1.did, 80), (W2.did, 50)],
                            evidence=[receipt(W1, "job-1"), receipt(W2, "job-1")])
    assert settle.amount == 130
    assert led.offer(settle).outcome is Outcome.APPLIED
    fee = settle_fee(130, 500)
    assert fee == 7
    assert led.account(W1.did)["balance"] == START + 80
    assert led.account(W2.did)["balance"] == START + 50
    assert led.account(TREASURY.did)["balance"] == fee
    assert led.account(A.did)["balance"] == START - 130 - fee
    assert led.account(A.did)["escrow"] == 0
    assert led.escrow(A.did, "job-1")["state"] == "settled" and led.open_escrows(A.did) == []
    check_supply(led)
    # exactly once
    twice = forge(settle, A, height=3, previous=block_hash(settle), credits=START, balance=START - 137)
    res = led.offer(twice)
    assert res.outcome is Outcome.REJECTED and res.reason == "escrow job-1 already settled"
    with pytest.raises(BlockRejected, match="already settled"):
        led.next_block(A, BlockType.REFUND, job="job-1")


def test_refund_returns_the_escrow_once(genesis):
    led = Ledger(genesis)
    led.offer(led.next_block(A, BlockType.ESCROW_LOCK, amount=50, job="j", payments=[(W1.did, 40)]))
    refund = led.next_block(A, BlockType.REFUND, job="j")
    assert refund.amount == 50
    assert led.offer(refund).outcome is Outcome.APPLIED
    assert led.account(A.did)["balance"] == START and led.account(A.did)["escrow"] == 0
    assert led.escrow(A.did, "j")["state"] == "refunded"
    with pytest.raises(BlockRejected, match="already refunded"):
        led.next_block(A, BlockType.SETTLE, job="j", payments=[(W1.did, 1)], evidence=[receipt(W1, "j")])


def test_stake_and_unstake(genesis):
    led = Ledger(genesis)
    led.offer(led.next_block(W1, BlockType.STAKE, amount=300))
    assert (led.account(W1.did)["staked"], led.account(W1.did)["balance"]) == (300, START - 300)
    led.offer(led.next_block(W1, BlockType.UNSTAKE, amount=100))
    assert (led.account(W1.did)["staked"], led.account(W1.did)["balance"]) == (200, START - 200)
    with pytest.raises(BlockRejected, match="only 200 staked"):
        led.next_block(W1, BlockType.UNSTAKE, amount=201)
    check_supply(led)


# ------------------------------------------------------------------------------ rejections


def _applied_transfer(led: Ledger) -> Block:
    b = led.next_block(A, BlockType.TRANSFER, amount=10, counterparty=B.did)
    assert led.offer(b).outcome is Outcome.APPLIED
    return b


def _next(led: Ledger, who: Identity, **changes) -> Block:
    """A well-formed next transfer of ``who`` (not applied), with ``changes`` forged in."""
    base = led.next_block(who, BlockType.TRANSFER, amount=1, counterparty=C.did)
    return forge(base, who, **changes) if changes else base


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda led: dataclasses.replace(_next(led, A), amount=2), "bad signature"),
        (lambda led: _next(led, A, account=acct(B)), "account is not blake3(public key)"),
        (lambda led: _next(led, A, previous=b"\x01" * 32), "previous must be 32 bytes (zeros at height 1)"),
        (lambda led: (_applied_transfer(led), _next(led, A, previous=b"\x01" * 32, credits=START))[1],
         "previous hash does not match the head at height 1"),
        (lambda led: _next(led, A, amount=START + 1, balance=0), "balance would be -1"),
        (lambda led: _next(led, A, balance=5), f"declared balance 5 is not {START - 1}"),
        (lambda led: _next(led, A, amount=0, balance=START), "transfer amount must be > 0"),
        (lambda led: _next(led, A, counterparty=acct(A)),
         "transfer needs a 32-byte recipient other than the sender"),
        (lambda led: _next(led, A, job="x"), "transfer takes no job"),
        (lambda led: _next(led, A, height=0), "height 0 is not >= 1"),
        (lambda led: _next(led, A, job="j" * 129), "job id longer than 128 characters"),
        (lambda led: _next(led, A, type=BlockType.STAKE, counterparty=b"", job="x"),
         "stake needs an amount > 0 and no job"),
        (lambda led: _next(led, A, type=BlockType.STAKE), "stake takes no counterparty"),
    ],
)
def test_rejections_name_the_reason(genesis, make, reason):
    led = Ledger(genesis)
    block = make(led)
    before = led.state_hash()
    res = led.offer(block)
    assert res.outcome is Outcome.REJECTED
    assert res.reason == reason
    assert led.state_hash() == before, "a rejected block changes nothing"


def test_escrow_rejections(genesis):
    led = Ledger(genesis)
    with pytest.raises(BlockRejected, match=r"does not cover the max pay plus fee \(105\)"):
        led.next_block(A, BlockType.ESCROW_LOCK, amount=104, job="j", payments=[(W1.did, 100)])
    with pytest.raises(BlockRejected, match="distinct 32-byte workers"):
        led.next_block(A, BlockType.ESCROW_LOCK, amount=500, job="j", payments=[(W1.did, 1), (W1.did, 2)])
    with pytest.raises(BlockRejected, match="no escrow for job j"):
        led.next_block(A, BlockType.REFUND, job="j")
    led.offer(led.next_block(A, BlockType.ESCROW_LOCK, amount=106, job="j", payments=[(W1.did, 100)]))
    with pytest.raises(BlockRejected, match="escrow j already exists"):
        led.next_block(A, BlockType.ESCROW_LOCK, amount=106, job="j", payments=[(W1.did, 100)])
    with pytest.raises(BlockRejected, match="not a worker of the lock"):
        led.next_block(A, BlockType.SETTLE, job="j", payments=[(W2.did, 1)], evidence=[receipt(W2, "j")])
    with pytest.raises(BlockRejected, match="over the max pay 100"):
        led.next_block(A, BlockType.SETTLE, job="j", payments=[(W1.did, 101)], evidence=[receipt(W1, "j")])
    with pytest.raises(BlockRejected, match="no valid receipt for job j"):
        led.next_block(A, BlockType.SETTLE, job="j", payments=[(W1.did, 10)])
    with pytest.raises(BlockRejected, match="no valid receipt"):  # a receipt for another job
        led.next_block(A, BlockType.SETTLE, job="j", payments=[(W1.did, 10)], evidence=[receipt(W1, "k")])
    with pytest.raises(BlockRejected, match="no valid receipt"):  # signed by another worker
        led.next_block(A, BlockType.SETTLE, job="j", payments=[(W1.did, 10)], evidence=[receipt(W2, "j")])
    r = decode_receipt(receipt(W1, "j"))
    forged = encode_receipt(dataclasses.replace(r, signature=bytes(64)))
    with pytest.raises(BlockRejected, match="no valid receipt"):
        led.next_block(A, BlockType.SETTLE, job="j", payments=[(W1.did, 10)], evidence=[forged])
    ok = led.next_block(A, BlockType.SETTLE, job="j", payments=[(W1.did, 10)], evidence=[receipt(W1, "j")])
    wrong_amount = forge(ok, A, amount=11)
    assert led.offer(wrong_amount).reason == "settle amount 11 is not the sum paid (10)"
    assert led.offer(ok).outcome is Outcome.APPLIED
    check_supply(led)


def test_overspend_is_refused_when_building(genesis):
    led = Ledger(genesis)
    with pytest.raises(BlockRejected) as info:
        led.next_block(A, BlockType.TRANSFER, amount=START + 1, counterparty=B.did)
    assert info.value.reason == "balance would be -1"


# ------------------------------------------------------------------------------- holding


def test_gap_is_held_then_released_in_order(genesis):
    src = Ledger(genesis)
    chain = [src.next_block(A, BlockType.TRANSFER, amount=1, counterparty=B.did) for _ in range(1)]
    src.offer(chain[0])
    for _ in range(3):
        b = src.next_block(A, BlockType.TRANSFER, amount=1, counterparty=B.did)
        src.offer(b)
        chain.append(b)
    led = Ledger(genesis)
    res = led.offer(chain[2])
    assert res.outcome is Outcome.HELD and res.missing == (acct(A), 1)
    assert res.reason == "height 3 follows 0: gap"
    assert led.offer(chain[3]).outcome is Outcome.HELD
    assert led.offer(chain[2]).reason == "already held"
    res = led.offer(chain[0])
    assert res.outcome is Outcome.APPLIED and res.applied == [chain[0]]
    res = led.offer(chain[1])
    assert res.applied == chain[1:]
    assert led.state_hash() == src.state_hash() and led.held() == []


def test_block_declaring_unseen_credits_is_held_until_they_arrive(genesis):
    src = Ledger(genesis)
    pay = src.next_block(A, BlockType.TRANSFER, amount=START, counterparty=B.did)
    src.offer(pay)
    spend = src.next_block(B, BlockType.TRANSFER, amount=2 * START, counterparty=C.did)
    src.offer(spend)
    led = Ledger(genesis)
    res = led.offer(spend)
    assert res.outcome is Outcome.HELD and res.missing is None
    assert res.reason == f"declares {2 * START} credits, {START} seen here"
    res = led.offer(pay)
    assert res.outcome is Outcome.APPLIED and res.applied == [pay, spend]
    assert led.state_hash() == src.state_hash()


def test_held_queue_is_bounded(genesis):
    src = Ledger(genesis)
    blocks = []
    for _ in range(4):
        blocks.append(src.next_block(A, BlockType.TRANSFER, amount=1, counterparty=B.did))
        src.offer(blocks[-1])
    led = Ledger(genesis, max_held=2)
    assert [led.offer(b).outcome for b in blocks[1:]] == [Outcome.HELD, Outcome.HELD, Outcome.REJECTED]
    assert led.offer(blocks[3]).reason == "held queue full (2 blocks)"


# --------------------------------------------------------------------- equivocation and cuts


def test_equivocation_freezes_cuts_and_sweeps_the_stake_in_any_order(genesis):
    src = Ledger(genesis)
    stake = src.next_block(W1, BlockType.STAKE, amount=100)
    src.offer(stake)
    x = src.next_block(W1, BlockType.TRANSFER, amount=900, counterparty=B.did)
    y = src.next_block(W1, BlockType.TRANSFER, amount=900, counterparty=C.did)
    assert x.height == y.height == 2 and block_hash(x) != block_hash(y)
    hashes = []
    for first, second in ((x, y), (y, x)):
        led = Ledger(genesis)
        led.offer(stake)
        assert led.offer(first).outcome is Outcome.APPLIED
        res = led.offer(second)
        assert res.outcome is Outcome.EQUIVOCATION and res.proof == (first, second)
        w = led.account(W1.did)
        assert w["frozen"] and w["height"] == 1 and w["staked"] == 0
        assert led.account(TREASURY.did)["balance"] == 100
        assert led.account(B.did)["balance"] == START and led.account(C.did)["balance"] == START
        later = forge(x, W1, height=3, previous=block_hash(first))
        assert led.offer(later).reason.startswith("account frozen")
        with pytest.raises(BlockRejected, match="account frozen"):
            led.next_block(W1, BlockType.TRANSFER, amount=1, counterparty=B.did)
        check_supply(led)
        hashes.append(led.state_hash())
    # a node that only hears the proof (and then the blocks) ends in the same state
    third = Ledger(genesis)
    a, b = decode_proof(encode_proof(x, y))
    assert third.offer_proof(a, b).outcome is Outcome.EQUIVOCATION
    assert third.offer_proof(a, b).outcome is Outcome.DUPLICATE
    for blk in (y, stake, x):
        third.offer(blk)
    hashes.append(third.state_hash())
    assert len(set(hashes)) == 1
    assert third.proofs() == [(a, b)]


def test_bad_proofs_are_rejected(genesis):
    led = Ledger(genesis)
    x = led.next_block(A, BlockType.TRANSFER, amount=1, counterparty=B.did)
    y = led.next_block(A, BlockType.TRANSFER, amount=2, counterparty=B.did)
    assert led.offer_proof(x, x).reason == "proof blocks are the same block"
    assert led.offer_proof(x, dataclasses.replace(y, amount=3)).reason.endswith("bad signature")
    z = led.next_block(B, BlockType.TRANSFER, amount=1, counterparty=A.did)
    assert led.offer_proof(x, z).reason == "proof blocks are of different accounts or heights"
    assert not led.account(A.did)["frozen"]


def test_cut_takes_back_spent_credits_as_debt(genesis):
    """The documented limitation: a third account that spent credits from a reverted block is in debt."""
    led = Ledger(genesis)
    x = led.next_block(A, BlockType.TRANSFER, amount=START, counterparty=B.did)
    y = led.next_block(A, BlockType.TRANSFER, amount=START, counterparty=C.did)
    led.offer(x)
    spend = led.next_block(B, BlockType.TRANSFER, amount=2 * START, counterparty=C.did)
    led.offer(spend)
    assert led.offer(y).outcome is Outcome.EQUIVOCATION
    b = led.account(B.did)
    assert b["balance"] == -START and b["debt"] == START
    assert led.account(A.did)["balance"] == START
    assert led.supply()["stats"]["debt"] == START
    check_supply(led)


# --------------------------------------------------------------------------------- slashing


def _slash_setup(genesis: Genesis) -> tuple[Ledger, Block, list[bytes]]:
    led = Ledger(genesis)
    stake = led.next_block(W3, BlockType.STAKE, amount=301)
    led.offer(stake)
    evidence = [receipt(W1, "job-9", b"good"), receipt(W2, "job-9", b"good"), receipt(W3, "job-9", b"evil")]
    return led, stake, evidence


def test_slash_seizes_the_liars_stake(genesis):
    led, stake, evidence = _slash_setup(genesis)
    after = led.next_block(W3, BlockType.STAKE, amount=10)  # above the slash height: reverted by the cut
    led.offer(after)
    slash = led.next_block(A, BlockType.SLASH, counterparty=W3.did, ref_height=1, job="job-9",
                           evidence=evidence)
    assert slash.amount == 301
    assert slash.payments == (Payment(acct(A), 150), Payment(acct(TREASURY), 151))
    assert led.offer(slash).outcome is Outcome.APPLIED
    w3 = led.account(W3.did)
    assert w3["frozen"] and w3["height"] == 1 and w3["staked"] == 0 and w3["balance"] == START - 301
    assert led.account(A.did)["balance"] == START + 150
    assert led.account(TREASURY.did)["balance"] == 151
    check_supply(led)
    assert led.offer(after).outcome is Outcome.REJECTED
    with pytest.raises(BlockRejected, match="offender already slashed"):
        led.next_block(B, BlockType.SLASH, counterparty=W3.did, ref_height=1, job="job-9",
                           evidence=evidence)


@pytest.mark.parametrize(
    "evidence_of",
    [
        lambda: [receipt(W1, "job-9", b"good"), receipt(W3, "job-9", b"evil")],  # one honest receipt only
        lambda: [receipt(W1, "job-9", b"good"), receipt(W2, "job-9", b"other"),
                 receipt(W3, "job-9", b"evil")],
        lambda: [receipt(W1, "job-9", b"good"), receipt(W2, "job-9", b"good"), receipt(W3, "job-9", b"good")],
        lambda: [receipt(W1, "job-9", b"good"), receipt(W2, "job-9", b"good"), receipt(W3, "job-8", b"evil")],
    ],
)
def test_slash_without_proof_of_a_lie_is_rejected(genesis, evidence_of):
    led, _, _ = _slash_setup(genesis)
    with pytest.raises(BlockRejected, match="slash evidence must hold"):
        led.next_block(A, BlockType.SLASH, counterparty=W3.did, ref_height=1, job="job-9",
                           evidence=evidence_of())


def test_slash_is_held_until_the_offenders_chain_arrives(genesis):
    src, stake, evidence = _slash_setup(genesis)
    slash = src.next_block(A, BlockType.SLASH, counterparty=W3.did, ref_height=1, job="job-9",
                           evidence=evidence)
    src.offer(slash)
    led = Ledger(genesis)
    res = led.offer(slash)
    assert res.outcome is Outcome.HELD and res.missing == (acct(W3), 1)
    res = led.offer(stake)
    assert res.applied == [stake, slash]
    assert led.state_hash() == src.state_hash()


# ------------------------------------------------------------------------ order independence


def test_state_hash_is_the_same_for_every_arrival_order(genesis):
    src = Ledger(genesis)
    blocks: list[Block] = []

    def add(who: Identity, t: BlockType, **kw) -> None:
        b = src.next_block(who, t, **kw)
        assert src.offer(b).outcome is Outcome.APPLIED
        blocks.append(b)

    add(A, BlockType.TRANSFER, amount=400, counterparty=B.did)
    add(B, BlockType.TRANSFER, amount=1200, counterparty=C.did)
    add(C, BlockType.ESCROW_LOCK, amount=300, job="j1", payments=[(W1.did, 200), (W2.did, 80)])
    add(W1, BlockType.STAKE, amount=50)
    add(C, BlockType.SETTLE, job="j1", payments=[(W1.did, 200)], evidence=[receipt(W1, "j1")])
    add(W1, BlockType.TRANSFER, amount=START + 100, counterparty=A.did)
    add(C, BlockType.ESCROW_LOCK, amount=10, job="j2", payments=[(W2.did, 5)])
    add(C, BlockType.REFUND, job="j2")
    add(W1, BlockType.UNSTAKE, amount=50)
    want = src.state_hash()
    rng = random.Random(4)
    for _ in range(20):
        order = blocks[:]
        rng.shuffle(order)
        led = Ledger(genesis)
        for b in order:
            assert led.offer(decode_block(encode_block(b))).outcome in (Outcome.APPLIED, Outcome.HELD)
        assert led.held() == []
        assert led.state_hash() == want
        check_supply(led)
    rebuilt = Ledger.replay(genesis, reversed(blocks))
    assert rebuilt.state_hash() == want and rebuilt.block_count == len(blocks)


# ------------------------------------------------------------------------------------ codec


def test_block_codec_round_trip_keeps_hash_and_bytes(genesis):
    led, _, evidence = _slash_setup(genesis)
    b = led.next_block(A, BlockType.SLASH, counterparty=W3.did, ref_height=1, job="job-9",
                           evidence=evidence,
                       timestamp_ms=123)
    raw = encode_block(b)
    back = decode_block(raw)
    assert back == b and block_hash(back) == block_hash(b) and encode_block(back) == raw


def test_block_codec_limits():
    with pytest.raises(RemoteProtocolError, match="over the"):
        decode_block(bytes(70 * 1024))
    with pytest.raises(RemoteProtocolError, match="malformed"):
        decode_block(b"\xff" * 64)
    b = Block(account=bytes(32), public_key=bytes(32), height=1, previous=bytes(32), type=BlockType.SETTLE,
              amount=1, counterparty=b"", job="j", timestamp_ms=0, credits=0, balance=0,
              payments=tuple(Payment(bytes(32), 1) for _ in range(17)))
    with pytest.raises(LocalProtocolError, match="at most 16 payments"):
        encode_block(b)


def test_sync_messages_round_trip():
    reqs = (SyncHeads(request_id=1), SyncBlocks(request_id=2, account=b"a" * 32, from_height=5, limit=100))
    for req in reqs:
        assert decode_sync_request(encode_sync_request(req)) == req
    resp = SyncResponse(request_id=3, heads=(SyncHead(b"a" * 32, 4, b"h" * 32),), blocks=(b"x" * 16,),
                        proofs=((b"p" * 8, b"q" * 8),), error="")
    assert decode_sync_response(encode_sync_response(resp)) == resp
    assert decode_sync_response(encode_sync_response(SyncResponse(request_id=4, error="no"))).error == "no"
