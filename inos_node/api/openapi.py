"""The OpenAPI 3.1 description of the control API, written by hand.

``tests/component/test_api.py`` checks that every route of ``make_app`` appears here with the same
methods, and nothing else does; edit both together.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = _json(_ref("Error"), "An error; `field` names the request field at fault, when one is.")
_COMMON = {"401": _json(_ref("Error"), "Missing or wrong bearer token.")}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
    },
    "SubmitRequest": {
        "type": "object",
        "required": ["capsule"],
        "additionalProperties": False,
        "properties": {
            "capsule": {
                "type": "string",
                "description": "LIBRARY.METHOD, e.g. compute.blake3",
                "examples": ["compute.blake3"],
            },
            "input_b64": {"type": "string", "contentEncoding": "base64", "description": "input bytes"},
            "input_digest": {
                "type": "string",
                "pattern": "^[0-9a-fA-F]{64}$",
                "description": "blake3 digest of content the node can fetch (instead of input_b64)",
            },
            "params": {"type": "object", "description": "capsule parameters (see GET /v1/units)"},
            "module_b64": {
                "type": "string",
                "contentEncoding": "base64",
                "description": "WASM/WAT module for wasm.run",
            },
            "placement": {"type": "string", "pattern": "^(auto|local|remote|peer:.+)$", "default": "auto"},
            "replicas": {"type": "integer", "minimum": 1, "maximum": 16, "default": 1},
            "budget": {
                "type": "integer",
                "minimum": 0,
                "default": 0,
                "description": "most the job may cost, in the smallest credit unit; 0 = no limit",
            },
            "timeout_s": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 86400},
            "prefer": {"type": ["string", "null"], "enum": ["local", "remote", "fastest", "cheapest", None]},
            "wait": {
                "type": "boolean",
                "default": False,
                "description": "answer the finished JobRecord instead of 202 + job id",
            },
        },
    },
    "Accepted": {
        "type": "object",
        "required": ["job_id", "status"],
        "properties": {
            "job_id": {"type": "string"},
            "status": {"const": "queued"},
            "href": {"type": "string"},
        },
    },
    "JobRecord": {
        "type": "object",
        "required": ["job_id", "capsule", "status"],
        "properties": {
            "job_id": {"type": "string"},
            "capsule": {"type": "string"},
            "status": {
                "type": "string",
                "enum": [
                    "queued",
                    "running",
                    "success",
                    "failed",
                    "invalidParams",
                    "budgetExceeded",
                    "timeout",
                    "outOfFuel",
                    "capacityExceeded",
                    "cancelled",
                ],
            },
            "output_b64": {
                "type": ["string", "null"],
                "contentEncoding": "base64",
                "description": "absent in listings; null until there is output",
            },
            "output_len": {"type": "integer"},
            "executor": {"type": "string", "description": 'peer id of the executor, or "local"'},
            "cost": {"type": "integer"},
            "metrics": {"type": "object", "additionalProperties": {"type": "integer"}},
            "receipt": {"type": ["object", "null"], "description": "the executor's signed receipt"},
            "replicas": {"type": "array", "items": {"type": "object"}},
            "error": {"type": "string"},
            "submitted_ms": {"type": "integer"},
            "finished_ms": {"type": ["integer", "null"]},
            "escrow": {"type": "integer", "description": "credits locked in escrow for the job (0: none)"},
            "settlement": {"type": ["object", "null"],
                           "description": "paid (to workers), fee (to the treasury), refunded, escrow, block"},
        },
    },
    "Event": {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "examples": ["subscribed", "submitted", "started", "finished"]},
            "job_id": {"type": "string"},
        },
    },
}

_PATHS: dict[str, Any] = {
    "/v1/jobs": {
        "post": {
            "operationId": "submitJob",
            "summary": "Submit a capsule job",
            "description": (
                "JSON body (SubmitRequest), or a Cap'n Proto `JobRequest` (schemas/compute/v1/capsule.capnp) "
                "with Content-Type application/x-capnp and `wait`, `placement`, `prefer` as query "
                "parameters; "
                "its jobId and priority are ignored. Bodies over the node's limit (default 128 MiB) get 413."
            ),
            "parameters": [
                {
                    "name": n,
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "only with application/x-capnp",
                }
                for n in ("wait", "placement", "prefer")
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": _ref("SubmitRequest")},
                    "application/x-capnp": {
                        "schema": {"type": "string", "contentMediaType": "application/x-capnp"}
                    },
                },
            },
            "responses": {
                "200": _json(_ref("JobRecord"), "wait=true: the finished job"),
                "202": _json(_ref("Accepted"), "accepted; poll GET /v1/jobs/{job_id} or watch /v1/events"),
                "400": _ERROR,
                "413": _ERROR,
                "415": _ERROR,
                "503": _ERROR,
                **_COMMON,
            },
        },
        "get": {
            "operationId": "listJobs",
            "summary": "Recent jobs, newest first (without output)",
            "parameters": [
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                }
            ],
            "responses": {
                "200": _json(
                    {"type": "object", "properties": {"jobs": {"type": "array", "items": _ref("JobRecord")}}},
                    "the jobs",
                ),
                "400": _ERROR,
                **_COMMON,
            },
        },
    },
    "/v1/jobs/{job_id}": {
        "get": {
            "operationId": "getJob",
            "summary": "One job, with its output as base64",
            "parameters": [_JOB_ID],
            "responses": {"200": _json(_ref("JobRecord"), "the job"), "404": _ERROR, **_COMMON},
        },
    },
    "/v1/jobs/{job_id}/output": {
        "get": {
            "operationId": "getJobOutput",
            "summary": "A finished job's raw output bytes",
            "parameters": [_JOB_ID],
            "responses": {
                "200": {
                    "description": "the output; header X-Inos-Status carries the job status",
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
                        }
                    },
                },
                "404": _ERROR,
                "409": _ERROR,
                **_COMMON,
            },
        },
    },
    "/v1/events": {
        "get": {
            "operationId": "streamEvents",
            "summary": "Server-sent events: job events as they happen",
            "description": (
                "`event: <type>` / `data: <Event as JSON>` blocks (#/components/schemas/Event). "
                "The first event is `subscribed`, sent once the subscription is live. "
                "Comment lines (`: ping`) keep idle streams open."
            ),
            "responses": {
                "200": {
                    "description": "an endless event stream",
                    "content": {
                        "text/event-stream": {
                            "schema": {"type": "string", "description": "data: lines hold an Event"}
                        }
                    },
                },
                "503": _ERROR,
                **_COMMON,
            },
        },
    },
    "/v1/peers": {
        "get": {
            "operationId": "listPeers",
            "summary": "Known peers (peer_id, addresses, name, methods, load, rtt_ms, price...)",
            "description": "With wait_for and/or serving, a long poll: the answer comes once the node holds "
            "that peer's advert and `count` peers advertise `serving`, or after timeout_s "
            "(condition_met tells which).",
            "parameters": [
                {"name": "wait_for", "in": "query", "schema": {"type": "string"}, "description": "a peer id"},
                {"name": "serving", "in": "query", "schema": {"type": "string"}, "description": "library.method"},
                {"name": "count", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 1}},
                {"name": "timeout_s", "in": "query", "schema": {"type": "number", "maximum": 120, "default": 10}},
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {"peers": {"type": "array", "items": {"type": "object"}}},
                    },
                    "the peers",
                ),
                **_COMMON,
            },
        },
    },
    "/v1/units": {
        "get": {
            "operationId": "listUnits",
            "summary": "The capsule catalog (libraries, methods, params)",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {"units": {"type": "array", "items": {"type": "object"}}},
                    },
                    "the catalog",
                ),
                **_COMMON,
            },
        },
    },
    "/v1/node": {
        "get": {
            "operationId": "nodeInfo",
            "summary": "This node: peer_id, did, addresses, name, version, uptime",
            "responses": {"200": _json({"type": "object"}, "the node"), **_COMMON},
        },
    },
    "/v1/health": {
        "get": {
            "operationId": "health",
            "summary": "Readiness: 200 when ready, 503 while not",
            "responses": {
                "200": _json(
                    {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
                    "ready",
                ),
                "503": _json({"type": "object"}, "not ready (same body)"),
                **_COMMON,
            },
        },
    },
    "/v1/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1"), **_COMMON},
        },
    },
}

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "inos-node control API",
        "version": "1",
        "description": (
            "The local control API of an INOS node. Every request carries `Authorization: Bearer <token>` "
            "(the node's data dir holds it in api.token; `inos token` prints it). Errors are JSON "
            '{"error", "field"?}.'
        ),
    },
    "servers": [{"url": "http://127.0.0.1:5050"}],
    "security": [{"bearer": []}],
    "paths": _PATHS,
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
}


def document() -> dict[str, Any]:
    """A fresh copy of the document (callers may mutate it)."""
    from inos_node.api import dashboard
    from inos_node.api.ledger_routes import OPENAPI_PATHS

    doc = copy.deepcopy(_DOCUMENT)
    doc["paths"].update(copy.deepcopy(OPENAPI_PATHS))
    doc["paths"].update(copy.deepcopy(dashboard.OPENAPI_PATHS))
    return doc
