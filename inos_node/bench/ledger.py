"""``inos bench ledger``: the ledger's figures, each beside a raw baseline measured in the same run.

Keys (microseconds unless the name says otherwise):
  apply_transfer_per_s          Ledger.offer of signed transfers (decoded beforehand, as if from the
                                wire) on a fresh ledger, one core; includes the Ed25519 verify
  ed25519_verify_per_s          baseline: pynacl VerifyKey.verify of the same signatures
  decode_apply_transfer_per_s   the same transfers from their encoded bytes: decode_block + offer
  durable_append_p50_us         LedgerStore.append_sync of one block, until committed, one at a time
                                (synchronous=normal; an idle store: the caller commits, no hand-off)
  durable_append_trio_p50_us    the same through ``await store.append`` from a trio task
  sqlite_commit_p50_us          baseline: one INSERT of a row of the same size + COMMIT on a bare
                                sqlite3 WAL connection, same synchronous setting, same directory
  thread_handoff_rtt_p50_us     what any writer thread costs: a request to a sleeping thread and its
                                reply (queue + lock), no SQL
  durable_append_full_p50_us / sqlite_commit_full_p50_us   the pair again with synchronous=full
                                (an fsync per commit)
  group_commit_appends_per_s    64 trio tasks appending at once (group commit), and the mean batch
  settle_cpu_us                 requester CPU (thread time) per paid job, no network: build, sign and
                                apply an escrow_lock, verify the worker's receipt, build, sign and
                                apply the settle (the ledger is told the verified receipt, as the
                                node does, so checking the settle decodes and verifies nothing
                                again; its own signature is not re-verified: 1 verify + 2 signs)
  ed25519_sign_us / ed25519_verify_us   baseline: one pynacl sign / verify, same run (thread time)

``remote_paid_rtt_p50_us`` (a paid remote capsule) belongs to ``inos bench mesh``.
"""

from __future__ import annotations

import _thread
import os
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

__all__ = ["run_ledger"]

_ACCOUNTS = 8


def _p50_us(samples_ns: list[int]) -> float:
    return round(statistics.median(samples_ns) / 1000.0, 2)


def _identities(n: int) -> list[Any]:
    from inos_node.identity import Identity

    return [Identity(bytes([i + 1]) * 32) for i in range(n)]


def _genesis(identities: list[Any], amount: int) -> Any:
    from inos_node.economy.genesis import Genesis, create_genesis

    doc, _ = create_genesis({i.did: amount for i in identities}, name="bench", created_unix_ms=1)
    return Genesis.from_doc(doc)


def _transfers(genesis: Any, identities: list[Any], n: int) -> list[bytes]:
    """``n`` signed transfers round-robin among the accounts, each declaring the credits it saw."""
    from inos_node.economy.ledger import Ledger
    from inos_node.economy.model import BlockType, account_of_key
    from inos_node.wire.ledger import encode_block

    builder = Ledger(genesis, verify_signatures=False)
    out = []
    for i in range(n):
        me = identities[i % len(identities)]
        to = account_of_key(identities[(i + 1) % len(identities)].public_key)
        block = builder.next_block(me, BlockType.TRANSFER, amount=1, counterparty=to, timestamp_ms=i)
        builder.offer(block)
        out.append(encode_block(block))
    return out


def _bench_apply(report: dict[str, Any], quick: bool, say: Callable[[str], None]) -> None:
    import nacl.signing

    from inos_node.economy.ledger import Ledger, Outcome
    from inos_node.economy.model import block_hash
    from inos_node.wire.ledger import decode_block

    n = 2_000 if quick else 20_000
    ids = _identities(_ACCOUNTS)
    genesis = _genesis(ids, 10**12)
    say(f"building {n} signed transfers")
    raw = _transfers(genesis, ids, n)
    keys = {i.public_key: nacl.signing.VerifyKey(i.public_key) for i in ids}
    apply_rates, verify_rates, decode_rates = [], [], []
    say("apply transfers vs raw ed25519 verify")
    for _ in range(3):  # interleave the sides so drift hits both
        blocks = [decode_block(r) for r in raw]  # as received from the wire: body and hash attached
        triples = [(keys[b.public_key], block_hash(b), b.signature) for b in blocks]
        ledger = Ledger(genesis)
        t0 = time.perf_counter()
        for b in blocks:
            ledger.offer(b)
        apply_rates.append(n / (time.perf_counter() - t0))
        assert ledger.block_count == n, "every transfer applied"
        t0 = time.perf_counter()
        for key, message, signature in triples:
            key.verify(message, signature)
        verify_rates.append(n / (time.perf_counter() - t0))
        ledger = Ledger(genesis)
        t0 = time.perf_counter()
        for r in raw:
            if ledger.offer(decode_block(r)).outcome is not Outcome.APPLIED:
                raise AssertionError("a bench transfer was not applied")
        decode_rates.append(n / (time.perf_counter() - t0))
    report["apply_transfer_per_s"] = round(statistics.median(apply_rates), 1)
    report["ed25519_verify_per_s"] = round(statistics.median(verify_rates), 1)
    report["decode_apply_transfer_per_s"] = round(statistics.median(decode_rates), 1)
    report["transfers"] = n


