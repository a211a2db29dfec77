"""The ledger's control-API routes (``/v1/ledger/...``), over the node's ``LedgerNode``.

A node started without ``--genesis`` runs the free dev network: every ledger route answers 404
with a JSON error saying so.  Refused blocks (not enough balance, frozen account, ...) are 409 with
the ledger's reason; malformed requests 400 naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from inos_node.errors import BlockRejected, LedgerError

__all__ = ["OPENAPI_PATHS", "routes"]

NO_LEDGER = "no ledger: this node runs the free dev network (start it with --genesis FILE)"


def _err(status: int, message: str, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status)


def block_json(block: Any) -> dict[str, Any]:
    from inos_node.economy.model import block_hash, did_of_account

    return {
        "hash": block_hash(block).hex(),
        "did": did_of_account(block.account),
        "height": block.height,
        "type": block.type.name.lower(),
        "amount": block.amount,
        "counterparty": did_of_account(block.counterparty) if len(block.counterparty) == 32 else "",
        "job": block.job,
        "timestamp_ms": block.timestamp_ms,
        "balance": block.balance,
        "payments": [{"did": did_of_account(p.account), "amount": p.amount} for p in block.payments],
    }


def routes(service: Any, read_body: Callable[[Request], Awaitable[bytes]]) -> list[Route]:
    def ledger() -> Any:
        node = service.ledger() if hasattr(service, "ledger") else None
        return node

    async def body_json(request: Request) -> dict[str, Any]:
        raw = await read_body(request)
        try:
            doc = json.loads(raw or b"{}")
        except ValueError:
            raise _Bad("the body is not JSON", "body") from None
        if not isinstance(doc, dict):
            raise _Bad("the body must be a JSON object", "body")
        return doc

    def amount_of(doc: dict[str, Any]) -> int:
        amount = doc.get("amount")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            raise _Bad(f"amount must be a positive integer, got {amount!r}", "amount")
        return amount

    def guarded(
        fn: Callable[[Request, Any], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            node = ledger()
            if node is None:
                return _err(404, NO_LEDGER)
            try:
                return await fn(request, node)
            except _Bad as exc:
                return _err(400, str(exc), exc.field)
            except BlockRejected as exc:
                return _err(409, str(exc))
            except LedgerError as exc:
                return _err(400, str(exc))

        return handler

    async def balance(request: Request, node: Any) -> Response:
        did = request.path_params.get("did") or node.did
        try:
            return JSONResponse(node.balance(did))
        except (LedgerError, ValueError) as exc:
            raise _Bad(f"not a DID: {did!r} ({exc})", "did") from None

    async def supply(request: Request, node: Any) -> Response:
        return JSONResponse({**node.supply(), "state_hash": node.state_hash()})

    async def verify(request: Request, node: Any) -> Response:
        return JSONResponse(await node.audit())

    async def history(request: Request, node: Any) -> Response:
        did = request.path_params.get("did") or node.did
        try:
            blocks = node.ledger.history(did)
        except (LedgerError, ValueError) as exc:
            raise _Bad(f"not a DID: {did!r} ({exc})", "did") from None
        return JSONResponse({"did": did, "blocks": [block_json(b) for b in blocks]})

    async def transfer(request: Request, node: Any) -> Response:
        doc = await body_json(request)
        to = doc.get("to")
        if not isinstance(to, str) or not to.startswith("did:inos:"):
            raise _Bad(f"to must be a did:inos:... string, got {to!r}", "to")
        try:
            block = await node.transfer(to, amount_of(doc))
        except ValueError as exc:
            raise _Bad(f"not a DID: {to!r} ({exc})", "to") from None
        return JSONResponse({"block": block_json(block), **node.balance()})

    async def stake(request: Request, node: Any) -> Response:
        block = await node.stake(amount_of(await body_json(request)))
        return JSONResponse({"block": block_json(block), **node.balance()})

    async def unstake(request: Request, node: Any) -> Response:
        block = await node.unstake(amount_of(await body_json(request)))
        return JSONResponse({"block": block_json(block), **node.balance()})

    return [
        Route("/v1/ledger/balance", guarded(balance), methods=["GET"]),
        Route("/v1/ledger/balance/{did}", guarded(balance), methods=["GET"]),
        Route("/v1/ledger/supply", guarded(supply), methods=["GET"]),
        Route("/v1/ledger/verify", guarded(verify), methods=["GET"]),
        Route("/v1/ledger/history", guarded(history), methods=["GET"]),
        Route("/v1/ledger/history/{did}", guarded(history), methods=["GET"]),
        Route("/v1/ledger/transfer", guarded(transfer), methods=["POST"]),
        Route("/v1/ledger/stake", guarded(stake), methods=["POST"]),
        Route("/v1/ledger/unstake", guarded(unstake), methods=["POST"]),
    ]


class _Bad(Exception):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def _op(
    op_id: str, summary: str, schema: dict[str, Any], *, body: bool = False, did: bool = False
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
            "400": {"description": "bad request (the field is named)"},
            "401": {"description": "missing or wrong bearer token"},
            "404": {"description": "this node has no ledger (free dev network)"},
        },
    }
    if did:
        doc["parameters"] = [{"name": "did", "in": "path", "required": True, "schema": {"type": "string"}}]
    if body:
        doc["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["amount"],
                        "properties": {"amount": {"type": "integer", "minimum": 1}, "to": {"type": "string"}},
                    }
                }
            },
        }
        doc["responses"]["409"] = {"description": "the ledger refused the block (reason given)"}
    return doc


_ACCOUNT = {
    "type": "object",
    "properties": {
        k: {"type": t}
        for k, t in (
            ("did", "string"),
            ("balance", "integer"),
            ("escrow", "integer"),
            ("staked", "integer"),
            ("frozen", "boolean"),
            ("height", "integer"),
        )
    },
}
OPENAPI_PATHS: dict[str, Any] = {
    "/v1/ledger/balance": {"get": _op("ledgerBalance", "This node's account", _ACCOUNT)},
    "/v1/ledger/balance/{did}": {"get": _op("ledgerBalanceOf", "An account's balance", _ACCOUNT, did=True)},
    "/v1/ledger/supply": {
        "get": _op("ledgerSupply", "minted = balances + escrow + staked; state hash", {"type": "object"})
    },
    "/v1/ledger/verify": {
        "get": _op(
            "ledgerVerify",
            "Re-validate every stored block from genesis",
            {"type": "object", "properties": {"ok": {"type": "boolean"}, "state_hash": {"type": "string"}}},
        )
    },
    "/v1/ledger/history": {"get": _op("ledgerHistory", "This node's chain", {"type": "object"})},
    "/v1/ledger/history/{did}": {
        "get": _op("ledgerHistoryOf", "An account's chain", {"type": "object"}, did=True)
    },
    "/v1/ledger/transfer": {"post": _op("ledgerTransfer", "Send credits to a DID", _ACCOUNT, body=True)},
    "/v1/ledger/stake": {"post": _op("ledgerStake", "Bond credits as stake", _ACCOUNT, body=True)},
    "/v1/ledger/unstake": {"post": _op("ledgerUnstake", "Release stake", _ACCOUNT, body=True)},
}
