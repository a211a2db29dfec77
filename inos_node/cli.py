"""The ``inos`` command line: parse, build a config, call.  No logic lives here.

Exit codes (shared by every command that runs a capsule):
  0 success · 1 the capsule failed · 2 bad usage or invalid params · 3 budget or fuel exhausted
  4 deadline passed · 5 no capacity · 6 cancelled
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

    report = run_local(quick=args.quick, with_ray=args.with_ray, progress=not args.json)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:36} {value}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import trio

    from inos_node.local import demo

    return trio.run(demo, args.boids, args.steps)


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

    p = sub.add_parser("demo", help="a local node: the boids showcase and a few capsules, with live epochs")
    p.add_argument("--boids", type=int, default=10_000, help="flock size (default 10000)")
    p.add_argument("--steps", type=int, default=200, help="simulation steps (default 200)")
    p.set_defaults(fn=cmd_demo)
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
    except InosError as exc:
        print(f"inos: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
