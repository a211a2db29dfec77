"""A hypothesis state machine over the ledger core.

Accounts build blocks on an "author" ledger (as their own nodes would); the blocks reach an
"observer" ledger late and in any order.  Attackers replay old blocks and forge new ones.
Invariants, on both ledgers after every step: credits are conserved, no balance is negative,
every job is settled at most once, a replay is a no-op, a forged block is rejected; and once
everything is delivered the observer's state hash equals the author's.
"""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from inos_node.economy.genesis import Genesis, create_genesis
from inos_node.economy.ledger import Ledger, Outcome
from inos_node.economy.model import Block, BlockType, account_of_key, block_hash
from inos_node.errors import BlockRejected
from inos_node.identity import Identity
from inos_node.receipts import sign_body
from inos_node.types import Metrics
from inos_node.wire.delegation import ReceiptBody
from inos_node.wire.ledger import decode_block, encode_block, encode_receipt

KEYS = [Identity(bytes([0x40 + i]) * 32) for i in range(4)]
TREASURY = Identity(b"\x7f" * 32)
_DOC, _ = create_genesis([(k.did, 500) for k in KEYS], treasury=TREASURY.did, fee_bps=500, created_unix_ms=0)
GENESIS = Genesis.from_doc(_DOC)
_RECEIPTS: dict[tuple[int, str], bytes] = {}

who = st.integers(0, len(KEYS) - 1)
amounts = st.integers(1, 300)


