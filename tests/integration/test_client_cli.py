"""The client commands as a user runs them: a fake node's API served from a subprocess (the real
app and hypercorn over ``FakeService`` from ``tests/component/test_api.py``), and ``inos submit``,
``inos peers``, ``inos jobs``, ``inos token`` as subprocesses.  The server prints its URL once it
listens; nothing here waits on a clock.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from inos_node.client import Client, resolve_api, resolve_token
from inos_node.errors import ConfigError

pytestmark = pytest.mark.integration

COMPONENT = Path(__file__).resolve().parents[1] / "component"
TOKEN = "cli-test-token-0123456789abcdef"
SERVER = f"""
import sys, trio
sys.path.insert(0, {str(COMPONENT)!r})
from test_api import FakeService
from inos_node.api.app import make_app
from inos_node.api.server import serve_api

async def main():
    async with trio.open_nursery() as nursery:
        (url,) = await nursery.start(serve_api, make_app(FakeService(), {TOKEN!r}), "127.0.0.1", 0)
        print(url, flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)   # until the test closes our stdin
        nursery.cancel_scope.cancel()

trio.run(main)
"""


@pytest.fixture(scope="module")
def node_api() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read()  # type: ignore[union-attr]
        yield url
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        try:
            assert proc.wait(timeout=20) == 0, proc.stderr.read()  # type: ignore[union-attr]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INOS_")}
    env.update(extra)
    return env


def run(
    cmd: list[str],
    *args: str,
    stdin: bytes = b"",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*cmd, *args], input=stdin, capture_output=True, timeout=60, env=env or _env())


def test_submit_writes_raw_output_to_stdout_and_out(
    inos_cmd: list[str], node_api: str, tmp_path: Path
) -> None:
    p = run(
        inos_cmd,
        "submit",
        "compute.reverse",
        "--input",
        "-",
        "--api",
        node_api,
        "--token",
        TOKEN,
        stdin=b"hello node",
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"edon olleh" and p.stderr == b""
    src = tmp_path / "in.bin"
    src.write_bytes(b"\x00\x01\x02")
    out = tmp_path / "out.bin"
    p = run(
        inos_cmd,
        "submit",
        "compute.reverse",
        "--input",
        str(src),
        "--out",
        str(out),
        "--api",
        node_api,
        "--token",
        TOKEN,
    )
    assert p.returncode == 0 and p.stdout == b""
    assert out.read_bytes() == b"\x02\x01\x00"


def test_submit_json_fields(inos_cmd: list[str], node_api: str) -> None:
    p = run(
        inos_cmd,
        "submit",
        "compute.reverse",
        "--input",
        "-",
        "--json",
        "--api",
        node_api,
        "--token",
        TOKEN,
        "--replicas",
        "2",
        stdin=b"abc",
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert set(doc) >= {
        "job_id",
        "status",
        "output_b64",
        "output_len",
        "executor",
        "cost",
        "receipt",
        "replicas",
    }
    assert doc["status"] == "success" and base64.b64decode(doc["output_b64"]) == b"cba"
    assert doc["output_len"] == 3 and doc["executor"] == "local" and doc["cost"] == 3
    assert doc["receipt"]["job_id"] == doc["job_id"] and len(doc["replicas"]) == 2


def test_submit_flags_reach_the_node(inos_cmd: list[str], node_api: str) -> None:
    p = run(
        inos_cmd,
        "submit",
        "test.describe",
        "--peer",
        "12D3KooWX",
        "--param",
        "level=9",
        "--param",
        "mode=a=b",
        "--budget",
        "5",
        "--timeout",
        "2.5",
        "--prefer",
        "cheapest",
        "--api",
        node_api,
        "--token",
        TOKEN,
    )
    assert p.returncode == 0, p.stderr
    asked = json.loads(p.stdout)
    assert asked["placement"] == "peer:12D3KooWX" and asked["params"] == {"level": "9", "mode": "a=b"}
    assert (asked["budget"], asked["timeout_s"], asked["prefer"]) == (5, 2.5, "cheapest")
    for flag, placement in (("--local", "local"), ("--remote", "remote")):
        p = run(inos_cmd, "submit", "test.describe", flag, "--api", node_api, "--token", TOKEN)
        assert json.loads(p.stdout)["placement"] == placement


def test_capsule_failures_use_the_exec_exit_codes(inos_cmd: list[str], node_api: str) -> None:
    p = run(inos_cmd, "submit", "test.fail", "--api", node_api, "--token", TOKEN)
    assert p.returncode == 1 and p.stdout == b""
    assert p.stderr.decode().strip() == "inos: test.fail: failed: boom"
    p = run(inos_cmd, "submit", "test.fuel", "--api", node_api, "--token", TOKEN, "--json")
    assert p.returncode == 3 and json.loads(p.stdout)["status"] == "outOfFuel"


def test_usage_errors_exit_2(inos_cmd: list[str], node_api: str) -> None:
    p = run(inos_cmd, "submit", "compute.md5", "--api", node_api, "--token", TOKEN)
    assert p.returncode == 2 and b"compute.reverse" in p.stderr  # the node lists what exists
    p = run(inos_cmd, "submit", "compute.reverse", "--replicas", "0", "--api", node_api, "--token", TOKEN)
    assert p.returncode == 2 and b"replicas" in p.stderr  # refused before any request
    p = run(inos_cmd, "submit", "compute.reverse", "--local", "--remote")
    assert p.returncode == 2 and b"not allowed with" in p.stderr


def test_wrong_token_is_a_clear_message(inos_cmd: list[str], node_api: str, tmp_path: Path) -> None:
    expected = "inos: the API token was refused (use --token, INOS_TOKEN or --data-dir)"
    p = run(inos_cmd, "submit", "compute.reverse", "--api", node_api, "--token", "not-the-token-at-all")
    assert p.returncode == 7 and p.stdout == b""
    assert p.stderr.decode().strip() == expected
    p = run(inos_cmd, "peers", env=_env(INOS_API=node_api, INOS_TOKEN="not-the-token-at-all"))
    assert p.returncode == 7 and p.stderr.decode().strip() == expected
    # --token beats INOS_TOKEN
    p = run(
        inos_cmd, "peers", "--token", TOKEN, env=_env(INOS_API=node_api, INOS_TOKEN="nope-nope-nope-nope")
    )
    assert p.returncode == 0, p.stderr


def test_token_from_data_dir(inos_cmd: list[str], node_api: str, tmp_path: Path) -> None:
    data = tmp_path / "node"
    data.mkdir()
    (data / "api.token").write_text(TOKEN + "\n")
    (data / "api.token").chmod(0o600)
    p = run(inos_cmd, "jobs", "--api", node_api, "--data-dir", str(data))
    assert p.returncode == 0, p.stderr
    p = run(inos_cmd, "jobs", env=_env(INOS_API=node_api, INOS_DATA_DIR=str(data)))
    assert p.returncode == 0, p.stderr
    p = run(inos_cmd, "jobs", "--api", node_api, "--data-dir", str(tmp_path / "elsewhere"))
    assert p.returncode == 7 and b"api.token does not exist" in p.stderr


def test_no_node_running(inos_cmd: list[str]) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = run(inos_cmd, "submit", "compute.reverse", "--api", f"127.0.0.1:{port}", "--token", TOKEN)
    assert p.returncode == 7
    assert p.stderr.decode().strip() == (
        f"inos: no node answering at http://127.0.0.1:{port} (start one with `inos node run`)"
    )
    p = run(inos_cmd, "jobs", env=_env(INOS_API=f"127.0.0.1:{port}", INOS_TOKEN=TOKEN))
    assert p.returncode == 7 and b"no node answering" in p.stderr


def test_peers_table_and_json(inos_cmd: list[str], node_api: str) -> None:
    p = run(inos_cmd, "peers", "--api", node_api, "--token", TOKEN)
    assert p.returncode == 0, p.stderr
    header, row = p.stdout.decode().splitlines()
    assert header.split() == ["PEER", "ID", "NAME", "RTT", "MS", "LOAD", "REPUTATION", "METHODS", "ADDRESS"]
    assert row.split() == [
        "12D3KooWFakeRemotePeer",
        "remote-1",
        "1.5",
        "0.25",
        "0.75",
        "2",
        "/ip4/127.0.0.1/tcp/4001",
    ]
    p = run(inos_cmd, "peers", "--json", "--api", node_api, "--token", TOKEN)
    assert json.loads(p.stdout)[0]["name"] == "remote-1"


def test_jobs_table_and_json(inos_cmd: list[str], node_api: str) -> None:
    p = run(
        inos_cmd,
        "submit",
        "compute.reverse",
        "--input",
        "-",
        "--api",
        node_api,
        "--token",
        TOKEN,
        "--json",
        stdin=b"for the listing",
    )
    job_id = json.loads(p.stdout)["job_id"]
    p = run(inos_cmd, "jobs", "--api", node_api, "--token", TOKEN)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode().splitlines()
    assert lines[0].split() == ["JOB", "ID", "CAPSULE", "STATUS", "EXECUTOR", "COST", "BYTES", "AGE"]
    newest = lines[1].split()
    assert newest[:6] == [job_id, "compute.reverse", "success", "local", "3", "15"]
    p = run(inos_cmd, "jobs", "--json", "--limit", "1", "--api", node_api, "--token", TOKEN)
    (doc,) = json.loads(p.stdout)
    assert doc["job_id"] == job_id and doc["status"] == "success" and "output_b64" not in doc


def test_token_creates_a_private_file_and_is_stable(inos_cmd: list[str], tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    first = run(inos_cmd, "token", "--data-dir", str(data))
    assert first.returncode == 0, first.stderr
    token = first.stdout.decode().strip()
    assert len(token) >= 16
    path = data / "api.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = run(inos_cmd, "token", env=_env(INOS_DATA_DIR=str(data)))
    assert second.stdout.decode().strip() == token


def test_help_teaches(inos_cmd: list[str]) -> None:
    for command in ("submit", "peers", "jobs", "token"):
        p = run(inos_cmd, command, "--help")
        assert p.returncode == 0 and b"usage: inos " + command.encode() in p.stdout
    p = run(inos_cmd, "submit", "--help")
    for words in (b"INOS_TOKEN", b"INOS_API", b"--data-dir", b"exit codes", b"examples"):
        assert words in p.stdout


def test_resolution_order(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / "api.token").write_text("from-data-dir\n")
    default = tmp_path / "default"
    default.mkdir()
    (default / "api.token").write_text("from-default-dir")
    env = {"INOS_DATA_DIR": str(default)}
    assert resolve_token("flag", data, {**env, "INOS_TOKEN": "env"}) == "flag"
    assert resolve_token(None, data, {**env, "INOS_TOKEN": "env"}) == "env"
    assert resolve_token(None, data, env) == "from-data-dir"
    assert resolve_token(None, None, env) == "from-default-dir"
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_token(None, tmp_path / "none", {})
    assert resolve_api("h:1", {"INOS_API": "e:2"}) == "h:1"
    assert resolve_api(None, {"INOS_API": "e:2"}) == "e:2"
    assert resolve_api(None, {}) == "127.0.0.1:5050"
    assert Client("http://[::1]:7000").url == "http://[::1]:7000"
    assert Client("localhost").url == "http://localhost:5050"
    with pytest.raises(ConfigError):
        Client("https://example.org:1")


def test_a_large_upload_shows_progress(inos_cmd: list[str], node_api: str, tmp_path: Path) -> None:
    """On a terminal (or with INOS_PROGRESS=1) a large input's upload draws a progress line."""
    src = tmp_path / "big.bin"
    data = bytes(range(256)) * (5 * 4096)  # 5 MiB: over the 4 MiB threshold once base64-encoded
    src.write_bytes(data)
    p = run(inos_cmd, "submit", "compute.reverse", "--input", str(src), "--api", node_api, "--token", TOKEN,
            env=_env(INOS_PROGRESS="1"))
    assert p.returncode == 0, p.stderr
    assert p.stdout == data[::-1]
    lines = p.stderr.decode().replace("\r", "\n").split()
    assert "uploading" in lines and lines[-1].endswith("MiB")
    final = p.stderr.decode().replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("inos: uploading [" + "#" * 30 + "]"), final
    p = run(inos_cmd, "submit", "compute.reverse", "--input", str(src), "--api", node_api, "--token", TOKEN)
    assert p.returncode == 0 and p.stderr == b"", "no progress when stderr is not a terminal"
