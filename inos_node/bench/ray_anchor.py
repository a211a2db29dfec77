"""Ray's trivial task round trip, measured in the same run as ``inos bench local``.

Ray probes cloud metadata addresses at start-up, so it runs only inside a loopback-only network
namespace: ``unshare -n`` (root, or an unprivileged user namespace with ``-r``), with ``lo`` brought
up by an ioctl, so no traffic can leave the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

__all__ = ["measure"]

_SCRIPT = r"""
import fcntl, json, socket, statistics, struct, sys, time
# bring up lo in this fresh namespace: SIOCGIFFLAGS 0x8913, SIOCSIFFLAGS 0x8914, IFF_UP|IFF_RUNNING
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
req = struct.pack("16sh", b"lo", 0)
flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, req))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 0x1 | 0x40))
import ray
ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR",
         configure_logging=False)
@ray.remote
def f():
    return 1
for _ in range(50):
    ray.get(f.remote())
n = int(sys.argv[1])
samples = []
for _ in range(n):
    t0 = time.perf_counter_ns(); ray.get(f.remote()); samples.append(time.perf_counter_ns() - t0)
print(json.dumps({"ray_task_rtt_p50_us": round(statistics.median(samples) / 1000, 1), "ray_samples": n}))
ray.shutdown()
"""


def measure(quick: bool) -> dict[str, Any]:
    try:
        import ray  # noqa: F401
    except ImportError:
        return {"ray_task_rtt_p50_us": "not measured: ray is not installed (pip install -e '.[bench]')"}
    unshare = shutil.which("unshare")
    if unshare is None:
        return {"ray_task_rtt_p50_us": "not measured: `unshare` (util-linux) is missing"}
    cmd = [unshare, "-n"] if os.geteuid() == 0 else [unshare, "-r", "-n"]
    n = 200 if quick else 1000
    proc = subprocess.run([*cmd, sys.executable, "-c", _SCRIPT, str(n)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"ray_task_rtt_p50_us": f"not measured: ray failed (exit {proc.returncode}): {' | '.join(tail)}"}
