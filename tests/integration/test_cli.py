"""The CLI as a newcomer uses it: real subprocesses, exit codes, stdout/stderr."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess

import blake3
import pytest

pytestmark = pytest.mark.integration


def run(cmd: list[str], *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*cmd, *args], input=stdin, capture_output=True, timeout=120)


def test_exec_blake3_from_stdin_to_stdout(inos_cmd):
    p = run(inos_cmd, "exec", "compute.blake3", "--input", "-", stdin=b"hello")
    assert p.returncode == 0, p.stderr
    assert p.stdout == blake3.blake3(b"hello").digest()


def test_exec_file_to_out_and_json(inos_cmd, tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"abc" * 1000)
    out = tmp_path / "out.bin"
    p = run(inos_cmd, "exec", "compute.sha256", "--input", str(src), "--out", str(out))
    assert p.returncode == 0 and p.stdout == b""
    assert out.read_bytes() == hashlib.sha256(b"abc" * 1000).digest()
    p = run(inos_cmd, "exec", "compute.sha256", "--input", str(src), "--json")
    doc = json.loads(p.stdout)
    assert set(doc) >= {"status", "output_b64", "output_len", "cost", "metrics"}
    assert doc["status"] == "success" and doc["output_len"] == 32 and doc["cost"] == 1
    assert base64.b64decode(doc["output_b64"]) == hashlib.sha256(b"abc" * 1000).digest()
    assert doc["metrics"]["input_bytes"] == 3000


def test_bad_param_is_one_line_on_stderr_and_exit_2(inos_cmd):
    p = run(inos_cmd, "exec", "compute.brotli_compress", "--param", "quality=12")
    assert p.returncode == 2
    lines = p.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "quality" in lines[0] and "[0, 11]" in lines[0]
    assert p.stdout == b""


def test_unknown_capsule_lists_what_exists(inos_cmd):
    p = run(inos_cmd, "exec", "compute.md5")
    assert p.returncode == 2
    assert b"compute.blake3" in p.stderr and b"compute.sha256" in p.stderr
    p = run(inos_cmd, "exec", "blake3")
    assert p.returncode == 2 and b"LIBRARY.METHOD" in p.stderr


def test_missing_input_file_is_a_usage_error(inos_cmd, tmp_path):
    p = run(inos_cmd, "exec", "compute.blake3", "--input", str(tmp_path / "nope"))
    assert p.returncode == 2 and b"cannot read --input" in p.stderr


def test_wasm_capsules_exit_codes(inos_cmd, capsules):
    p = run(inos_cmd, "exec", "wasm.run", "--module", str(capsules / "echo.wat"), "--input", "-", stdin=b"xyz")
    assert p.returncode == 0 and p.stdout == b"xyz"
    p = run(inos_cmd, "exec", "wasm.run", "--module", str(capsules / "trap.wat"))
    assert p.returncode == 1 and b"trap" in p.stderr.lower()
    p = run(inos_cmd, "exec", "wasm.run", "--module", str(capsules / "loop.wat"), "--param", "fuel=50000")
    assert p.returncode == 3 and b"fuel" in p.stderr
    p = run(inos_cmd, "exec", "wasm.run", "--module", str(capsules / "params.wat"), "--param", "k=v")
    assert p.returncode == 0 and json.loads(p.stdout) == {"k": "v"}
    p = run(inos_cmd, "exec", "wasm.run")
    assert p.returncode == 2 and b"--module" in p.stderr


def test_units_catalog(inos_cmd):
    p = run(inos_cmd, "units", "--json")
    assert p.returncode == 0
    names = {m["name"] for lib in json.loads(p.stdout) for m in lib["methods"]}
    for expected in ("compute.blake3", "compute.sha256", "compute.brotli_compress", "compute.brotli_decompress",
                     "crypto.ed25519_keygen", "crypto.ed25519_sign", "crypto.ed25519_verify", "crypto.encrypt",
                     "crypto.decrypt", "math.matmul", "boids.step", "boids.snapshot", "boids.evolve", "wasm.run"):
        assert expected in names
    p = run(inos_cmd, "units")
    assert p.returncode == 0 and b"quality=5" in p.stdout


def test_help_teaches(inos_cmd):
    p = run(inos_cmd, "--help")
    assert p.returncode == 0 and b"examples:" in p.stdout and b"inos exec" in p.stdout
    p = run(inos_cmd, "exec", "--help")
    assert p.returncode == 0 and b"--param" in p.stdout and b"exit codes" in p.stdout


def test_python_dash_m_is_the_same_cli():
    import sys

    p = run([sys.executable, "-m", "inos_node"], "exec", "system.echo", "--input", "-", stdin=b"same")
    assert p.returncode == 0 and p.stdout == b"same"
