"""The node's local control API: HTTP + JSON (and Cap'n Proto for submissions) over loopback.

    service.py   NodeService (the interface the node daemon implements), SubmitRequest, JobRecord
    app.py       make_app(service, token): the Starlette app (bearer auth, limits, routes)
    openapi.py   the hand-written OpenAPI 3.1 document served at /v1/openapi.json
    server.py    serve_api(app, host, port, task_status=...): hypercorn's trio backend in your nursery

Only ``service`` is re-exported here, so that the CLI's client can use the request and record
types without importing starlette or hypercorn.  Import ``make_app`` and ``serve_api`` from
their modules.
"""

from __future__ import annotations

__all__ = ["JobRecord", "NodeService", "SubmitRequest"]

from inos_node.api.service import JobRecord, NodeService, SubmitRequest
