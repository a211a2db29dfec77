"""Logging: text and JSON lines, the job id on every line about a job, secrets never logged."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import trio

from inos_node import logs


@pytest.fixture
def root_handlers() -> Iterator[None]:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved:
        root.addHandler(h)
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_carry_job_and_peer(root_handlers: None) -> None:
    out = io.StringIO()
    logs.setup_logging("json", "info", out)
    log = logging.getLogger("inos_node.test")
    log.info("plain %d", 1)
    with logs.job_context("job-1", peer_id="12D3KooWpeer"):
        log.warning("running on %s", "node2")
    log.info("job=%s: retrying elsewhere", "job-2")
    log.debug("below the level")
    docs = [json.loads(line) for line in _lines(out)]
    assert [d["msg"] for d in docs] == ["plain 1", "running on node2", "job=job-2: retrying elsewhere"]
    assert set(docs[0]) == {"ts", "level", "logger", "msg"} and docs[0]["logger"] == "inos_node.test"
    assert docs[1]["job_id"] == "job-1" and docs[1]["peer_id"] == "12D3KooWpeer"
    assert docs[1]["level"] == "warning"
    assert docs[2]["job_id"] == "job-2" and "peer_id" not in docs[2]
    assert docs[0]["ts"].endswith("Z") and "T" in docs[0]["ts"]


def test_text_lines_prefix_the_job(root_handlers: None) -> None:
    out = io.StringIO()
    logs.setup_logging("text", "debug", out)
    log = logging.getLogger("inos_node.test")
    with logs.job_context("job-7"):
        log.debug("fetched input")
        log.info("job=%s: done", "job-7")
    log.info("no job here")
    lines = _lines(out)
    assert lines[0].endswith("DEBUG inos_node.test: [job job-7] fetched input")
    assert lines[1].endswith("INFO inos_node.test: job=job-7: done")  # already names it: no double tag
    assert lines[2].endswith("INFO inos_node.test: no job here")


async def test_job_context_follows_trio_tasks_and_threads(root_handlers: None) -> None:
    out = io.StringIO()
    logs.setup_logging("json", "info", out)
    log = logging.getLogger("inos_node.test")

    async def child() -> None:
        log.info("child task")

    with logs.job_context("job-9"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
        await trio.to_thread.run_sync(log.info, "in a thread")
    log.info("after")
    docs = [json.loads(line) for line in _lines(out)]
    assert [(d["msg"], d.get("job_id")) for d in docs] == [
        ("child task", "job-9"), ("in a thread", "job-9"), ("after", None)]


def test_secrets_are_redacted(root_handlers: None) -> None:
    out = io.StringIO()
    logs.setup_logging("text", "info", out)
    token = "tok-0123456789abcdef-redact-me"
    logs.redact(token)
    logging.getLogger("inos_node.test").info("Authorization: Bearer %s", token)
    assert token not in out.getvalue() and "Bearer <redacted>" in out.getvalue()


def test_setup_replaces_handlers_and_rejects_unknown(root_handlers: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    logs.setup_logging("text", "info", first)
    logs.setup_logging("json", "info", second)
    logging.getLogger("inos_node.test").info("once")
    assert first.getvalue() == "" and len(_lines(second)) == 1
    with pytest.raises(ValueError, match="format"):
        logs.setup_logging("xml", "info")
