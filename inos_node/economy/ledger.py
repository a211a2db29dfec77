"""The credits ledger: a pure, synchronous state machine over signed blocks (no I/O, no clock).

Theory of operation
-------------------
Every account owns one chain of blocks (a Nano-style block lattice).  A node ``offer``s every
block it hears of, in whatever order they arrive; the ledger answers with an ``Offer``:

    offer(block) ──► shape, signature, account = blake3(key)  ──bad──► REJECTED
          │
          ├─ height <= ours:  same hash ─► DUPLICATE;  other hash ─► EQUIVOCATION (proof, cut)
          ├─ frozen above its cut ──────────────────────────────────► REJECTED "account frozen"
          ├─ height > ours + 1 ─► HELD, missing=(account, ours + 1)   (fetch the gap)
          ├─ previous != our head ──────────────────────────────────► REJECTED
          ├─ declared credits > credits seen ─► HELD                  (a credit is still on its way)
          ├─ slash whose offender's chain is short ─► HELD, missing=(offender, its height + 1)
          ├─ type rules (escrow, exactly-once settle, receipts, balance >= 0) ─bad─► REJECTED
          └─ apply ─► APPLIED, and release the held blocks that became valid (in order)

Rule 1: every state change goes through ``_apply`` (a block's effects, recorded as undo ops),
``_revert`` (undo a block when its account's chain is cut) or ``_sweep`` (a frozen account's
stake to the treasury).  Rule 2: a block's verdict depends only on the block and its author's
own chain (plus a monotonic count of credits seen), so every node reaches the same verdict
whatever the arrival order.

Balances.  Spendable balance = credits (what other accounts' blocks and the genesis gave) +
own delta (the effect of the account's own chain).  A transfer credits the recipient the moment
it is applied: there is no receive block, so the treasury (an account nobody runs) is credited
too.  Each block declares ``credits``, the credits its author had seen; a block declaring more
than this node has seen is held until the credit arrives.  ``balance`` in the block must be
declared credits + own delta after it, and must not be negative.

Cheating.  Two validly signed blocks at one height are an equivocation: the account's chain is
cut below that height (both branches reverted), it is frozen (no block above the cut is ever
accepted) and its stake is swept to the treasury.  A SLASH block proves a replica lie with
receipts: the offender is cut at the slash's height and its stake then is split between the
slasher and the treasury.  Known limitation: credits that a reverted block gave a third account
are taken back; if it already spent them its balance goes negative (a debt, reported by
``account`` and ``supply``).  A second punishment of an already slashed account is refused.
"""

from __future__ import annotations

import enum
import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import blake3

from inos_node.economy.genesis import Genesis
from inos_node.economy.model import (
    MAX_BLOCK_BYTES,
    MAX_EVIDENCE,
    MAX_EVIDENCE_BYTES,
    MAX_JOB_CHARS,
    MAX_PAYMENTS,
    ZERO_HASH,
    Block,
    BlockType,
    Payment,
    account_of_did,
    account_of_key,
    block_hash,
    did_of_account,
)
from inos_node.errors import BlockRejected, LedgerError, ProtocolError
from inos_node.identity import verify
from inos_node.sigcache import verify_once

__all__ = ["Ledger", "Offer", "Outcome", "settle_fee", "lock_required"]

_BPS = 10_000
_MAX_BUILT = 64  # own blocks built by next_block and not yet offered
_MAX_EVIDENCE_CACHE = 1024  # decoded, verified evidence receipts


