"""Real node processes for tests and local testnets: start, wait until ready, stop.

A node prints one JSON line ``{"event": "ready", ...}`` on stdout when it is ready; ``start_node``
blocks on that line (no polling, no sleeps) and returns a handle with the node's peer id,
addresses, API address and token.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["NodeProc", "free_port", "start_node"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NodeProc:
    name: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    info: dict[str, Any] = field(default_factory=dict)
    log_path: Path | None = None

    @property
    def peer_id(self) -> str:
        return str(self.info["peer_id"])

    @property
    def address(self) -> str:
        return str(self.info["addresses"][0])

    @property
    def api(self) -> str:
        return str(self.info["api"][0]).removeprefix("http://")

    @property
    def token(self) -> str:
        return (self.data_dir / "api.token").read_text().strip()

    def client(self, timeout: float = 60.0) -> Any:
        from inos_node.client import Client

        return Client(self.api, self.token, timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return int(self.proc.returncode)


def start_node(base: Path, name: str, *, bootstrap: tuple[str, ...] = (), env: dict[str, str] | None = None,
               extra: tuple[str, ...] = (), timeout: float = 60.0) -> NodeProc:
    data_dir = base / name
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = base / f"{name}.log"
    cmd = [sys.executable, "-m", "inos_node", "node", "run", "--data-dir", str(data_dir), "--name", name,
           "--listen", "/ip4/127.0.0.1/tcp/0", "--api", f"127.0.0.1:{free_port()}", "--arena-mb", "16", *extra]
    for b in bootstrap:
        cmd += ["--bootstrap", b]
    log = log_path.open("ab")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env={**os.environ, **(env or {})})
    log.close()
    node = NodeProc(name, data_dir, proc, log_path=log_path)
    assert proc.stdout is not None
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        node.kill()
        raise RuntimeError(f"node {name} was not ready within {timeout} s; log: {log_path}")
    line = proc.stdout.readline()
    if not line:
        code = proc.wait(timeout=10)
        raise RuntimeError(f"node {name} exited with {code} before it was ready: {log_path.read_text()[-2000:]}")
    node.info = json.loads(line)
    return node
