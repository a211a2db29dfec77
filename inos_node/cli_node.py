"""``inos node run``, ``inos config show`` and ``inos id``: the daemon's commands (registered by ``cli.py``).

Settings come from ``inos_node.config`` (flags > env > file > defaults); logging from ``inos_node.logs``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from inos_node import config
from inos_node.errors import InosError

__all__ = ["default_data_dir", "register"]

_RUN_EPILOG = """\
examples:
  inos node run --data-dir ~/.inos/a --listen /ip4/127.0.0.1/tcp/4001 --api 127.0.0.1:5050
  inos node run --data-dir ~/.inos/b --listen /ip4/127.0.0.1/tcp/4002 --api 127.0.0.1:5051 \\
                --bootstrap /ip4/127.0.0.1/tcp/4001/p2p/<peer id of a>
  INOS_LOG_FORMAT=json inos node run --config /etc/inos/node.toml --genesis genesis.json

The data dir holds the node's Ed25519 identity (identity.key, 0600), its API token (api.token,
0600) and a lock: one node per data dir. When the node is ready it prints one JSON line
{"event": "ready", "peer_id", "addresses", "api", ...} on stdout; logs go to stderr. SIGINT or
SIGTERM stops it cleanly (arena unlinked, worker processes stopped).

""" + config.PRECEDENCE_HELP


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def default_data_dir() -> Path:
    return Path(os.environ.get("INOS_DATA_DIR") or Path.home() / ".inos")


def cmd_node_run(args: argparse.Namespace) -> int:
    import trio

    from inos_node import logs
    from inos_node.daemon import run_node
    from inos_node.identity import DataDir
    from inos_node.net.host import quiet_libp2p_logs

    resolved = config.resolve(config.flag_values(args))
    cfg = resolved.daemon_config(
        test_corrupt_outputs=bool(os.environ.get("INOS_TEST_CORRUPT_OUTPUTS")),
        test_no_settle=bool(os.environ.get("INOS_TEST_NO_SETTLE")),
        test_hang=bool(os.environ.get("INOS_TEST_HANG")),
    )
    logs.setup_logging(resolved.values["log_format"], resolved.values["log_level"])
    data = DataDir(cfg.data_dir)
    if resolved.values["api_token"] is not None:
        _install_token(data.ensure().path, resolved.values["api_token"])
    logs.redact(data.token())  # the node reads (or creates) the same file in a moment
    if not args.verbose_libp2p:
        quiet_libp2p_logs()
    return trio.run(run_node, cfg)


def _install_token(data_dir: Path, token: str) -> None:
    """Make a configured api_token the node's: DATA_DIR/api.token, mode 0600, replaced atomically."""
    path = data_dir / "api.token"
    try:
        if path.read_text().strip() == token:
            return
    except FileNotFoundError:
        pass
    tmp = data_dir / ".api.token.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    os.replace(tmp, path)


def cmd_config_show(args: argparse.Namespace) -> int:
    resolved = config.resolve(config.flag_values(args))
    shown = resolved.shown()
    token_file = resolved.data_dir / "api.token"
    if shown["api_token"] is None and token_file.exists():
        shown["api_token"] = config.REDACTED
        resolved.sources["api_token"] = f"file {token_file}"
    if args.json:
        _out(json.dumps({"config_file": str(resolved.config_file) if resolved.config_file else None,
                         "values": shown, "sources": resolved.sources}))
        return 0
    _out(f"config file: {resolved.config_file or '(none)'}")
    for s in config.SETTINGS:
        value = shown[s.key]
        text = (",".join(value) or "-") if isinstance(value, list) else "-" if value is None else str(value)
        _out(f"{s.key:<18} {text:<44} {resolved.sources[s.key]}")
    return 0


def cmd_id(args: argparse.Namespace) -> int:
    from inos_node.identity import DataDir
    from inos_node.net.host import peer_id_of

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    identity = DataDir(data_dir).identity()
    peer_id = peer_id_of(identity)
    addresses = _running_addresses(data_dir, args.api)
    if addresses is None:
        values = config.resolve({"data_dir": str(data_dir)}).values
        addresses = [f"{a}/p2p/{peer_id}" for a in values["announce"] or values["listen"]]
    doc = {"peer_id": peer_id, "did": identity.did, "addresses": addresses}
    if args.json:
        _out(json.dumps(doc))
    else:
        _out(f"peer id   {peer_id}\ndid       {identity.did}")
        for a in addresses:
            _out(f"address   {a}")
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
    config.add_flags(p)
    p.add_argument("--verbose-libp2p", action="store_true", help="let py-libp2p's own logs through")
    p.set_defaults(fn=cmd_node_run)

    p = sub.add_parser("config", help="the effective node configuration (see `inos config show --help`)")
    csub = p.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    p = csub.add_parser("show", help="print the effective settings and where each came from",
                        description="Print the settings `inos node run` would use with the same flags, "
                                    "environment and config file, and the source of each (flag, env, "
                                    "file or default).  Secrets (the API token) are redacted.",
                        epilog=config.PRECEDENCE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_flags(p)
    p.add_argument("--json", action="store_true",
                   help='print {"config_file", "values": {key: value}, "sources": {key: source}}')
    p.set_defaults(fn=cmd_config_show)

    p = sub.add_parser("id", help="this node's peer id, DID and addresses (creates the identity if absent)")
    p.add_argument("--data-dir", help="default $INOS_DATA_DIR or ~/.inos")
    p.add_argument("--api", help="ask the running node at HOST:PORT for its live addresses")
    p.add_argument("--json", action="store_true", help='print {"peer_id", "did", "addresses"}')
    p.set_defaults(fn=cmd_id)
    logging.getLogger(__name__).debug("node commands registered")
