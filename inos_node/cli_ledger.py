"""``inos ledger ...``: the credits ledger of a running node (client commands over its API)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

__all__ = ["register"]

_EPILOG = """\
The ledger is replicated: every node holds every account's chain of signed blocks, so any node
answers for any DID.  Amounts are integers in the smallest credit unit.

examples:
  inos ledger balance --json                      this node's account
  inos ledger balance did:inos:3xK... --json      anyone's
  inos ledger transfer did:inos:3xK... 250
  inos ledger stake 1000                          bond credits: a worker's promise to be honest
  inos ledger supply --json                       minted == balances + escrow + staked
  inos ledger verify --json                       re-check every block from genesis; exit 0 if consistent
  inos ledger history --json
"""


def register(sub: Any) -> None:
    from inos_node import cli

    api = cli._api_parent()
    led = sub.add_parser(
        "ledger",
        help="balances, transfers, stake, supply and verification of the credits ledger",
        description="The credits ledger of the node at --api.",
        epilog=_EPILOG + cli._API_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lsub = led.add_subparsers(dest="ledger_command", metavar="COMMAND", required=True)

    p = lsub.add_parser("balance", parents=[api], help='{"did","balance","escrow","staked","frozen",...}')
    p.add_argument("did", nargs="?", help="an account (default: this node's)")
    p.set_defaults(fn=lambda a: _show(a, lambda c: c.balance(a.did), _balance_text))

    p = lsub.add_parser("history", parents=[api], help="an account's chain of blocks")
    p.add_argument("did", nargs="?", help="an account (default: this node's)")
    p.set_defaults(fn=lambda a: _show(a, lambda c: c.history(a.did), _history_text))

    p = lsub.add_parser("supply", parents=[api], help='{"minted","balances","escrow","staked",...}')
    p.set_defaults(fn=lambda a: _show(a, lambda c: c.supply(), _supply_text))

    p = lsub.add_parser(
        "verify", parents=[api], help="re-validate every block from genesis (exit 0 if consistent)"
    )
    p.set_defaults(fn=_verify)

    p = lsub.add_parser("transfer", parents=[api], help="send credits to a DID")
    p.add_argument("to", metavar="DID")
    p.add_argument("amount", type=int, metavar="AMOUNT")
    p.set_defaults(fn=lambda a: _post(a, "transfer", {"to": a.to, "amount": a.amount}))

    for action, text in (
        ("stake", "bond AMOUNT credits as stake (seized if you are caught cheating)"),
        ("unstake", "release AMOUNT credits of stake"),
    ):
        p = lsub.add_parser(action, parents=[api], help=text)
        p.add_argument("amount", type=int, metavar="AMOUNT")
        p.set_defaults(fn=lambda a, act=action: _post(a, act, {"amount": a.amount}))


def _show(args: argparse.Namespace, call: Any, text: Any) -> int:
    from inos_node import cli

    doc = cli._api_call(call, cli._client(args))
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        text(doc)
    return 0


def _post(args: argparse.Namespace, action: str, body: dict[str, Any]) -> int:
    from inos_node import cli

    client = cli._client(args)
    doc = cli._api_call(lambda: client.ledger_post(action, body))
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        b = doc.get("block", {})
        print(f"{action}: block {b.get('height')} ({b.get('hash', '')[:16]}) applied")
        _balance_text(doc)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from inos_node import cli

    doc = cli._api_call(lambda: cli._client(args).verify_ledger())
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(
            f"{'consistent' if doc['ok'] else 'INCONSISTENT'}: {doc['blocks']} blocks, state {doc['state_hash']}"
        )
        for problem in doc.get("problems", []):
            print(f"  {problem}")
    return 0 if doc.get("ok") else 1


def _balance_text(doc: dict[str, Any]) -> None:
    flags = " FROZEN" if doc.get("frozen") else ""
    print(
        f"{doc.get('did')}{flags}\n  balance {doc.get('balance')}   escrow {doc.get('escrow')}   "
        f"staked {doc.get('staked')}   height {doc.get('height')}"
    )


def _supply_text(doc: dict[str, Any]) -> None:
    print(
        f"minted {doc['minted']} = balances {doc['balances']} + escrow {doc['escrow']} + staked {doc['staked']}"
    )
    print(f"state  {doc.get('state_hash', '')}")


def _history_text(doc: dict[str, Any]) -> None:
    from inos_node import cli

    rows = []
    for b in doc.get("blocks", []):
        when = (
            time.strftime("%H:%M:%S", time.localtime(b["timestamp_ms"] / 1000))
            if b.get("timestamp_ms")
            else "-"
        )
        other = b.get("counterparty") or ",".join(p["did"][-8:] for p in b.get("payments", []))
        rows.append(
            [
                str(b["height"]),
                b["type"],
                str(b["amount"]),
                cli._cell(other),
                b.get("job") or "-",
                str(b["balance"]),
                when,
            ]
        )
    if not rows:
        print(f"{doc.get('did')}: no blocks yet")
        return
    cli._table(rows, ["HEIGHT", "TYPE", "AMOUNT", "COUNTERPARTY", "JOB", "BALANCE", "TIME"])
