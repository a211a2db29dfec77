"""The ``inos`` command line: parse, build a config, call.  No logic lives here.

Exit codes (shared by every command that runs a capsule):
  0 success · 1 the capsule failed · 2 bad usage or invalid params · 3 budget or fuel exhausted
  4 deadline passed · 5 no capacity · 6 cancelled
  7 (client commands: submit, peers, jobs) could not talk to the node: none answering at --api,
    or the API token was missing or refused
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from inos_node.errors import InosError

__all__ = ["main"]

EXIT_CODES = {
    "success": 0,
    "failed": 1,
    "invalidParams": 2,
    "budgetExceeded": 3,
    "outOfFuel": 3,
    "timeout": 4,
    "capacityExceeded": 5,
    "cancelled": 6,
}
EXIT_NO_NODE = 7

_DESCRIPTION = """\
inos: a node of INOS, the Internet-Native Operating System.

Units share one memory arena and react to epoch counters; every job goes through one
library proxy, compute_execute(library, method, input, params).

examples:
  inos units                                         the capsule catalog
  echo -n hello | inos exec compute.blake3 --input - | xxd
  inos exec compute.brotli_compress --input big.txt --param quality=9 --out big.br
  inos exec wasm.run --module tests/capsules/echo.wat --input - --json
  inos demo                                          a local node: boids + a few capsules
  inos bench local --json                            the benchmarks, each beside its baseline
  inos bench deploy --quick                          node start, idle memory and testnet up time

a mesh that pays for capsules:
  inos testnet up --nodes 3                          local node processes with one genesis
  inos node run --genesis genesis.json ...           one node (see `inos node run --help`)
  inos genesis create --out g.json --alloc DID=1000  a credits network of your own

talking to a running node (its control API; see `inos submit --help`):
  inos submit compute.blake3 --input file.bin | xxd   run a capsule on the node or the mesh
  inos peers · inos jobs · inos token
  inos ledger balance --json · inos ledger verify    the replicated credits ledger
"""


def _parse_params(items: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _Usage(f"--param expects KEY=VALUE, got {item!r}")
        params[key.strip()] = value
    return params


class _Usage(Exception):
    pass


def _read_input(path: str | None) -> bytes:
    if path is None:
        return b""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise _Usage(f"cannot read --input {path}: {exc.strerror}") from exc


def _read_module(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise _Usage(f"cannot read --module {path}: {exc.strerror}") from exc


def _result_json(result: Any) -> dict[str, Any]:
    data = bytes(result.output) if isinstance(result.output, bytes | bytearray | memoryview) else b""
    out: dict[str, Any] = {
        "job_id": result.job_id,
        "status": result.status.value,
        "output_b64": base64.b64encode(data).decode("ascii"),
        "output_len": len(data),
        "cost": result.cost,
        "metrics": result.metrics.as_dict(),
        "executor": result.executor,
    }
    if result.error:
        out["error"] = result.error
    return out


def cmd_exec(args: argparse.Namespace) -> int:
    import trio

    from inos_node.local import run_capsule

    name = args.capsule
    if "." not in name:
        raise _Usage(f"capsule must be LIBRARY.METHOD (see `inos units`), got {name!r}")
    params = _parse_params(args.param)
    data = _read_input(args.input)
    module = _read_module(args.module)
    result = trio.run(run_capsule, name, data, params, module, args.timeout_ms)
    if args.json:
        print(json.dumps(_result_json(result)))
    if not result.ok:
        print(f"inos: {name}: {result.status.value}: {result.error}", file=sys.stderr)
        return EXIT_CODES.get(result.status.value, 1)
    output = bytes(result.output) if isinstance(result.output, bytes | bytearray | memoryview) else b""
    if args.out:
        Path(args.out).write_bytes(output)
    elif not args.json:
        sys.stdout.buffer.write(output)
        sys.stdout.buffer.flush()
    return 0


def cmd_units(args: argparse.Namespace) -> int:
    if args.arena:
        from inos_node.local import live_registry

        cat = live_registry(args.arena, args.arena_dir)
    else:
        from inos_node.local import catalog

        cat = catalog()
    if args.json:
        print(json.dumps(cat, indent=2))
        return 0
    for lib in cat:
        state = f" [{lib['state']}, {lib['restarts']} restarts]" if "state" in lib else ""
        print(f"{lib['library']}{state}: {lib.get('summary', '')}")
        for m in lib["methods"]:
            params = ", ".join(
                f"{p['name']}={p['default']!r}" if "default" in p else f"{p['name']} (required)" for p in m["params"]
            )
            flags = f"[{m['executor']}, cost per {m['cost']}{', deterministic' if m['deterministic'] else ''}]"
            print(f"  {m['name']:<28} {flags}")
            if m["summary"]:
                print(f"      {m['summary']}")
            if params:
                print(f"      params: {params}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from inos_node.bench.local import run_local

    return _print_report(run_local(quick=args.quick, with_ray=args.with_ray, progress=not args.json), args.json)


def _print_report(report: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:36} {value}")
    return 0


def cmd_bench_mesh(args: argparse.Namespace) -> int:
    from inos_node.bench.mesh import run_mesh

    return _print_report(run_mesh(quick=args.quick, gossip_30=args.gossip_30, progress=not args.json,
                                  escrow_credit=args.escrow_credit), args.json)


def cmd_bench_ledger(args: argparse.Namespace) -> int:
    from inos_node.bench.ledger import run_ledger

    return _print_report(run_ledger(quick=args.quick, progress=not args.json), args.json)


def cmd_bench_deploy(args: argparse.Namespace) -> int:
    from inos_node.bench.deploy import run_deploy

    return _print_report(run_deploy(quick=args.quick, nodes=args.nodes, progress=not args.json), args.json)


def cmd_demo(args: argparse.Namespace) -> int:
    import trio

    from inos_node.local import demo

    return trio.run(demo, args.boids, args.steps)


# ---------------------------------------------------------------------- client commands
_API_HELP = """\
where the node is and how to prove you may use it:
  --api          HOST:PORT of the node's control API   (else $INOS_API, else 127.0.0.1:5050)
  --token        the API token                           (else $INOS_TOKEN, else DATA_DIR/api.token)
  --data-dir     the node's data dir, to read its token (else $INOS_DATA_DIR, else ~/.inos)
