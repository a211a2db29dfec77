"""``inos genesis create``: write the signed genesis file that defines a credits network
(registered by ``cli.py``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from inos_node.errors import GenesisError, LedgerError

__all__ = ["register"]

_EPILOG = """\
example:
  inos genesis create --out genesis.json \\
      --alloc $(inos id --data-dir a --json | jq -r .did)=1000000 \\
      --alloc $(inos id --data-dir b --json | jq -r .did)=1000000
  inos node run --data-dir a --genesis genesis.json ...     (every node of the network: the same file)

The file is signed by a fresh genesis key that is then thrown away, so nobody can mint later.
Its hash is the network id: nodes started with another genesis file are not peers. Amounts are
integers in the smallest credit unit. The protocol fee (--fee-bps, in 1/10000) of every
settlement goes to the treasury, which defaults to the genesis key's own account (nobody can
spend from it).
"""


def _alloc(item: str) -> tuple[str, int]:
    did, sep, amount = item.rpartition("=")
    if not sep or not did:
        raise GenesisError(f"--alloc expects DID=AMOUNT, got {item!r}", key="alloc")
    try:
        value = int(amount)
    except ValueError:
        raise GenesisError(f"--alloc {did}: amount {amount!r} is not an integer", key="alloc") from None
    if value <= 0:
        raise GenesisError(f"--alloc {did}: amount must be > 0, got {value}", key="alloc")
    return did, value


def cmd_genesis_create(args: argparse.Namespace) -> int:
    from inos_node.economy.genesis import create_genesis, write_genesis
    from inos_node.economy.model import account_of_did

    allocs = [_alloc(a) for a in args.alloc]
    for did, _ in allocs:
        try:
            account_of_did(did)
        except LedgerError as exc:
            raise GenesisError(f"--alloc: {exc}", key="alloc") from None
    if args.treasury is not None:
        try:
            account_of_did(args.treasury)
        except LedgerError as exc:
            raise GenesisError(f"--treasury: {exc}", key="treasury") from None
    if not 0 <= args.fee_bps <= 10_000:
        raise GenesisError(f"--fee-bps must be in [0, 10000], got {args.fee_bps}", key="fee_bps")
    if args.grace_s < 0:
        raise GenesisError(f"--grace-s must be >= 0, got {args.grace_s}", key="grace_s")
    doc, network_id = create_genesis(allocs, treasury=args.treasury, fee_bps=args.fee_bps, name=args.name,
                                     grace_ms=int(args.grace_s * 1000))
    path = write_genesis(args.out, doc, force=args.force)
    out: dict[str, Any] = {"network_id": network_id.hex(), "path": str(path), "name": doc["name"],
                           "minted": sum(a for _, a in allocs), "accounts": len(allocs),
                           "treasury": doc["treasury"], "fee_bps": doc["fee_bps"],
                           "grace_ms": doc["grace_ms"]}
    if args.json:
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        sys.stdout.write(f"wrote {path}: network {out['network_id']}, {out['minted']} credits to "
                         f"{len(allocs)} account(s), treasury {out['treasury']}\n")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("genesis", help="create the genesis file of a credits network")
    gsub = p.add_subparsers(dest="genesis_command", metavar="COMMAND", required=True)
    c = gsub.add_parser(
        "create", help="write a signed genesis file (initial allocations, treasury, fee)",
        description="Write the genesis file that defines a credits network: who starts with how many "
                    "credits, the treasury account, the protocol fee and the settlement grace period.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--out", required=True, metavar="FILE", help="where to write the file (mode 0644)")
    c.add_argument("--alloc", action="append", required=True, metavar="DID=AMOUNT",
                   help="an initial allocation (repeat for more); DID as `inos id --json` prints it")
    c.add_argument("--treasury", metavar="DID", help="the account fees and slashed stake go to "
                                                      "(default: the genesis key's account)")
    c.add_argument("--fee-bps", type=int, default=500, metavar="N",
                   help="protocol fee per settlement in basis points, 0..10000 (default 500 = 5%%)")
    c.add_argument("--grace-s", type=float, default=30.0, metavar="S",
                   help="seconds past a job's deadline before its escrow may be refunded (default 30)")
    c.add_argument("--name", default="inos", help="a human name for the network (default inos)")
    c.add_argument("--force", action="store_true", help="overwrite an existing file")
    c.add_argument("--json", action="store_true",
                   help='print {"network_id", "path", "minted", "treasury", ...} as JSON')
    c.set_defaults(fn=cmd_genesis_create)