def receipt(worker: int, job: str) -> bytes:
    key = (worker, job)
    if key not in _RECEIPTS:
        body = ReceiptBody(job_id=job, requester="r", worker="w", capsule="c", input_digest=bytes(32),
                           output_digest=bytes(32), cost=1, metrics=Metrics())
        _RECEIPTS[key] = encode_receipt(sign_body(KEYS[worker], body))
    return _RECEIPTS[key]


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.author = Ledger(GENESIS)
        self.observer = Ledger(GENESIS)
        self.pending: list[Block] = []  # built and applied by their authors, not yet seen by the observer
        self.delivered: list[Block] = []
        self.jobs = 0
        self.settled: dict[tuple[bytes, str], int] = {}

    # ------------------------------------------------------------------------ authors act

    def _build(self, i: int, t: BlockType, **fields) -> Block | None:
        try:
            block = self.author.next_block(KEYS[i], t, timestamp_ms=len(self.pending), **fields)
        except BlockRejected:
            return None  # the author's node refuses to sign what the ledger would reject
        res = self.author.offer(block)
        assert res.outcome is Outcome.APPLIED, res.reason
        self.pending.append(decode_block(encode_block(block)))
        return block

    @rule(i=who, j=who, amount=amounts)
    def transfer(self, i, j, amount):
        if i != j:
            self._build(i, BlockType.TRANSFER, amount=amount, counterparty=KEYS[j].did)

    @rule(i=who, workers=st.lists(who, min_size=1, max_size=3, unique=True), pay=st.integers(0, 60))
    def lock(self, i, workers, pay):
        self.jobs += 1
        need = (pay * len(workers) * 10_500 + 9_999) // 10_000
        self._build(i, BlockType.ESCROW_LOCK, amount=need, job=f"job-{self.jobs}",
                    payments=[(KEYS[w].did, pay) for w in workers], deadline_ms=1)

    def _open(self) -> list[tuple[int, dict]]:
        return [(i, e) for i, k in enumerate(KEYS) for e in self.author.open_escrows(k.did)]

    @precondition(lambda self: self._open())
    @rule(data=st.data())
    def settle(self, data):
        i, esc = data.draw(st.sampled_from(self._open()))
        workers = [w for w in range(len(KEYS)) if KEYS[w].did in esc["workers"]]
        paid = data.draw(st.lists(st.sampled_from(workers), unique=True))
        pays = [(KEYS[w].did, data.draw(st.integers(0, esc["workers"][KEYS[w].did]))) for w in paid]
        block = self._build(i, BlockType.SETTLE, job=esc["job"], payments=pays,
                            evidence=[receipt(w, esc["job"]) for w in paid])
        assert block is not None, "settling an open escrow with receipts is always valid"
        key = (block.account, block.job)
        self.settled[key] = self.settled.get(key, 0) + 1

    @precondition(lambda self: self._open())
    @rule(data=st.data())
    def refund(self, data):
        i, esc = data.draw(st.sampled_from(self._open()))
        assert self._build(i, BlockType.REFUND, job=esc["job"]) is not None

    @rule(i=who, amount=amounts)
    def stake(self, i, amount):
        self._build(i, BlockType.STAKE, amount=amount)

    @rule(i=who, amount=amounts)
    def unstake(self, i, amount):
        self._build(i, BlockType.UNSTAKE, amount=amount)

    @rule(i=who)
    def settle_twice(self, i):
        """Settling an already settled (or refunded) escrow is refused."""
        for acct, job in self.settled:
            if acct == account_of_key(KEYS[i].public_key):
                try:
                    self.author.next_block(KEYS[i], BlockType.SETTLE, job=job)
                except BlockRejected as exc:
                    assert "already" in exc.reason
                else:
                    raise AssertionError("a second settle was built")

    # ---------------------------------------------------------------------- the network acts

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def deliver(self, data):
        """Deliver any pending block: out of order it is HELD, and released when its gap fills."""
        block = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))
        res = self.observer.offer(block)
        assert res.outcome in (Outcome.APPLIED, Outcome.HELD, Outcome.DUPLICATE), res.reason
        if res.outcome is Outcome.HELD and res.missing is not None:
            account, height = res.missing
            assert account == block.account and height <= block.height - 1
        self.delivered.append(block)

    @rule()
    def reorder(self):
        """A block delivered before its predecessor is HELD (naming the gap), then released by it."""
        for p in self.pending:
            q = next((q for q in self.pending if q.account == p.account and q.height == p.height + 1), None)
            seen = self.observer.account(p.account)
            if q is None or seen["height"] != p.height - 1 or p.credits > seen["credits_seen"]:
                continue
            res = self.observer.offer(q)
            assert res.outcome is Outcome.HELD and res.missing == (p.account, p.height)
            res = self.observer.offer(p)
            assert res.outcome is Outcome.APPLIED and res.applied[0] == p
            if q.credits <= self.observer.account(p.account)["credits_seen"]:
                assert q in res.applied
            self.pending = [b for b in self.pending if b is not p and b is not q]
            self.delivered += [p, q]
            return

    @precondition(lambda self: self.delivered)
    @rule(data=st.data())
    def replay_old(self, data):
        block = data.draw(st.sampled_from(self.delivered))
        before = (self.observer.state_hash(), len(self.observer.held()))
        res = self.observer.offer(block)
        assert res.outcome in (Outcome.DUPLICATE, Outcome.HELD)
        assert res.applied == []
        assert (self.observer.state_hash(), len(self.observer.held())) == before

    @precondition(lambda self: self.pending or self.delivered)
    @rule(data=st.data(), amount=amounts, j=who)
    def forge(self, data, amount, j):
        """Change a signed block without its key: rejected everywhere, nothing changes."""
        block = data.draw(st.sampled_from(self.pending + self.delivered))
        forged = dataclasses.replace(block, amount=block.amount + amount,
                                     counterparty=block.counterparty and account_of_key(KEYS[j].public_key))
        assert block_hash(forged) != block_hash(block)
        for ledger in (self.author, self.observer):
            before = ledger.state_hash()
            res = ledger.offer(forged)
            assert res.outcome is Outcome.REJECTED and res.reason == "bad signature"
            assert ledger.state_hash() == before

    @rule()
    def deliver_all(self):
        while self.pending:
            self.observer.offer(self.pending.pop())
        assert self.observer.held() == []
        assert self.observer.state_hash() == self.author.state_hash()

    # ---------------------------------------------------------------------------- invariants

    @invariant()
    def supply_is_conserved(self):
        for ledger in (self.author, self.observer):
            s = ledger.supply()
            assert s["balances"] + s["escrow"] + s["staked"] == s["minted"] == 500 * len(KEYS)

    @invariant()
    def no_balance_is_negative(self):
        for ledger in (self.author, self.observer):
            for k in [*KEYS, TREASURY]:
                a = ledger.account(k.did)
                assert a["balance"] >= 0 and a["escrow"] >= 0 and a["staked"] >= 0

    @invariant()
    def settled_at_most_once(self):
        assert all(n == 1 for n in self.settled.values())
        for ledger in (self.author, self.observer):
            for k in KEYS:
                closing = (BlockType.SETTLE, BlockType.REFUND)
                jobs = [b.job for b in ledger.history(k.did) if b.type in closing]
                assert len(jobs) == len(set(jobs))


LedgerMachine.TestCase.settings = settings(
    max_examples=50, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestLedgerMachine = LedgerMachine.TestCase