`inos token --data-dir DIR` prints a node's token.
"""


def _api_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("node connection")
    g.add_argument("--api", metavar="HOST:PORT",
                   help="the node's control API (default: $INOS_API or 127.0.0.1:5050)")
    g.add_argument("--token", metavar="TOKEN",
                   help="the API token (default: $INOS_TOKEN, else read from the data dir)")
    g.add_argument("--data-dir", metavar="DIR",
                   help="read the token from DIR/api.token (default: $INOS_DATA_DIR or ~/.inos)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


class _NoNode(Exception):
    pass


def _client(args: argparse.Namespace) -> Any:
    from inos_node.client import Client, resolve_api, resolve_token
    from inos_node.errors import ConfigError

    try:
        return Client(resolve_api(args.api), resolve_token(args.token, args.data_dir))
    except ConfigError as exc:
        raise _NoNode(str(exc)) from exc


def _api_call(fn: Any, *a: Any) -> Any:
    """Call the client; map its errors onto exit codes (7: no node / token, 2: refused as invalid)."""
    from inos_node.client import ApiError

    try:
        return fn(*a)
    except ApiError as exc:
        if exc.status is None or exc.status == 401:
            raise _NoNode(str(exc)) from exc
        if exc.status in (400, 413, 415):
            raise _Usage(str(exc)) from exc
        raise


def cmd_submit(args: argparse.Namespace) -> int:
    from inos_node.api.service import SubmitRequest
    from inos_node.errors import InvalidParams

    if "." not in args.capsule:
        raise _Usage(f"capsule must be LIBRARY.METHOD (see `inos units`), got {args.capsule!r}")
    placement = ("local" if args.local else "remote" if args.remote
                 else f"peer:{args.peer}" if args.peer else "auto")
    try:
        req = SubmitRequest(
            capsule=args.capsule,
            input=_read_input(args.input),
            params=_parse_params(args.param),
            module=_read_module(args.module),
            placement=placement,
            replicas=args.replicas,
            budget=args.budget,
            timeout_s=args.timeout,
            prefer=args.prefer,
        )
    except InvalidParams as exc:
        raise _Usage(str(exc)) from exc
    client = _client(args)
    if sys.stderr.isatty() or os.environ.get("INOS_PROGRESS") == "1":
        client.progress = _upload_progress
    record = _api_call(client.run, req)
    output = record.output or b""
    if args.json:
        doc = {
            "job_id": record.job_id,
            "status": record.status,
            "output_b64": base64.b64encode(output).decode("ascii"),
            "output_len": record.output_len or len(output),
            "executor": record.executor,
            "cost": record.cost,
            "receipt": record.receipt,
            "replicas": list(record.replicas),
            "metrics": dict(record.metrics),
            "settlement": record.settlement,
        }
        if record.error:
            doc["error"] = record.error
        print(json.dumps(doc))
    if not record.ok:
        print(f"inos: {args.capsule}: {record.status}: {record.error}", file=sys.stderr)
        return EXIT_CODES.get(record.status, 1)
    if args.out:
        Path(args.out).write_bytes(output)
    elif not args.json:
        sys.stdout.buffer.write(output)
        sys.stdout.buffer.flush()
    return 0


def _upload_progress(sent: int, total: int) -> None:
    """One line on stderr, redrawn: how much of a large upload has gone to the node."""
    mib = 1024 * 1024
    width = 30
    done = int(width * sent / total)
    end = "\n" if sent >= total else ""
    print(f"\rinos: uploading [{'#' * done}{'.' * (width - done)}] {sent / mib:.0f}/{total / mib:.0f} MiB",
          end=end, file=sys.stderr, flush=True)


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) if value else "-"
    return str(value)


def cmd_peers(args: argparse.Namespace) -> int:
    peers = _api_call(_client(args).peers)
    if args.json:
        print(json.dumps(peers, indent=2))
        return 0
    if not peers:
        print("no peers known yet (is the node connected to the mesh? see `inos node run --help`)")
        return 0
    rows = []
    for p in peers:
        methods = p.get("methods") or []
        addrs = p.get("addresses") or []
        rows.append([_cell(p.get("peer_id")), _cell(p.get("name")), _cell(p.get("rtt_ms")),
                     _cell(p.get("load")), _cell(p.get("reputation")), str(len(methods)),
                     _cell(addrs[0] if addrs else None)])
    _table(rows, ["PEER ID", "NAME", "RTT MS", "LOAD", "REPUTATION", "METHODS", "ADDRESS"])
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    import time

    records = _api_call(_client(args).jobs, args.limit)
    if args.json:
        print(json.dumps([r.to_json(include_output=False) for r in records], indent=2))
        return 0
    if not records:
        print("no jobs yet (run one with `inos submit`)")
        return 0
    now_ms = time.time() * 1000
    rows = []
    for r in records:
        age_s = max(0.0, (now_ms - r.submitted_ms) / 1000) if r.submitted_ms else None
        age = "-" if age_s is None else f"{age_s:.0f}s" if age_s < 120 else f"{age_s / 60:.0f}m"
        rows.append([r.job_id, r.capsule, r.status, _cell(r.executor), str(r.cost), str(r.output_len), age])
    _table(rows, ["JOB ID", "CAPSULE", "STATUS", "EXECUTOR", "COST", "BYTES", "AGE"])
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from inos_node.client import default_data_dir
    from inos_node.identity import DataDir

    print(DataDir(args.data_dir or default_data_dir()).token())
    return 0


def _add_client_commands(sub: Any) -> None:
    api = _api_parent()
    p = sub.add_parser(
        "submit", parents=[api],
        help="run a capsule on a running node (which may place it on the mesh)",
        description="Submit one capsule job to a running node's control API and wait for the result; "
                    "raw output goes to stdout or --out.  Unlike `inos exec` (in-process), the node "
                    "decides where the job runs: here, on another peer, or on several (--replicas) to "
                    "compare outputs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  echo -n hello | inos submit compute.blake3 --input - | xxd\n"
               "  inos submit compute.sha256 --input big.iso --remote --prefer cheapest --budget 10 --json\n"
               "  inos submit wasm.run --module tests/capsules/echo.wat --input - --replicas 3\n"
               "  inos submit compute.blake3 --input f --peer 12D3KooW... --api 10.0.0.5:5050 --token $T\n\n"
               + _API_HELP + "\n"
               "exit codes: 0 ok, 1 failed, 2 invalid params/usage, 3 out of fuel/budget, 4 timeout,\n"
               "            5 no capacity, 6 cancelled, 7 no node answering or token refused",
    )
    p.add_argument("capsule", metavar="LIBRARY.METHOD", help="e.g. compute.blake3 (see `inos units`)")
    p.add_argument("--input", metavar="PATH|-",
                   help="input bytes from a file, or - for stdin (default: empty)")
    p.add_argument("--param", metavar="KEY=VALUE", action="append", default=[],
                   help="a capsule parameter; repeat for more (values are parsed by the unit's schema)")
    p.add_argument("--module", metavar="PATH", help="a .wasm or .wat module for wasm.run")
    p.add_argument("--out", metavar="PATH", help="write the raw output here instead of stdout")
    where = p.add_argument_group("placement (default: the node decides)").add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="run on this node only")
    where.add_argument("--remote", action="store_true", help="run on another peer, never here")
    where.add_argument("--peer", metavar="PEER_ID", help="run on this peer (see `inos peers`)")
    p.add_argument("--replicas", type=int, default=1, metavar="N",
                   help="run on N executors and compare their outputs (default 1)")
    p.add_argument("--budget", type=int, default=0, metavar="N",
                   help="most the job may cost, in the smallest credit unit (default 0: no limit)")
    p.add_argument("--timeout", type=float, metavar="S", help="deadline in seconds (default: the node's)")
    p.add_argument("--prefer", choices=["local", "remote", "fastest", "cheapest"],
                   help="how the node picks an executor when it decides")
    p.set_defaults(fn=cmd_submit)

    p = sub.add_parser("peers", parents=[api], help="the peers a running node knows",
                       description="List the peers the node has discovered: id, name, round-trip time, load, "
                                   "price, how many methods they serve, an address.",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_API_HELP)
    p.set_defaults(fn=cmd_peers)

    p = sub.add_parser("jobs", parents=[api], help="recent jobs of a running node",
                       description="List the node's recent jobs, newest first (outputs: "
                                   "`inos submit ... --out`, or GET /v1/jobs/ID/output).",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_API_HELP)
    p.add_argument("--limit", type=int, default=20, metavar="N", help="how many (default 20, at most 1000)")
    p.set_defaults(fn=cmd_jobs)

    p = sub.add_parser("token", help="print a node's API token (creating it if absent)",
                       description="Print the control API token of the node whose data dir this is, creating "
                                   "DIR/api.token (mode 0600) if it does not exist yet.  Give it to a client "
                                   "with --token or INOS_TOKEN.",
                       epilog="example: INOS_TOKEN=$(inos token --data-dir /srv/inos) inos jobs")
    p.add_argument("--data-dir", metavar="DIR",
                   help="the node's data dir (default: $INOS_DATA_DIR or ~/.inos)")
    p.set_defaults(fn=cmd_token)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inos", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log-level", default=os.environ.get("INOS_LOG_LEVEL", "warning"),
                        choices=["debug", "info", "warning", "error"], help="log verbosity (default: warning)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "exec",
        help="run one capsule in-process (no node needed)",
        description="Run one capsule through the engine in this process; raw output goes to stdout or --out.",
        epilog="exit codes: 0 ok, 1 failed, 2 invalid params/usage, 3 out of fuel/budget, 4 timeout",
    )
    p.add_argument("capsule", metavar="LIBRARY.METHOD", help="e.g. compute.blake3 (see `inos units`)")
    p.add_argument("--input", metavar="PATH|-", help="input bytes from a file, or - for stdin (default: empty)")
    p.add_argument("--param", metavar="KEY=VALUE", action="append", default=[],
                   help="a capsule parameter; repeat for more (values are parsed by the unit's schema)")
    p.add_argument("--module", metavar="PATH", help="a .wasm or .wat module for wasm.run")
    p.add_argument("--out", metavar="PATH", help="write the raw output here instead of stdout")
    p.add_argument("--json", action="store_true",
                   help='print {"status", "output_b64", "output_len", "cost", "metrics"} instead of raw bytes')
    p.add_argument("--timeout-ms", type=int, default=0, help="wall-clock deadline in ms (default: the engine's 60 s)")
    p.set_defaults(fn=cmd_exec)

    p = sub.add_parser("units", help="list the capsule catalog",
                       description="List libraries, methods and params: this installation's catalog, or with "
                                   "--arena the registry a running node publishes in its arena (with unit state "
                                   "and restart counts).")
    p.add_argument("--json", action="store_true", help="machine-readable catalog")
    p.add_argument("--arena", metavar="NAME", help="read the live registry from this node arena (see /dev/shm)")
    p.add_argument("--arena-dir", default="/dev/shm", help="where the arena file lives (default /dev/shm)")
    p.set_defaults(fn=cmd_units)

    p = sub.add_parser("bench", help="benchmarks, each beside a baseline measured in the same run")
    bsub = p.add_subparsers(dest="suite", metavar="SUITE", required=True)
    b = bsub.add_parser("local", help="engine, arena, epochs, WASM and boids on this machine")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run, noisier)")
    b.add_argument("--with-ray", action="store_true",
                   help="also measure Ray's trivial task round trip (needs the bench extra; runs Ray in a "
                        "loopback-only network namespace)")
    b.set_defaults(fn=cmd_bench)
    b = bsub.add_parser("mesh", help="remote capsules, blobs, connects and gossip beside raw py-libp2p baselines")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run, noisier)")
    b.add_argument("--gossip-30", action="store_true", help="also measure gossip across 30 node processes")
    b.add_argument("--escrow-credit", type=int, default=None, metavar="N",
                   help="the paid worker's --escrow-credit (default: the node's default, 100; 0 measures a "
                        "worker that checks every lock before it runs the job)")
    b.set_defaults(fn=cmd_bench_mesh)
    b = bsub.add_parser("ledger", help="ledger apply rate, durable appends and settlement CPU beside raw "
                                       "ed25519 and sqlite baselines")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run, noisier)")
    b.set_defaults(fn=cmd_bench_ledger)
    b = bsub.add_parser(
        "deploy", help="node start to API ready, idle memory per node and testnet up time beside python "
                       "start, import and RSS baselines",
        description="Start a node on a fresh data dir 5 times (3 with --quick) and time each from spawn to "
                    "the first 200 from its /v1/health, beside spawning `python -c pass` and importing the "
                    "node; then bring up a local testnet (`inos testnet up`, in a temp dir, on free ports "
                    "below the kernel's ephemeral port range), measure each idle node's RSS with its worker "
                    "processes, take it down and check that no process or /dev/shm arena is left. Keys are documented in "
                    "inos_node/bench/deploy.py. Targets: start <= 1500 ms, <= 150 MB per node, "
                    "10 nodes up in <= 30 s.")
    b.add_argument("--json", action="store_true", help="print one JSON object (no progress on stderr)")
    b.add_argument("--quick", action="store_true",
                   help="3 node starts and a 3-node testnet (a smoke run, noisier)")
    b.add_argument("--nodes", type=int, metavar="N",
                   help="testnet size, 1 to 100 (default 10, or 3 with --quick)")
    b.set_defaults(fn=cmd_bench_deploy)

    p = sub.add_parser("demo", help="a local node: the boids showcase and a few capsules, with live epochs")
    p.add_argument("--boids", type=int, default=10_000, help="flock size (default 10000)")
    p.add_argument("--steps", type=int, default=200, help="simulation steps (default 200)")
    p.set_defaults(fn=cmd_demo)

    _add_client_commands(sub)
    from inos_node import cli_economy, cli_ledger, cli_node, cli_testnet

    cli_node.register(sub)
    cli_economy.register(sub)
    cli_ledger.register(sub)
    cli_testnet.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    try:
        return int(args.fn(args))
    except _Usage as exc:
        print(f"inos: {exc}", file=sys.stderr)
        return 2
    except _NoNode as exc:
        print(f"inos: {exc}", file=sys.stderr)
        return EXIT_NO_NODE
    except InosError as exc:
        print(f"inos: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
