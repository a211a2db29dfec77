"""SIGKILL a ledger writer at random moments: what it reported durable survives, nothing is half-applied.

The child (``python -m inos_node.testing.ledger_crash``) appends signed transfers from four
accounts at once (group commit) and prints ``durable <hash>`` after each append returns.  The test
reads a random number of those lines (events, not time), kills the child with SIGKILL, and checks
the file: every reported block is there, each account's chain is gap-free and fork-free, the
replay holds nothing back and conserves the supply, and replaying again (this time verifying every
signature) gives the same state hash, which is also the one the next child reports on restart.
"""

from __future__ import annotations

import json
import random
import selectors
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from inos_node.economy.genesis import Genesis, create_genesis, write_genesis
from inos_node.economy.ledger import Ledger
from inos_node.economy.model import block_hash
from inos_node.economy.store import LedgerStore
from inos_node.identity import Identity

pytestmark = pytest.mark.integration

SEEDS = [bytes([i + 1]) * 32 for i in range(4)]
ROUNDS = 5


class _Child:
    def __init__(self, data_dir: Path, genesis: Path, synchronous: str, *, node: bool = False) -> None:
        cmd = [sys.executable, "-m", "inos_node.testing.ledger_crash", "--data-dir", str(data_dir),
               "--genesis", str(genesis), "--synchronous", synchronous, *(["--node"] if node else [])]
        for seed in SEEDS:
            cmd += ["--seed", seed.hex()]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)

    def line(self, timeout: float = 60.0) -> str:
        assert self.proc.stdout is not None
        if not self.sel.select(timeout):
            self.kill()
            raise AssertionError("the ledger writer printed nothing for 60 s")
        raw = self.proc.stdout.readline()
        if not raw:
            code = self.proc.wait(timeout=10)
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise AssertionError(f"the ledger writer exited with {code}: {err[-2000:]}")
        return raw.decode().strip()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.sel.close()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


def _run_then_kill(child: _Child, expected_hash: str | None, lines: int, durable: set[str]) -> None:
    """Read the child's ready line (its replayed state must be ``expected_hash``, when known),
    then ``lines`` durable lines into ``durable``, then SIGKILL it mid-stream: writes are in
    flight at that moment."""
    try:
        ready = json.loads(child.line())
        assert ready["event"] == "ready"
        if expected_hash is not None:
            assert ready["state_hash"] == expected_hash, "a restarted writer replays to the checked state"
        for _ in range(lines):
            kind, digest = child.line().split()
            assert kind == "durable"
            durable.add(digest)
    finally:
        child.kill()


def _check(data_dir: Path, genesis: Genesis, durable: set[str]) -> str:
    with LedgerStore.open(data_dir, genesis) as store:
        blocks = list(store.load()[0])
        proofs = store.proofs()
        ledger = store.replay(genesis)
        again = Ledger.replay(genesis, blocks, proofs, verify_signatures=True)
    stored = {block_hash(b).hex() for b in blocks}
    assert durable <= stored, "every append reported durable is in the file"
    heights = Counter((b.account, b.height) for b in blocks)
    assert max(heights.values()) == 1, "no height stored twice"
    for account in {b.account for b in blocks}:
        mine = sorted(h for (a, h) in heights if a == account)
        assert mine == list(range(1, len(mine) + 1)), "each chain is stored without a gap"
    supply = ledger.supply()
    assert supply["balances"] + supply["escrow"] + supply["staked"] == supply["minted"] == genesis.minted
    assert supply["stats"]["blocks"] == len(blocks), "the replay applied every stored block"
    assert supply["stats"]["held"] == 0, "no stored block waits for a missing one"
    assert ledger.state_hash() == again.state_hash(), "a verifying replay reaches the same state"
    return ledger.state_hash().hex()


def _network(tmp_path: Path, seeds: list[bytes]) -> tuple[list[Identity], Path, Genesis]:
    """Identities of ``seeds``, each funded by a genesis written to tmp_path/genesis.json."""
    identities = [Identity(s) for s in seeds]
    doc, _ = create_genesis({i.did: 10**9 for i in identities}, created_unix_ms=1)
    genesis_file = write_genesis(tmp_path / "genesis.json", doc)
    return identities, genesis_file, Genesis.load(genesis_file)


@pytest.mark.parametrize("synchronous", ["normal", "full"])
def test_sigkill_at_random_points_loses_nothing_reported(tmp_path: Path, synchronous: str) -> None:
    _, genesis_file, genesis = _network(tmp_path, SEEDS)
    data_dir = tmp_path / "node"
    rng = random.Random(4)
    durable: set[str] = set()
    expected_hash = None
    for _ in range(ROUNDS):
        _run_then_kill(_Child(data_dir, genesis_file, synchronous), expected_hash, rng.randrange(20, 400), durable)
        expected_hash = _check(data_dir, genesis, durable)
    assert len(durable) >= ROUNDS * 20


def test_sigkill_a_node_between_journal_and_store_loses_nothing_reported(tmp_path: Path) -> None:
    """A LedgerNode's own blocks are journaled when ``commit`` returns and reach SQLite up to
    20 ms later: killed at random points, every block it returned is in SQLite once the node
    has started again (the start stores what the journal holds), and a restart never signs a
    height twice (no height stored twice, each chain gap-free)."""
    import trio

    from inos_node.economy.node import LedgerNode

    identities, genesis_file, genesis = _network(tmp_path, SEEDS[:2])
    data_dir = tmp_path / "node"
    rng = random.Random(7)
    durable: set[str] = set()
    expected_hash = None
    recovered_any = False

    async def start_and_stop() -> None:  # what the next start does first: recover the journal
        node = LedgerNode(genesis, identities[0], data_dir)
        async with node.open():
            pass

    for _ in range(ROUNDS):
        _run_then_kill(_Child(data_dir, genesis_file, "normal", node=True), expected_hash, rng.randrange(20, 300),
                       durable)
        journal = data_dir / "ledger.journal"
        recovered_any |= journal.exists() and journal.stat().st_size > 0
        trio.run(start_and_stop)
        expected_hash = _check(data_dir, genesis, durable)
        assert journal.stat().st_size == 0, "the start stored what the journal held, then emptied it"
    assert len(durable) >= ROUNDS * 20
    assert recovered_any, "at least one kill left blocks in the journal only (else this tests nothing)"
