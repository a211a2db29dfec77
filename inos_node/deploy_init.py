"""The docker image's helpers: the compose testnet's one-shot ``init`` and the ``health`` check.

    python -m inos_node.deploy_init init --nodes-dir /nodes --bootstrap node1 --alloc 1000000
    python -m inos_node.deploy_init health

``init`` runs once before the nodes (compose.yaml: ``depends_on: condition:
service_completed_successfully``). Every node's data volume is mounted at ``/nodes/<name>``.
It creates each node's identity (what ``inos id --json`` does), then ONE genesis allocating ``--alloc``
credits to every node's DID (``inos genesis create``), and writes to the shared genesis volume:

    /genesis/genesis.json    the signed genesis (the nodes run with --genesis)
    /genesis/bootstrap       the bootstrap node's address, /dns4/<name>/tcp/4001/p2p/<peer id>
    /genesis/testnet.json    {"nodes": {name: {"peer_id", "did", "address"}}, "bootstrap", "genesis"}

Run again (``docker compose up`` after a stop), it keeps what exists: identities are never
overwritten, and an existing genesis that allocates to every node is reused, so the ledgers in
the volumes stay valid. A genesis that misses a node (one added later) is an error that says to
start over with ``docker compose down -v``. Fresh named volumes are owned by root: ``init``
starts as root only to hand them to the image's ``inos`` user, and drops to it before it
creates anything. No secret is printed: identities and tokens stay in the volumes.

``health`` is the image's HEALTHCHECK: it reads the token from the data dir ($INOS_DATA_DIR),
asks the local API ($INOS_API) for /v1/health, and exits 0 when the node is ready and has at
least $INOS_HEALTH_MIN_PEERS peers (default 0). It imports only the standard library client.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from inos_node.errors import ConfigError, InosError

__all__ = ["health", "init", "main"]

P2P_PORT = 4001


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _drop_privileges(run_as: str | None, owned: list[Path]) -> None:
    """As root with ``run_as``: give ``owned`` to that user, then become it (uid, gid, groups, HOME)."""
    if not run_as or os.geteuid() != 0:
        return
    import pwd

    try:
        user = pwd.getpwnam(run_as)
    except KeyError:
        raise ConfigError(f"--run-as {run_as!r}: no such user", key="run_as") from None
    for path in owned:
        os.chown(path, user.pw_uid, user.pw_gid)
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    os.environ["HOME"] = user.pw_dir


def _inos(*args: str) -> dict[str, Any]:
    """Run one ``inos`` CLI command with --json; its JSON answer, or a ConfigError with its stderr."""
    cmd = [sys.executable, "-m", "inos_node", *args, "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ConfigError(f"`inos {' '.join(args[:2])}` failed (exit {proc.returncode}): "
                          f"{proc.stderr.strip() or proc.stdout.strip()}", key="init")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def init(nodes_dir: Path, genesis_dir: Path, bootstrap: str, alloc: int,
         run_as: str | None = None) -> dict[str, Any]:
    """Identities, genesis and bootstrap address of the testnet whose volumes are under ``nodes_dir``."""
    dirs = sorted(p for p in nodes_dir.iterdir() if p.is_dir()) if nodes_dir.is_dir() else []
    if not dirs:
        raise ConfigError(f"no node volumes under {nodes_dir} (mount each as {nodes_dir}/<name>)",
                          key="nodes_dir")
    if bootstrap not in {p.name for p in dirs}:
        names = ", ".join(p.name for p in dirs)
        raise ConfigError(f"--bootstrap {bootstrap!r} is not one of the nodes: {names}", key="bootstrap")
    _drop_privileges(run_as, [genesis_dir, *dirs])
    for d in dirs:
        d.chmod(0o700)
    from inos_node.identity import DataDir
    from inos_node.net.host import peer_id_of

    nodes = {}
    for d in dirs:  # what `inos id --data-dir D --json` prints, without a process per node
        ident = DataDir(d).identity()
        peer_id = peer_id_of(ident)
        address = f"/dns4/{d.name}/tcp/{P2P_PORT}/p2p/{peer_id}"
        nodes[d.name] = {"peer_id": peer_id, "did": ident.did, "address": address}
        _say(f"init: {d.name}: peer id {peer_id}, did {ident.did}")

    genesis = genesis_dir / "genesis.json"
    if genesis.exists():
        text = genesis.read_text()
        missing = [name for name, n in nodes.items() if n["did"] not in text]
        if missing:
            raise ConfigError(f"{genesis} exists but allocates nothing to {', '.join(missing)}: "
                              "start the testnet over with `docker compose down -v`", key="genesis")
        _say(f"init: reusing {genesis}")
    else:
        allocs = [a for n in nodes.values() for a in ("--alloc", f"{n['did']}={alloc}")]
        tmp = genesis_dir / ".genesis.json.tmp"
        doc = _inos("genesis", "create", "--out", str(tmp), "--force", *allocs, "--name", "inos-compose")
        tmp.rename(genesis)
        _say(f"init: genesis {genesis}: network id {doc.get('network_id')}, {alloc} credits to each of "
              f"{len(nodes)} nodes")

    (genesis_dir / "bootstrap").write_text(nodes[bootstrap]["address"] + "\n")
    summary = {"nodes": nodes, "bootstrap": nodes[bootstrap]["address"], "genesis": str(genesis)}
    (genesis_dir / "testnet.json").write_text(json.dumps(summary, indent=2) + "\n")
    _say(f"init: bootstrap {summary['bootstrap']}")
    return summary


def health(min_peers: int) -> str:
    """One line about the local node's health; raises InosError when it is not healthy."""
    from inos_node.client import Client, resolve_api, resolve_token

    doc = Client(resolve_api(None), resolve_token(None, None), timeout=4).health()
    if not doc.get("ready"):
        raise InosError("the node is not ready yet")
    peers = int(doc.get("peers", 0))
    if peers < min_peers:
        raise InosError(f"{peers} peer(s) connected, want at least {min_peers}")
    return f"ready, {peers} peer(s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inos_node.deploy_init", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="identities + genesis + bootstrap address of a compose testnet")
    p.add_argument("--nodes-dir", type=Path, default=Path("/nodes"), help="node volumes: DIR/<name>")
    p.add_argument("--genesis-dir", type=Path, default=Path("/genesis"), help="shared by the nodes")
    p.add_argument("--bootstrap", default="node1", help="the node every other node joins through")
    p.add_argument("--alloc", type=int, default=1_000_000, help="credits allocated to each node's DID")
    p.add_argument("--run-as", metavar="USER", 
                   help="when started as root: chown the volumes to USER, then become USER")
    sub.add_parser("health", help="exit 0 when the local node is ready (the image's HEALTHCHECK)")
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            init(args.nodes_dir, args.genesis_dir, args.bootstrap, args.alloc, args.run_as)
        else:
            _say(health(int(os.environ.get("INOS_HEALTH_MIN_PEERS", "0"))))
    except InosError as exc:
        sys.stderr.write(f"{args.command}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
