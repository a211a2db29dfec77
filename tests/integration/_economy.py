"""A credits network of real node processes for the economy's integration tests.

``EcoNet`` creates the identities first (``DataDir.ensure``), then one signed genesis allocating
``alloc`` credits to each of them, and starts nodes on it (``--genesis``) with
``testing.procs.start_node``; ``close`` stops every node it started.  The nodes are external
processes, so conditions on their ledgers are awaited by polling their API against a deadline
(``wait_for``): there is no event stream for ledger state.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from inos_node.client import ApiError
from inos_node.economy.genesis import create_genesis, write_genesis
from inos_node.identity import DataDir
from inos_node.testing.procs import NodeProc, start_node

T = TypeVar("T")

POLL_S = 0.25  # pause between two looks at an external process's state


def wait_for(look: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``look`` until it returns something truthy (returned) or ``timeout`` passes (AssertionError
    naming ``what`` and the last value seen).  A node that does not answer counts as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = look()
        except ApiError as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last seen: {last!r}")
        time.sleep(POLL_S)


def conserved(supply: dict[str, Any]) -> bool:
    return bool(supply["balances"] + supply["escrow"] + supply["staked"] == supply["minted"])


class EcoNet:
    """Identities, one genesis, and the nodes started on it (under ``base``)."""

    def __init__(self, base: Path, names: Iterable[str], *, alloc: int = 1000,
                 clones: dict[str, str] | None = None, grace_ms: int = 2000) -> None:
        """``clones``: {clone: original}: the clone's data dir is a copy of the original's, made
        before either starts (the same identity key on two machines)."""
        self.base = base
        self.alloc = alloc
        self.dids = {n: DataDir(base / n).ensure().identity().did for n in names}
        for clone, original in (clones or {}).items():
            shutil.copytree(base / original, base / clone)
        # a short grace: a restarted requester refunds its open escrows after deadline + grace
        doc, _ = create_genesis({did: alloc for did in self.dids.values()}, name=base.name, grace_ms=grace_ms)
        self.genesis = write_genesis(base / "genesis.json", doc)
        self.treasury: str = doc["treasury"]
        self.minted = alloc * len(self.dids)
        self.nodes: dict[str, NodeProc] = {}

    def start(self, name: str, *, bootstrap: Iterable[str] = (),
              env: dict[str, str] | None = None) -> NodeProc:
        addrs = tuple(self.nodes[b].address for b in bootstrap)
        node = start_node(self.base, name, bootstrap=addrs, env=env, extra=("--genesis", str(self.genesis)))
        self.nodes[name] = node
        return node

    def start_many(self, names: Iterable[str], *, bootstrap: Iterable[str] = (),
                   env: dict[str, dict[str, str]] | None = None) -> list[NodeProc]:
        """Start several nodes at once (each blocks on its own ready line)."""
        names, boot = list(names), tuple(bootstrap)
        with ThreadPoolExecutor(len(names)) as pool:
            return list(pool.map(lambda n: self.start(n, bootstrap=boot, env=(env or {}).get(n)), names))

    def close(self) -> None:
        for node in self.nodes.values():
            node.stop()

    def log(self, name: str) -> str:
        path = self.base / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    # ------------------------------------------------------------------ ledger views
    def converge(self, names: Iterable[str], timeout: float = 60.0) -> str:
        """Wait until every named node has nothing held and the same state hash; returns the hash."""
        names = list(names)
        clients = {n: self.nodes[n].client(timeout=10) for n in names}

        def same() -> str | None:
            supplies = {n: c.supply() for n, c in clients.items()}
            hashes = {s["state_hash"] for s in supplies.values()}
            if len(hashes) == 1 and all(s["stats"]["held"] == 0 for s in supplies.values()):
                return hashes.pop()
            same.last = {n: (s["state_hash"][:12], s["stats"]) for n, s in supplies.items()}  # type: ignore[attr-defined]
            return None

        try:
            return wait_for(same, timeout, f"{names} to reach one state hash")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nper node: {json.dumps(getattr(same, 'last', {}))}") from None

    def check_ledger(self, name: str) -> dict[str, Any]:
        """Assert the node's ledger re-verifies from genesis and conserves the supply; its supply."""
        client = self.nodes[name].client(timeout=60)
        verdict = client.verify_ledger()
        assert verdict["ok"], f"{name}: ledger verify failed: {verdict['problems']}"
        assert verdict["state_hash"] == verdict["live_state_hash"], f"{name}: replay differs from live state"
        supply = client.supply()
        assert supply["minted"] == self.minted, f"{name}: minted {supply['minted']} != genesis {self.minted}"
        assert conserved(supply), f"{name}: supply not conserved: {supply}"
        return supply
