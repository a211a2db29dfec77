"""``inos testnet up|status|kill|restart|logs|down``: a local testnet of node processes (registered by
``cli.py``; the work is in ``inos_node.testnet``).  Progress goes to stderr, ``--json`` to stdout."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from inos_node import testnet

__all__ = ["register"]

_EPILOG = """\
examples:
  inos testnet up --nodes 3                 node1..node3 in ./.inos-testnet, healthy and connected
  inos testnet status                       a table (or --json: a list of nodes)
  inos submit compute.blake3 --input README.md --api 127.0.0.1:5101 \\
       --data-dir .inos-testnet/node1 --peer <node2's peer id>
  inos testnet kill node3 ; inos testnet restart node3
  inos testnet logs node2 --follow
  inos testnet down                         stops everything; DIR keeps identities and logs

ports: nodeK listens for libp2p on 127.0.0.1:P+K-1 and serves its API on 127.0.0.1:P+1000+K-1
(P = --base-port, default 4101: node1 is 4101 and 5101).  Each node's data dir is DIR/nodeK, its
log DIR/nodeK/node.log; DIR/testnet.json records the testnet.  A genesis (DIR/genesis.json)
allocates --alloc credits to every node, unless --no-genesis (the free dev network).
"""


def _dir(args: argparse.Namespace) -> Path:
    return Path(args.dir or os.environ.get("INOS_TESTNET_DIR") or testnet.DEFAULT_DIR)


def cmd_up(args: argparse.Namespace) -> int:
    testnet.up(_dir(args), args.nodes, base_port=args.base_port, alloc=args.alloc,
                       genesis=not args.no_genesis, arena_mb=args.arena_mb, timeout_s=args.timeout)
    if args.json:
        _out(json.dumps(testnet.status(_dir(args))))
    return 0


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _cell(v: Any) -> str:
    return "-" if v is None else ("yes" if v else "no") if isinstance(v, bool) else str(v)


def cmd_status(args: argparse.Namespace) -> int:
    nodes = testnet.status(_dir(args))
    if args.json:
        _out(json.dumps(nodes))
        return 0
    _out(f"{'NAME':<8} {'PID':>7} {'HEALTHY':<7} {'PEERS':>5} {'JOBS':>5} {'BALANCE':>12}  {'API':<16} PEER")
    for n in nodes:
        _out(f"{n['name']:<8} {_cell(n['pid']):>7} {_cell(n['healthy']):<7} {_cell(n['peers']):>5} "
              f"{_cell(n['jobs']):>5} {_cell(n['balance']):>12}  {n['api']:<16} {_cell(n['peer_id'])}")
    return 0 if all(n["healthy"] for n in nodes) else 1


def cmd_kill(args: argparse.Namespace) -> int:
    pid = testnet.kill(_dir(args), args.node)
    sys.stderr.write(f"testnet  {args.node} (pid {pid}) killed with SIGKILL\n")
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    testnet.restart(_dir(args), args.node, timeout_s=args.timeout)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    state_nodes = {n["name"]: n for n in testnet.nodes(_dir(args))}
    if args.node not in state_nodes:
        raise testnet.TestnetError(f"no node {args.node!r} (nodes: {', '.join(state_nodes)})")
    path = Path(state_nodes[args.node]["data_dir"]) / "node.log"
    _out(testnet.log_tail(path, args.n))
    if not args.follow:
        return 0
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        while True:  # like tail -f: the log is another process's file, polled until Ctrl-C
            chunk = f.read()
            if chunk:
                sys.stdout.write(chunk.decode("utf-8", "replace"))
                sys.stdout.flush()
            else:
                time.sleep(0.2)


def cmd_down(args: argparse.Namespace) -> int:
    summary = testnet.down(_dir(args), timeout_s=args.timeout)
    if args.json:
        _out(json.dumps(summary))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("testnet", help="a local testnet of node processes (see `inos testnet --help`)",
                       description="Run a testnet of N local node processes: identities, a genesis "
                                   "allocation, bootstrap wiring and one log per node.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    tsub = p.add_subparsers(dest="testnet_command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", metavar="DIR",
                        help=f"the testnet's folder (default $INOS_TESTNET_DIR or ./{testnet.DEFAULT_DIR})")

    c = tsub.add_parser("up", parents=[common], epilog=_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        help="create and start node1..nodeN; wait until all are healthy and connected")
    c.add_argument("--nodes", type=int, default=3, metavar="N", help="how many nodes (default 3)")
    c.add_argument("--base-port", type=int, default=testnet.DEFAULT_BASE_PORT, metavar="P",
                   help="libp2p ports P.., API ports P+1000.. (default 4101)")
    c.add_argument("--alloc", type=int, default=testnet.DEFAULT_ALLOC, metavar="AMOUNT",
                   help="credits the genesis gives each node (default 1000000)")
    c.add_argument("--no-genesis", action="store_true", help="no genesis: the free dev network, no ledger")
    c.add_argument("--arena-mb", type=int, default=16, help="each node's arena in MiB (default 16)")
    c.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="give up (and stop what was started) after S seconds (default 120)")
    c.add_argument("--json", action="store_true", help="print the status list on stdout when up")
    c.set_defaults(fn=cmd_up)

    c = tsub.add_parser("status", parents=[common], help="each node's pid, health, peers, jobs and balance")
    c.add_argument("--json", action="store_true", help='a list of {"name", "pid", "peer_id", "addresses", '
                   '"api", "data_dir", "healthy", "peers", "balance", "jobs"}')
    c.set_defaults(fn=cmd_status)

    c = tsub.add_parser("kill", parents=[common], help="SIGKILL a node (chaos)")
    c.add_argument("node", metavar="NODE", help="e.g. node3")
    c.set_defaults(fn=cmd_kill)

    c = tsub.add_parser("restart", parents=[common], help="start a node again (stopping it first if it runs)")
    c.add_argument("node", metavar="NODE")
    c.add_argument("--timeout", type=float, default=60.0, metavar="S", help="wait for health this long")
    c.set_defaults(fn=cmd_restart)

    c = tsub.add_parser("logs", parents=[common], help="a node's log (DIR/NODE/node.log)")
    c.add_argument("node", metavar="NODE")
    c.add_argument("-n", type=int, default=50, metavar="N", help="how many last lines (default 50)")
    c.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until Ctrl-C")
    c.set_defaults(fn=cmd_logs)

    c = tsub.add_parser("down", parents=[common], help="stop every node; leave no process or shared memory")
    c.add_argument("--timeout", type=float, default=15.0, metavar="S",
                   help="SIGKILL nodes still up after S s (default 15)")
    c.add_argument("--json", action="store_true", help="print what was stopped")
    c.set_defaults(fn=cmd_down)