class Outcome(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    HELD = "held"
    REJECTED = "rejected"
    EQUIVOCATION = "equivocation"


@dataclass(slots=True)
class Offer:
    outcome: Outcome
    reason: str = ""
    applied: list[Block] = field(default_factory=list)  # this block + the held ones it released, in order
    proof: tuple[Block, Block] | None = None
    missing: tuple[bytes, int] | None = None  # (account, from_height) to fetch for a gap


def settle_fee(paid: int, fee_bps: int) -> int:
    """The protocol fee on ``paid``, rounded up."""
    return (paid * fee_bps + _BPS - 1) // _BPS


def lock_required(max_pay_total: int, fee_bps: int) -> int:
    """The least an escrow must lock so that paying every worker its max still covers the fee."""
    return (max_pay_total * (_BPS + fee_bps) + _BPS - 1) // _BPS


class _Account:
    __slots__ = ("chain", "credits", "cut", "escrow", "own", "seen", "slashed", "staked", "swept")

    def __init__(self) -> None:
        self.seen = 0  # credits ever counted (monotonic: the HELD test)
        self.credits = 0  # credits now (reverts take them back)
        self.own = 0
        self.escrow = 0
        self.staked = 0
        self.chain: list[tuple[Block, tuple[Any, ...], int]] = []  # (block, undo ops, staked after)
        self.cut: int | None = None  # frozen: no block above this height
        self.slashed = False
        self.swept = 0  # stake moved to the treasury while frozen

    @property
    def head(self) -> bytes:
        return block_hash(self.chain[-1][0]) if self.chain else ZERO_HASH


class _Escrow:
    __slots__ = ("amount", "deadline_ms", "state", "workers")

    def __init__(self, amount: int, workers: dict[bytes, int], deadline_ms: int) -> None:
        self.amount = amount
        self.workers = workers
        self.deadline_ms = deadline_ms
        self.state = "open"


class _Held(Exception):
    """Internal: the block must wait (``missing`` says for what, when known)."""

    def __init__(self, reason: str, missing: tuple[bytes, int] | None) -> None:
        self.reason = reason
        self.missing = missing


_ACCT_ROW = struct.Struct("<32sQ32sqqq?")
_ESC_ROW = struct.Struct("<32sH")


class Ledger:
    """The ledger state of one network (its ``Genesis``).  Not thread-safe: one owner calls it."""

    def __init__(self, genesis: Genesis, *, verify_signatures: bool = True, max_held: int = 10_000) -> None:
        self.genesis = genesis
        self.treasury = genesis.treasury
        self.fee_bps = genesis.fee_bps
        self.minted = genesis.minted
        self.verify_signatures = verify_signatures
        self.max_held = max_held
        self._accounts: dict[bytes, _Account] = {}
        self._escrows: dict[bytes, dict[str, _Escrow]] = {}
        self._held: dict[tuple[bytes, int], Block] = {}
        self._slash_waits: dict[bytes, set[tuple[bytes, int]]] = {}
        self._proofs: dict[tuple[bytes, int], tuple[Block, Block]] = {}
        self._reverted: set[bytes] = set()  # hashes of blocks applied, then reverted by a cut
        self._proof_counted: set[bytes] = set()  # proof blocks whose credits were counted unapplied
        self._keys: dict[bytes, bytes] = {}  # public key -> account id (blake3 once per key)
        # hash -> (a block next_block signed, its own-delta after, the author's head it followed)
        self._built: dict[bytes, tuple[Block, int, bytes]] = {}
        self._evidence: OrderedDict[bytes, tuple[bytes, Any]] = OrderedDict()  # see _receipts
        self._blocks = 0
        for account, amount in genesis.allocations:
            st = self._acct(account)
            st.seen += amount
            st.credits += amount

    # ------------------------------------------------------------------------------- offering

    def offer(self, block: Block) -> Offer:
        """Validate ``block`` and apply it, hold it, or reject it (see the module docstring).

        A block that ``next_block`` of this very ledger built and signed (the same object) is
        applied without verifying its signature again: this node made that signature with the
        key the block names, a moment ago.  Every other node verifies it as usual, and every
        other rule (height, previous, credits, balance, escrow, receipts) is checked here too.
        Identity, not equality, is what counts: a decoded copy or a ``replace``d block is a
        different object and is verified.  Its type rules are not evaluated twice either when the
        author's head is still the one ``next_block`` built on: they read only the author's own
        chain and escrows (not for slashes, which read the offender's), which only the author's
        own blocks change, so the verdict and own-delta computed then still hold.
        """
        built = self._built.pop(block_hash(block), None) if self._built else None
        own = built is not None and built[0] is block
        rules = built[1:] if own and block.type is not BlockType.SLASH else None  # type: ignore[index]
        result, touched = self._offer_one(block, verified=own, built=rules)
        if touched and self._held:
            self._release(touched, result.applied)
        return result

    def offer_proof(self, a: Block, b: Block) -> Offer:
        """An equivocation proof from a peer: two validly signed blocks of one account, one height."""
        if a.account != b.account or a.height != b.height:
            return Offer(Outcome.REJECTED, "proof blocks are of different accounts or heights")
        if block_hash(a) == block_hash(b):
            return Offer(Outcome.REJECTED, "proof blocks are the same block")
        for blk in (a, b):
            bad = self._shape(blk) or self._signature(blk)
            if bad:
                return Offer(Outcome.REJECTED, f"proof block at height {blk.height}: {bad}")
        if (a.account, a.height) in self._proofs:
            return Offer(Outcome.DUPLICATE, "equivocation already known",
                         proof=self._proofs[(a.account, a.height)])
        touched = self._punish(a, b)
        offer = Offer(Outcome.EQUIVOCATION, f"account {did_of_account(a.account)} signed two blocks "
                                            f"at height {a.height}", proof=(a, b))
        if self._held:
            self._release(touched, offer.applied)
        return offer

    def _offer_one(self, block: Block, *, verified: bool, built: tuple[int, bytes] | None = None
                   ) -> tuple[Offer, list[bytes]]:
        bad = self._shape(block)
        if bad:
            return Offer(Outcome.REJECTED, bad), []
        acct = block.account
        st = self._accounts.get(acct)
        height = len(st.chain) if st else 0
        digest = block_hash(block)
        if block.height <= height:
            assert st is not None
            existing = st.chain[block.height - 1][0]
            if block_hash(existing) == digest:
                return Offer(Outcome.DUPLICATE, f"block at height {block.height} already applied"), []
            bad = "" if verified else self._signature(block)
            if bad:
                return Offer(Outcome.REJECTED, bad), []
            touched = self._punish(existing, block)
            return Offer(Outcome.EQUIVOCATION, f"account {did_of_account(acct)} signed two blocks at height "
                                               f"{block.height}", proof=(existing, block)), touched
        if st is not None and st.cut is not None and block.height > st.cut:
            return Offer(Outcome.REJECTED, f"account frozen (equivocation or slash; no block above height "
                                           f"{st.cut})"), []
        key = (acct, block.height)
        other = self._held.get(key)
        if other is not None and block_hash(other) == digest:
            return Offer(Outcome.HELD, "already held", missing=self._gap(acct, block.height)), []
        if not verified:
            bad = self._signature(block)
            if bad:
                return Offer(Outcome.REJECTED, bad), []
        if other is not None:  # two signed blocks at one height, neither applied yet
            del self._held[key]
            touched = self._punish(other, block)
            return Offer(Outcome.EQUIVOCATION, f"account {did_of_account(acct)} signed two blocks at height "
                                               f"{block.height}", proof=(other, block)), touched
        try:
            if block.height > height + 1:
                raise _Held(f"height {block.height} follows {height}: gap", (acct, height + 1))
            assert st is not None or height == 0
            head = st.head if st is not None else ZERO_HASH
            if block.previous != head:
                reason = f"previous hash does not match the head at height {height}"
                return Offer(Outcome.REJECTED, reason), []
            seen = st.seen if st is not None else 0
            if block.credits > seen:
                raise _Held(f"declares {block.credits} credits, {seen} seen here", None)
            if built is not None and built[1] == head:
                reason, own_after = "", built[0]  # next_block checked these rules on this very head
            else:
                reason, own_after = self._rules(block, st)
        except _Held as held:
            if len(self._held) >= self.max_held:
                return Offer(Outcome.REJECTED, f"held queue full ({self.max_held} blocks)"), []
            self._held[key] = block
            if block.type is BlockType.SLASH:
                self._slash_waits.setdefault(block.counterparty, set()).add(key)
            return Offer(Outcome.HELD, held.reason, missing=held.missing), []
        if reason:
            return Offer(Outcome.REJECTED, reason), []
        balance = block.credits + own_after
        if balance < 0:
            return Offer(Outcome.REJECTED, f"balance would be {balance}"), []
        if block.balance != balance:
            return Offer(Outcome.REJECTED, f"declared balance {block.balance} is not {balance}"), []
        touched = self._apply(block, own_after)
        return Offer(Outcome.APPLIED, applied=[block]), touched

    def _release(self, touched: list[bytes], applied: list[Block]) -> None:
        """Offer again the held blocks that the accounts in ``touched`` may have unblocked."""
        work = list(touched)
        while work and self._held:
            acct = work.pop()
            st = self._accounts.get(acct)
            keys = [(acct, (len(st.chain) if st else 0) + 1)]
            keys += sorted(self._slash_waits.pop(acct, ()))
            for key in keys:
                blk = self._held.pop(key, None)
                if blk is None:
                    continue
                if blk.type is BlockType.SLASH:
                    waits = self._slash_waits.get(blk.counterparty)
                    if waits is not None:
                        waits.discard(key)
                res, more = self._offer_one(blk, verified=True)
                applied += res.applied
                work += more

    def _gap(self, acct: bytes, height: int) -> tuple[bytes, int] | None:
        st = self._accounts.get(acct)
        have = len(st.chain) if st else 0
        return (acct, have + 1) if height > have + 1 else None

    # ---------------------------------------------------------------------------------- checks

    def _shape(self, b: Block) -> str:
        if len(b.account) != 32 or len(b.public_key) != 32:
            return "account and public key must be 32 bytes"
        if b.height < 1:
            return f"height {b.height} is not >= 1"
        if len(b.previous) != 32 or (b.height == 1 and b.previous != ZERO_HASH):
            return "previous must be 32 bytes (zeros at height 1)"
        if b.amount < 0 or b.credits < 0 or b.balance < 0:
            return "amount, credits and balance must be >= 0"
        if len(b.job) > MAX_JOB_CHARS:
            return f"job id longer than {MAX_JOB_CHARS} characters"
        if len(b.payments) > MAX_PAYMENTS or len(b.evidence) > MAX_EVIDENCE:
            return f"more than {MAX_PAYMENTS} payments or {MAX_EVIDENCE} evidence items"
        if any(len(e) > MAX_EVIDENCE_BYTES for e in b.evidence):
            return f"an evidence item is over {MAX_EVIDENCE_BYTES} bytes"
        return ""

    def _signature(self, b: Block) -> str:
        if self._account_of(b.public_key) != b.account:
            return "account is not blake3(public key)"
        if self.verify_signatures and not verify(b.public_key, block_hash(b), b.signature):
            return "bad signature"
        return ""

    def _rules(self, b: Block, st: _Account | None) -> tuple[str, int]:
        """The type's rules: (reason or "", the author's own delta after the block).  Raises
        ``_Held`` when the block must wait."""
        own = st.own if st is not None else 0
        t = b.type
        if t is not BlockType.TRANSFER and t is not BlockType.SLASH and b.counterparty:
            return f"{t.name.lower()} takes no counterparty", own
        if t not in (BlockType.SETTLE, BlockType.SLASH) and b.evidence:
            return f"{t.name.lower()} takes no evidence", own
        if t not in (BlockType.ESCROW_LOCK, BlockType.SETTLE, BlockType.SLASH) and b.payments:
            return f"{t.name.lower()} takes no payments", own
        if t is BlockType.TRANSFER:
            if b.amount <= 0:
                return "transfer amount must be > 0", own
            if len(b.counterparty) != 32 or b.counterparty == b.account:
                return "transfer needs a 32-byte recipient other than the sender", own
            if b.job:
                return "transfer takes no job", own
            return "", own - b.amount
        if t is BlockType.STAKE or t is BlockType.UNSTAKE:
            if b.amount <= 0 or b.job:
                return f"{t.name.lower()} needs an amount > 0 and no job", own
            if t is BlockType.STAKE:
                return "", own - b.amount
            staked = st.staked if st is not None else 0
            if staked < b.amount:
                return f"unstake {b.amount} but only {staked} staked", own
            return "", own + b.amount
        if not b.job:
            return f"{t.name.lower()} needs a job id", own
        if t is BlockType.SLASH:
            return self._slash_rules(b), own
        escrow = self._escrows.get(b.account, {}).get(b.job)
        if t is BlockType.ESCROW_LOCK:
            if escrow is not None:
                return f"escrow {b.job} already exists", own
            workers = [p.account for p in b.payments]
            if not workers or len(set(workers)) != len(workers) or any(len(w) != 32 for w in workers):
                return "escrow_lock needs distinct 32-byte workers in payments", own
            need = lock_required(sum(p.amount for p in b.payments), self.fee_bps)
            if b.amount < need:
                return f"escrow {b.amount} does not cover the max pay plus fee ({need})", own
            return "", own - b.amount
        if escrow is None:
            return f"no escrow for job {b.job}", own
        if escrow.state != "open":
            return f"escrow {b.job} already {escrow.state}", own
        if t is BlockType.REFUND:
            if b.amount != escrow.amount:
                return f"refund amount {b.amount} is not the escrow's {escrow.amount}", own
            return "", own + escrow.amount
        if t is BlockType.SETTLE:
            paid = 0
            seen: set[bytes] = set()
            for p in b.payments:
                cap = escrow.workers.get(p.account)
                if cap is None or p.account in seen:
                    who = did_of_account(p.account)
                    return f"settle pays {who}, not a worker of the lock (or twice)", own
                if p.amount > cap:
                    return f"settle pays {p.amount} over the max pay {cap}", own
                seen.add(p.account)
                paid += p.amount
            if b.amount != paid:
                return f"settle amount {b.amount} is not the sum paid ({paid})", own
            proven = {acct for acct, body in self._receipts(b) if body.job_id == b.job}
            for p in b.payments:
                if p.account not in proven:
                    return f"no valid receipt for job {b.job} from worker {did_of_account(p.account)}", own
            return "", own + escrow.amount - paid - settle_fee(paid, self.fee_bps)
        return f"unknown block type {t}", own

    def _receipts(self, b: Block) -> list[tuple[bytes, Any]]:
        """The evidence receipts whose signature verifies: (worker account, body).

        A settle's receipts are checked when ``next_block`` builds it and again when it is
        offered; the requester checked them once already (``receipts.verify_receipt``).  So:
        the signature goes through ``sigcache.verify_once`` (a verification is remembered, see
        its docstring), and a receipt that verified is kept decoded in a bounded LRU keyed by
        blake3 of its exact bytes (a hit is the very bytes that verified; bodies are frozen).
        """
        from inos_node.wire.delegation import decode_receipt_body
        from inos_node.wire.ledger import decode_receipt

        out = []
        for item in b.evidence:
            key = blake3.blake3(item).digest()
            known = self._evidence.get(key)
            if known is not None:
                self._evidence.move_to_end(key)
                out.append(known)
                continue
            try:
                r = decode_receipt(item)
                if not verify_once(r.public_key, r.body, r.signature):
                    continue
                known = (self._account_of(r.public_key), decode_receipt_body(r.body))
            except ProtocolError:
                continue
            self._remember_evidence(key, known)
            out.append(known)
        return out

    def know_receipt(self, item: bytes, public_key: bytes, body: Any) -> None:
        """Remember that the evidence item ``item`` (an encoded receipt) is ``body`` signed by
        ``public_key``, as if ``_receipts`` had verified and decoded it.  Only for a receipt
        whose signature is known good: made by this node, or verified by it (the shell passes
        ``Receipt.checked``)."""
        self._remember_evidence(blake3.blake3(item).digest(), (self._account_of(public_key), body))

    def _remember_evidence(self, key: bytes, known: tuple[bytes, Any]) -> None:
        self._evidence[key] = known
        if len(self._evidence) > _MAX_EVIDENCE_CACHE:
            self._evidence.popitem(last=False)

    def _account_of(self, public_key: bytes) -> bytes:
        acct = self._keys.get(public_key)
        if acct is None:
            acct = account_of_key(public_key)
            if len(self._keys) < 65_536:
                self._keys[public_key] = acct
        return acct

    def _slash_rules(self, b: Block) -> str:
        offender = b.counterparty
        if len(offender) != 32 or offender == b.account:
            return "slash needs a 32-byte offender other than the slasher"
        h = b.ref_height
        if h < 1:
            return "slash needs ref_height >= 1"
        receipts = self._receipts(b)
        bad = [body for acct, body in receipts if acct == offender and body.job_id == b.job]
        proven = False
        for lie in bad:
            agree = {acct for acct, body in receipts
                     if acct != offender and body.job_id == b.job and body.input_digest == lie.input_digest
                     and body.capsule == lie.capsule and body.output_digest != lie.output_digest}
            outputs = {body.output_digest for acct, body in receipts if acct in agree and body.job_id == b.job
                       and body.input_digest == lie.input_digest and body.capsule == lie.capsule}
            if len(agree) >= 2 and len(outputs) == 1:
                proven = True
        if not proven:
            return ("slash evidence must hold the offender's receipt and two receipts of other workers that "
                    "agree with each other and not with it, for the same job, capsule and input")
        o = self._accounts.get(offender)
        if o is not None and o.slashed:
            return "offender already slashed"
        if o is not None and o.cut is not None and o.cut < h:
            return f"offender already frozen at height {o.cut}"
        have = len(o.chain) if o is not None else 0
        if have < h:
            raise _Held(f"slash at offender height {h}, {have} here", (offender, have + 1))
        assert o is not None
        staked = o.chain[h - 1][2]
        if b.amount != staked:
            return f"slash amount {b.amount} is not the offender's stake {staked} at height {h}"
        half = staked // 2
        if b.payments != (Payment(b.account, half), Payment(self.treasury, staked - half)):
            return "slash payments must be (slasher, half rounded down), (treasury, the rest)"
        return ""

    # ---------------------------------------------------------------------------------- effects

    def _acct(self, account: bytes) -> _Account:
        st = self._accounts.get(account)
        if st is None:
            st = self._accounts[account] = _Account()
        return st

    def _credit(self, account: bytes, amount: int, ops: list[Any]) -> None:
        st = self._acct(account)
        st.credits += amount
        st.seen += amount
        ops.append(("c", account, amount))

    def _apply(self, b: Block, own_after: int) -> list[bytes]:
        """Apply a validated block; record undo ops; return the accounts whose state changed."""
        st = self._acct(b.account)
        ops: list[Any] = [("o", b.account, own_after - st.own)]
        st.own = own_after
        touched = [b.account]
        t = b.type
        if t is BlockType.TRANSFER:
            self._credit(b.counterparty, b.amount, ops)
            touched.append(b.counterparty)
        elif t is BlockType.STAKE or t is BlockType.UNSTAKE:
            delta = b.amount if t is BlockType.STAKE else -b.amount
            st.staked += delta
            ops.append(("s", b.account, delta))
        elif t is BlockType.ESCROW_LOCK:
            self._escrows.setdefault(b.account, {})[b.job] = _Escrow(
                b.amount, {p.account: p.amount for p in b.payments}, b.deadline_ms)
            st.escrow += b.amount
            ops += [("e", b.account, b.amount), ("open", b.account, b.job)]
        elif t is BlockType.SETTLE or t is BlockType.REFUND:
            esc = self._escrows[b.account][b.job]
            esc.state = "settled" if t is BlockType.SETTLE else "refunded"
            st.escrow -= esc.amount
            ops += [("e", b.account, -esc.amount), ("close", b.account, b.job)]
            if t is BlockType.SETTLE:
                for p in b.payments:
                    self._credit(p.account, p.amount, ops)
                    touched.append(p.account)
                fee = settle_fee(b.amount, self.fee_bps)
                if fee:
                    self._credit(self.treasury, fee, ops)
                    touched.append(self.treasury)
        elif t is BlockType.SLASH:
            o = self._accounts[b.counterparty]
            self._unsweep(o)
            self._cut(b.counterparty, b.ref_height)
            o.slashed = True
            o.staked -= b.amount
            ops.append(("s", b.counterparty, -b.amount))
            for p in b.payments:
                self._credit(p.account, p.amount, ops)
                touched.append(p.account)
            self._sweep(o)
            touched.append(b.counterparty)
        staked_after = st.staked
        st.chain.append((b, tuple(ops), staked_after))
        self._blocks += 1
        if st.cut is not None:  # a late block below a frozen account's cut: its stake goes too
            self._unsweep(st)
            self._sweep(st)
        return touched

    def _revert(self, st: _Account) -> None:
        b, ops, _ = st.chain.pop()
        self._blocks -= 1
        self._reverted.add(block_hash(b))
        frozen: list[_Account] = []
        for op in reversed(ops):
            kind, account = op[0], op[1]
            if kind == "open":
                del self._escrows[account][op[2]]
                continue
            if kind == "close":
                self._escrows[account][op[2]].state = "open"
                continue
            target = self._accounts[account]
            if kind == "c":
                target.credits -= op[2]
            elif kind == "o":
                target.own -= op[2]
            elif kind == "e":
                target.escrow -= op[2]
            else:
                target.staked -= op[2]
                if target.cut is not None and target is not st:
                    frozen.append(target)
        for target in frozen:  # an undone slash gives the stake back: a frozen account's goes on
            self._unsweep(target)
            self._sweep(target)

    def _cut(self, account: bytes, height: int) -> None:
        """Revert ``account``'s blocks above ``height``; freeze it there (the lower cut wins)."""
        st = self._acct(account)
        while len(st.chain) > height:
            self._revert(st)
        st.cut = height if st.cut is None else min(st.cut, height)
        for key in [k for k in self._held if k[0] == account and k[1] > st.cut]:
            del self._held[key]

    def _unsweep(self, st: _Account) -> None:
        if st.swept:
            self._acct(self.treasury).credits -= st.swept
            st.staked += st.swept
            st.swept = 0

    def _sweep(self, st: _Account) -> None:
        """A frozen account keeps no stake: what is left goes to the treasury (not counted as
        credits seen: its timing depends on arrival order, its final amount does not)."""
        if st.cut is not None and st.staked > 0:
            st.swept = st.staked
            st.staked = 0
            self._acct(self.treasury).credits += st.swept

    def _punish(self, a: Block, b: Block) -> list[bytes]:
        """An equivocation at ``a.height``: record the proof, count both blocks' credits as seen,
        cut the chain below the height, freeze, sweep the stake."""
        acct, h = a.account, a.height
        self._proofs.setdefault((acct, h), (a, b))
        touched = [acct, self.treasury]
        st = self._acct(acct)
        for blk in (a, b):
            digest = block_hash(blk)
            applied = blk.height <= len(st.chain) and block_hash(st.chain[blk.height - 1][0]) == digest
            if applied or digest in self._reverted or digest in self._proof_counted:
                continue
            self._proof_counted.add(digest)
            for account, amount in self._credits_of(blk):
                self._acct(account).seen += amount
                touched.append(account)
        if st.cut is None or st.cut > h - 1:
            self._unsweep(st)
            self._cut(acct, h - 1)
            self._sweep(st)
        return touched

    def _credits_of(self, b: Block) -> list[tuple[bytes, int]]:
        if b.type is BlockType.TRANSFER:
            return [(b.counterparty, b.amount)]
        if b.type is BlockType.SETTLE:
            return [(p.account, p.amount) for p in b.payments] + [(self.treasury, settle_fee(b.amount,
                                                                                           self.fee_bps))]
        if b.type is BlockType.SLASH:
            return [(p.account, p.amount) for p in b.payments]
        return []

    # ----------------------------------------------------------------------------- building

    def next_block(self, identity: Any, type: BlockType, **fields: Any) -> Block:  # noqa: A002
        """Build and sign ``identity``'s next block (height, previous, credits, balance and the
        derived fields filled in); it is not applied: ``offer`` it (then its signature, made
        here, is not verified again: see ``offer``).

        Fields: amount, counterparty (account bytes or DID), job, timestamp_ms (the shell's clock;
        the core reads none), payments ((account|DID, amount) pairs or ``Payment``s), deadline_ms,
        ref_height, evidence.  Derived when absent: a refund's amount (the escrow), a settle's
        amount (the sum paid), a slash's amount and payments (the offender's stake at
        ref_height, split half to the slasher, the rest to the treasury).

        Raises:
            BlockRejected: the ledger would not accept the block (``reason`` says why), or it would
                spend credits this node has seen taken back by a cut.
        """
        account = self._account_of(identity.public_key)
        st = self._accounts.get(account)
        if st is not None and st.cut is not None:
            raise BlockRejected("account frozen: it cannot sign new blocks", reason="account frozen")
        height = len(st.chain) if st else 0
        cp = fields.pop("counterparty", b"")
        cp = account_of_did(cp) if isinstance(cp, str) else bytes(cp)
        payments = tuple(p if isinstance(p, Payment) else
                         Payment(account_of_did(p[0]) if isinstance(p[0], str) else bytes(p[0]), int(p[1]))
                         for p in fields.pop("payments", ()))
        type = BlockType(type)  # noqa: A001
        job = fields.pop("job", "")
        amount = fields.pop("amount", None)
        if amount is None:
            if type is BlockType.REFUND:
                esc = self._escrows.get(account, {}).get(job)
                amount = esc.amount if esc is not None else 0
            elif type is BlockType.SETTLE:
                amount = sum(p.amount for p in payments)
            elif type is BlockType.SLASH:
                o = self._accounts.get(cp)
                h = fields.get("ref_height", 0)
                amount = o.chain[h - 1][2] if o is not None and 1 <= h <= len(o.chain) else 0
            else:
                amount = 0
        if type is BlockType.SLASH and not payments:
            payments = (Payment(account, amount // 2), Payment(self.treasury, amount - amount // 2))
        evidence = tuple(bytes(e) for e in fields.pop("evidence", ()))
        timestamp_ms = int(fields.pop("timestamp_ms", 0))
        deadline_ms = int(fields.pop("deadline_ms", 0))
        ref_height = int(fields.pop("ref_height", 0))
        if fields:
            raise LedgerError(f"next_block: unknown field(s) {', '.join(sorted(fields))}")
        seen = st.seen if st is not None else 0
        # One fresh object nobody else holds yet: checked with balance 0, then its balance and
        # signature are set in place (nothing hashed it before: the body is encoded once).
        block = Block(account=account, public_key=identity.public_key, height=height + 1,
                      previous=st.head if st is not None else ZERO_HASH, type=type, amount=int(amount),
                      counterparty=cp, job=job, timestamp_ms=timestamp_ms, credits=seen, balance=0,
                      payments=payments, deadline_ms=deadline_ms, ref_height=ref_height, evidence=evidence)
        reason = self._shape(block)
        if not reason:
            try:
                reason, own_after = self._rules(block, st)
            except _Held as held:
                reason = f"cannot build yet: {held.reason}"
        if reason:
            raise BlockRejected(f"{type.name.lower()} refused: {reason}", reason=reason)
        balance = seen + own_after
        actual = (st.credits if st is not None else 0) + own_after
        if balance < 0 or actual < 0:
            reason = f"balance would be {min(balance, actual)}"
            raise BlockRejected(f"{type.name.lower()} refused: {reason}", reason=reason)
        object.__setattr__(block, "balance", balance)
        object.__setattr__(block, "signature", identity.sign(block_hash(block)))
        if len(block._body) > MAX_BLOCK_BYTES:
            raise BlockRejected("block over the size limit", reason="too large")
        if len(self._built) >= _MAX_BUILT:  # built but never offered: forget the oldest
            del self._built[next(iter(self._built))]
        self._built[block_hash(block)] = (block, own_after, block.previous)
        return block

    # ------------------------------------------------------------------------------- queries

    @staticmethod
    def _id(account: bytes | str) -> bytes:
        return account_of_did(account) if isinstance(account, str) else bytes(account)

    def account(self, account: bytes | str) -> dict[str, Any]:
        acct = self._id(account)
        st = self._accounts.get(acct) or _Account()
        balance = st.credits + st.own
        return {"did": did_of_account(acct), "balance": balance, "escrow": st.escrow, "staked": st.staked,
                "frozen": st.cut is not None, "height": len(st.chain), "head": st.head.hex(),
                "credits": st.credits, "credits_seen": st.seen, "debt": max(0, -balance)}

    def escrow(self, account: bytes | str, job: str) -> dict[str, Any] | None:
        esc = self._escrows.get(self._id(account), {}).get(job)
        return None if esc is None else self._escrow_json(job, esc)

    def escrow_terms(self, account: bytes, job: str) -> tuple[str, int, int, dict[bytes, int]] | None:
        """(state, amount, deadline_ms, {worker account: max pay}) without building DIDs: for the
        request path, where ``escrow``'s base58 work would show."""
        esc = self._escrows.get(account, {}).get(job)
        return None if esc is None else (esc.state, esc.amount, esc.deadline_ms, esc.workers)

    def height_of(self, account: bytes) -> int:
        st = self._accounts.get(account)
        return len(st.chain) if st is not None else 0

    def open_escrows(self, account: bytes | str) -> list[dict[str, Any]]:
        escrows = sorted(self._escrows.get(self._id(account), {}).items())
        return [self._escrow_json(job, e) for job, e in escrows if e.state == "open"]

    @staticmethod
    def _escrow_json(job: str, e: _Escrow) -> dict[str, Any]:
        return {"job": job, "amount": e.amount, "state": e.state, "deadline_ms": e.deadline_ms,
                "workers": {did_of_account(w): cap for w, cap in e.workers.items()}}

    def history(self, account: bytes | str) -> list[Block]:
        st = self._accounts.get(self._id(account))
        return [b for b, _, _ in st.chain] if st else []

    def blocks_from(self, account: bytes | str, height: int, limit: int | None = None) -> list[Block]:
        st = self._accounts.get(self._id(account))
        if st is None:
            return []
        start = max(height, 1) - 1
        end = len(st.chain) if limit is None else min(len(st.chain), start + limit)
        return [b for b, _, _ in st.chain[start:end]]

    def heads(self) -> dict[bytes, tuple[int, bytes]]:
        return {a: (len(st.chain), st.head) for a, st in self._accounts.items() if st.chain}

    def held(self) -> list[Block]:
        return list(self._held.values())

    def proofs(self) -> list[tuple[Block, Block]]:
        return list(self._proofs.values())

    def frozen(self, account: bytes | str) -> bool:
        st = self._accounts.get(self._id(account))
        return st is not None and st.cut is not None

    def supply(self) -> dict[str, Any]:
        """``balances + escrow + staked == minted`` always (balances may include debts); the
        counts are nested under ``stats`` so that every top-level integer adds up to ``minted``."""
        accounts = self._accounts.values()
        balances = sum(st.credits + st.own for st in accounts)
        return {
            "minted": self.minted,
            "balances": balances,
            "escrow": sum(st.escrow for st in accounts),
            "staked": sum(st.staked for st in accounts),
            "stats": {
                "accounts": sum(1 for st in accounts if st.chain or st.credits or st.own),
                "blocks": self._blocks,
                "frozen": sum(1 for st in accounts if st.cut is not None),
                "held": len(self._held),
                "proofs": len(self._proofs),
                "debt": sum(max(0, -(st.credits + st.own)) for st in accounts),
            },
        }

    def state_hash(self) -> bytes:
        """blake3 over every non-empty account (sorted by id): id, height, head, balance, escrow,
        staked, frozen; then every escrow sorted by (account, job): account, job, state, amount."""
        h = blake3.blake3()
        for acct in sorted(self._accounts):
            st = self._accounts[acct]
            if not (st.chain or st.credits or st.own or st.escrow or st.staked or st.cut is not None):
                continue
            h.update(_ACCT_ROW.pack(acct, len(st.chain), st.head, st.credits + st.own, st.escrow, st.staked,
                                    st.cut is not None))
        for acct in sorted(self._escrows):
            for job in sorted(self._escrows[acct]):
                e = self._escrows[acct][job]
                raw = job.encode()
                h.update(_ESC_ROW.pack(acct, len(raw)) + raw)
                h.update(e.state.encode() + b"\0" + struct.pack("<q", e.amount))
        return h.digest()

    @property
    def block_count(self) -> int:
        return self._blocks

    @classmethod
    def replay(cls, genesis: Genesis, blocks: Iterable[Block], proofs: Iterable[tuple[Block, Block]] = (),
               *, verify_signatures: bool = False, max_held: int = 10_000_000) -> Ledger:
        """Rebuild a ledger from stored blocks (any order) and proofs.  A local trusted store
        skips signatures; ``inos ledger verify`` passes ``verify_signatures=True``."""
        ledger = cls(genesis, verify_signatures=verify_signatures, max_held=max_held)
        for a, b in proofs:
            ledger.offer_proof(a, b)
        for blk in blocks:
            ledger.offer(blk)
        return ledger


_FIELDS = tuple(f for f in Block.__dataclass_fields__ if not f.startswith("_"))
