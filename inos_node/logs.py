"""Log lines for people (text, the default) and for machines (``--log-format json``).

    setup_logging("text", "info")     2025-01-01 12:00:00,123 INFO inos_node.daemon: [job 7f3a] ...
    setup_logging("json", "info")     {"ts": "2025-01-01T12:00:00.123Z", "level": "info",
                                       "logger": "inos_node.daemon", "msg": "...", "job_id": "7f3a"}

Every line about a job carries its job id.  Two ways put it there:

* ``with job_context(job_id):`` around the code that serves a job (the daemon's ``_run_job``, the
  mesh's ``_serve``).  The id lives in a ``contextvars.ContextVar``; trio copies the context into
  every task started from inside the block (``start_soon``) and into ``trio.to_thread`` calls, so
  lines logged by anything the job runs are tagged, whatever module logs them.
* a message that starts with ``job=%s`` names its job (the convention the node's code already
  follows), for lines logged outside a context.

``ContextFilter`` (installed on the handler, so it sees records of every logger) copies the id
onto the record as ``job_id`` (and ``peer_id`` when the context names a peer).

Secrets: ``redact(secret)`` registers a string (the API token) that is replaced by
``<redacted>`` in every line, whichever logger or argument carried it.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import sys
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["ContextFilter", "JsonFormatter", "TextFormatter", "job_context", "redact", "setup_logging"]

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")

_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("inos_job_id", default=None)
_peer: contextvars.ContextVar[str | None] = contextvars.ContextVar("inos_peer_id", default=None)
_secrets: set[str] = set()


@contextlib.contextmanager
def job_context(job_id: str, peer_id: str | None = None) -> Iterator[None]:
    """Tag every log line emitted inside the block (and in tasks started from it) with ``job_id``
    (and ``peer_id``: the peer the job is for, or from)."""
    job_token = _job.set(job_id)
    peer_token = _peer.set(peer_id) if peer_id is not None else None
    try:
        yield
    finally:
        if peer_token is not None:
            _peer.reset(peer_token)
        _job.reset(job_token)


def redact(secret: str) -> None:
    """Never let ``secret`` reach a log line (it is replaced by ``<redacted>``)."""
    if secret:
        _secrets.add(secret)


class ContextFilter(logging.Filter):
    """Adds ``job_id`` and ``peer_id`` (None when unknown) to every record; scrubs secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = getattr(record, "job_id", None) or _job.get()
        if job_id is None and isinstance(record.msg, str) and record.msg.startswith("job=%s") and record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            job_id = str(args[0])
        record.job_id = job_id
        record.peer_id = getattr(record, "peer_id", None) or _peer.get()
        if _secrets:
            message = record.getMessage()
            if any(s in message for s in _secrets):
                for s in _secrets:
                    message = message.replace(s, "<redacted>")
                record.msg, record.args = message, None
        return True


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: [job ID] message``: the tag only when a job is known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        job_id = getattr(record, "job_id", None)
        if job_id and not record.message.startswith("job="):
            record.message = f"[job {job_id}] {record.message}"
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ms), level, logger, msg, job_id and peer_id when known,
    exc (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        doc: dict[str, Any] = {
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("job_id", "peer_id"):
            value = getattr(record, key, None)
            if value:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def setup_logging(format: str = "text", level: str = "info",  # noqa: A002 (the flag's name)
                  stream: IO[str] | None = None) -> logging.Handler:
    """Send every logger's lines to ``stream`` (default stderr) in ``format``, at ``level``.

    Replaces the root logger's handlers (so calling it again, or after ``logging.basicConfig``,
    switches format instead of doubling lines).  Returns the handler.

    Raises:
        ValueError: an unknown format or level (config.py has already checked both for the node).
    """
    if format not in FORMATS or level not in LEVELS:
        raise ValueError(f"format must be one of {FORMATS} and level one of {LEVELS}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    return handler