def _handoff_samples(n: int) -> list[int]:
    """A request to a sleeping thread and back: the floor under any writer-thread design."""
    requests: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def server() -> None:
        while (lock := requests.get()) is not None:
            lock.release()

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    samples = []
    for _ in range(n):
        lock = _thread.allocate_lock()
        lock.acquire()
        t0 = time.perf_counter_ns()
        requests.put(lock)
        lock.acquire()
        samples.append(time.perf_counter_ns() - t0)
    requests.put(None)
    thread.join()
    return samples


def _bench_store(report: dict[str, Any], quick: bool, say: Callable[[str], None]) -> None:
    from inos_node.economy.store import LedgerStore, raw_commit_samples
    from inos_node.wire.ledger import decode_block

    n = 300 if quick else 3_000
    ids = _identities(_ACCOUNTS)
    genesis = _genesis(ids, 10**12)
    blocks = [decode_block(r) for r in _transfers(genesis, ids, 3 * n + 64 * 8)]
    row = len(bytes(blocks[0]._body)) + 64 + 32 + 16  # body + signature + hash + ids: the stored row
    base = Path(tempfile.mkdtemp(prefix="inos-bench-ledger-"))
    try:
        for sync, suffix, reps in (("normal", "", n), ("full", "_full", max(n // 10, 30))):
            say(f"durable append vs sqlite commit (synchronous={sync})")
            store = LedgerStore.open(base / f"ledger-{sync}.sqlite3", genesis, synchronous=sync)
            stream = iter(blocks)
            ours, raw = [], []
            try:
                for rnd in range(3):
                    for _ in range(reps // 3):
                        block = next(stream)
                        t0 = time.perf_counter_ns()
                        store.append_sync(block)
                        ours.append(time.perf_counter_ns() - t0)
                    raw += raw_commit_samples(base / f"raw-{sync}-{rnd}.sqlite3", row_bytes=row, n=reps // 3,
                                              synchronous=sync)
                if sync == "normal":
                    say("durable append from trio; group commit with 64 tasks")
                    trio.run(_bench_trio_append, report, store, stream, reps)
            finally:
                store.close()
            report[f"durable_append{suffix}_p50_us"] = _p50_us(ours)
            report[f"sqlite_commit{suffix}_p50_us"] = _p50_us(raw)
        report["thread_handoff_rtt_p50_us"] = _p50_us(_handoff_samples(n))
        report["stored_row_bytes"] = row
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def _bench_trio_append(report: dict[str, Any], store: Any, stream: Any, n: int) -> None:
    samples = []
    for _ in range(n // 3):
        block = next(stream)
        t0 = time.perf_counter_ns()
        await store.append(block)
        samples.append(time.perf_counter_ns() - t0)
    report["durable_append_trio_p50_us"] = _p50_us(samples)
    before = store.statistics()
    tasks, per_task = 64, 8

    async def appender(mine: list[Any]) -> None:
        for block in mine:
            await store.append(block)

    batches = [[next(stream) for _ in range(per_task)] for _ in range(tasks)]
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for mine in batches:
            nursery.start_soon(appender, mine)
    elapsed = time.perf_counter() - t0
    after = store.statistics()
    report["group_commit_appends_per_s"] = round(tasks * per_task / elapsed, 1)
    commits = int(after["commits"]) - int(before["commits"])
    report["group_commit_mean_batch"] = round(tasks * per_task / max(commits, 1), 1)


def _bench_settle(report: dict[str, Any], quick: bool, say: Callable[[str], None]) -> None:
    import blake3

    from inos_node.economy.ledger import Ledger, Outcome, lock_required
    from inos_node.economy.model import BlockType, account_of_key
    from inos_node.identity import verify
    from inos_node.net.host import peer_id_from_public_key
    from inos_node.receipts import sign_receipt, verify_receipt
    from inos_node.types import Metrics
    from inos_node.wire.ledger import encode_receipt

    say("settle CPU on the requester")
    n = 300 if quick else 3_000
    requester, worker = _identities(2)
    genesis = _genesis([requester], 10**12)
    ledger = Ledger(genesis)
    req_peer = peer_id_from_public_key(requester.public_key)
    work_peer = peer_id_from_public_key(worker.public_key)
    work_acct = account_of_key(worker.public_key)
    output, capsule, price = b"x" * 100, "system.echo", 10
    digest = blake3.blake3(b"input").digest()
    # The worker's side (not timed): one signed receipt per job.
    jobs = [(f"bench-{i}", sign_receipt(worker, job_id=f"bench-{i}", requester=req_peer, worker=work_peer,
                                        capsule=capsule, input_digest=digest, output=output, cost=price,
                                        metrics=Metrics())) for i in range(n)]
    lock_amount = lock_required(price, genesis.fee_bps)
    from inos_node import sigcache

    sigcache.forget_all()  # those receipts were signed here: the requester has not seen them yet
    t0 = time.thread_time_ns()
    for job, receipt in jobs:
        lock = ledger.next_block(requester, BlockType.ESCROW_LOCK, amount=lock_amount, job=job,
                                 payments=[(work_acct, price)], deadline_ms=10**13)
        if ledger.offer(lock).outcome is not Outcome.APPLIED:
            raise AssertionError("bench escrow_lock not applied")
        body = verify_receipt(receipt, worker=work_peer, job_id=job, requester=req_peer, capsule=capsule,
                              input_digest=digest, output=output)
        evidence = encode_receipt(receipt)  # what LedgerNode.know_receipt does with a verified receipt
        ledger.know_receipt(evidence, receipt.public_key, receipt.checked)
        settle = ledger.next_block(requester, BlockType.SETTLE, job=job, payments=[(work_acct, body.cost)],
                                   evidence=[evidence])
        if ledger.offer(settle).outcome is not Outcome.APPLIED:
            raise AssertionError("bench settle not applied")
    report["settle_cpu_us"] = round((time.thread_time_ns() - t0) / n / 1000.0, 1)
    report["settles"] = n
    # Baseline, same run: what one Ed25519 sign and one verify cost (a job needs 2 signs + 1 verify).
    message = bytes(32)
    signature = requester.sign(message)
    t0 = time.thread_time_ns()
    for _ in range(n // 3):
        requester.sign(message)
    report["ed25519_sign_us"] = round((time.thread_time_ns() - t0) / (n // 3) / 1000.0, 1)
    t0 = time.thread_time_ns()
    for _ in range(n // 3):
        verify(requester.public_key, message, signature)
    report["ed25519_verify_us"] = round((time.thread_time_ns() - t0) / (n // 3) / 1000.0, 1)


def _ratios(r: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: str, b: str) -> float | None:
        x, y = r.get(a), r.get(b)
        return round(x / y, 3) if isinstance(x, int | float) and isinstance(y, int | float) and y else None

    return {
        "apply_transfer/ed25519_verify": ratio("apply_transfer_per_s", "ed25519_verify_per_s"),
        "durable_append/sqlite_commit": ratio("durable_append_p50_us", "sqlite_commit_p50_us"),
        "durable_append_trio/sqlite_commit": ratio("durable_append_trio_p50_us", "sqlite_commit_p50_us"),
        "durable_append_full/sqlite_commit_full": ratio("durable_append_full_p50_us",
                                                        "sqlite_commit_full_p50_us"),
    }


def run_ledger(quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Every figure of the module docstring, in one dict (``ratios`` last)."""

    def say(msg: str) -> None:
        if progress:
            sys.stderr.write(f"bench: {msg} ...\n")
            sys.stderr.flush()

    report: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    _bench_apply(report, quick, say)
    _bench_store(report, quick, say)
    _bench_settle(report, quick, say)
    report["ratios"] = _ratios(report)
    return report
