"""``inos node run`` and ``inos id``: the daemon's commands (registered by ``cli.py``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import tomllib
from pathlib import Path
from typing import Any

from inos_node.errors import ConfigError, InosError

__all__ = ["default_data_dir", "register"]

_RUN_EPILOG = """\
examples:
  inos node run --data-dir ~/.inos/a --listen /ip4/127.0.0.1/tcp/4001 --api 127.0.0.1:5050
  inos node run --data-dir ~/.inos/b --listen /ip4/127.0.0.1/tcp/4002 --api 127.0.0.1:5051 \\
                --bootstrap /ip4/127.0.0.1/tcp/4001/p2p/<peer id of a>

The data dir holds the node's Ed25519 identity (identity.key, 0600), its API token (api.token,
0600) and a lock: one node per data dir. When the node is ready it prints one JSON line
{"event": "ready", "peer_id", "addresses", "api", ...} on stdout. SIGINT or SIGTERM stops it
cleanly (arena unlinked, worker processes stopped).
"""

_KEYS = {"listen", "announce", "bootstrap", "api", "name", "prefer", "workers", "mdns", "arena_mb"}


def default_data_dir() -> Path:
    return Path(os.environ.get("INOS_DATA_DIR") or Path.home() / ".inos")


def _load_config(path: str | None, data_dir: Path) -> dict[str, Any]:
    candidate = Path(path) if path else data_dir / "config.toml"
    if not candidate.exists():
        if path:
            raise ConfigError(f"--config {path}: no such file", key="config")
        return {}
    try:
        doc = tomllib.loads(candidate.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{candidate}: {exc}", key="config") from exc
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise ConfigError(f"{candidate}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}",
                          key=unknown[0])
    return doc


def cmd_node_run(args: argparse.Namespace) -> int:
    import trio

    from inos_node.daemon import DaemonConfig, run_node
    from inos_node.net.host import quiet_libp2p_logs

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    conf = _load_config(args.config, data_dir)

    def pick(flag: Any, key: str, default: Any) -> Any:
        return flag if flag not in (None, []) else conf.get(key, default)

    cfg = DaemonConfig(
        data_dir=data_dir,
        listen=tuple(pick(args.listen, "listen", ["/ip4/0.0.0.0/tcp/4001"])),
        announce=tuple(pick(args.announce, "announce", [])),
        bootstrap=tuple(pick(args.bootstrap, "bootstrap", [])),
        api=pick(args.api, "api", os.environ.get("INOS_API", "127.0.0.1:5050")),
        name=pick(args.name, "name", data_dir.name),
        prefer=pick(args.prefer, "prefer", "fastest"),
        process_workers=int(pick(args.workers, "workers", 1)),
        mdns=bool(pick(args.mdns or None, "mdns", False)),
        arena_size=int(pick(args.arena_mb, "arena_mb", 64)) * 1024 * 1024,
        test_corrupt_outputs=bool(os.environ.get("INOS_TEST_CORRUPT_OUTPUTS")),
        test_hang=bool(os.environ.get("INOS_TEST_HANG")),
    )
    if not args.verbose_libp2p:
        quiet_libp2p_logs()
    return trio.run(run_node, cfg)


def cmd_id(args: argparse.Namespace) -> int:
    from inos_node.identity import DataDir
    from inos_node.net.host import peer_id_of

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    identity = DataDir(data_dir).identity()
    peer_id = peer_id_of(identity)
    addresses = _running_addresses(data_dir, args.api)
    if addresses is None:
        conf = _load_config(None, data_dir)
        addresses = [f"{a}/p2p/{peer_id}" for a in conf.get("announce") or conf.get("listen") or
                     ["/ip4/127.0.0.1/tcp/4001"]]
    doc = {"peer_id": peer_id, "did": identity.did, "addresses": addresses}
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"peer id   {peer_id}\ndid       {identity.did}")
        for a in addresses:
            print(f"address   {a}")
    return 0


def _running_addresses(data_dir: Path, api: str | None) -> list[str] | None:
    """The addresses of the node running on this data dir, if its API answers."""
    try:
        from inos_node.client import Client

        token = (data_dir / "api.token").read_text().strip()
        info = Client(api or os.environ.get("INOS_API", "127.0.0.1:5050"), token, timeout=2).node()
    except (OSError, InosError):  # no node running (or not ours) is the ordinary case here
        return None
    addrs = info.get("addresses")
    return list(addrs) if isinstance(addrs, list) else None


def register(sub: Any) -> None:
    node = sub.add_parser("node", help="run a node daemon (see `inos node run --help`)")
    nsub = node.add_subparsers(dest="node_command", metavar="COMMAND", required=True)
    p = nsub.add_parser("run", help="run the node: arena, units, libp2p mesh, control API",
                        description="Run a node until SIGINT/SIGTERM.", epilog=_RUN_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="identity, token and lock live here (default $INOS_DATA_DIR or ~/.inos)")
    p.add_argument("--listen", action="append", metavar="MULTIADDR",
                   help="libp2p listen address, repeatable (default /ip4/0.0.0.0/tcp/4001)")
    p.add_argument("--announce", action="append", metavar="MULTIADDR", help="address to tell peers, repeatable")
    p.add_argument("--bootstrap", action="append", metavar="MULTIADDR",
                   help="a peer to join through: /ip4/.../tcp/.../p2p/<peer id>, repeatable")
    p.add_argument("--api", metavar="HOST:PORT", help="control API address (default 127.0.0.1:5050; $INOS_API)")
    p.add_argument("--config", metavar="FILE", help="a TOML file with the same keys (default DATA_DIR/config.toml)")
    p.add_argument("--name", help="a human name for this node (default: the data dir's name)")
    p.add_argument("--prefer", choices=["local", "remote", "fastest", "cheapest"],
                   help="default placement policy for submitted capsules (default fastest)")
    p.add_argument("--workers", type=int, help="worker processes for CPU-bound capsules (default 1)")
    p.add_argument("--arena-mb", type=int, help="shared arena size in MiB (default 64)")
    p.add_argument("--mdns", action="store_true", help="also discover peers with mDNS (off by default)")
    p.add_argument("--verbose-libp2p", action="store_true", help="let py-libp2p's own logs through")
    p.set_defaults(fn=cmd_node_run)

    p = sub.add_parser("id", help="this node's peer id, DID and addresses (creates the identity if absent)")
    p.add_argument("--data-dir", help="default $INOS_DATA_DIR or ~/.inos")
    p.add_argument("--api", help="ask the running node at HOST:PORT for its live addresses")
    p.add_argument("--json", action="store_true", help='print {"peer_id", "did", "addresses"}')
    p.set_defaults(fn=cmd_id)
    logging.getLogger(__name__).debug("node commands registered")
