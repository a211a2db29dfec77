"""Mesh baselines for ``inos bench mesh``: raw py-libp2p streams beside our delegation and blobs.

Every measurement runs against a server in ANOTHER PROCESS (``python -m inos_node.net.bench
serve``), as a real mesh would, and ``run_mesh_bench`` measures the raw baselines and ours in
the same run so that they can be compared.  The functions return dicts and print nothing.

  libp2p_stream_rtt_p50_us       raw echo of 100-byte frames over one persistent stream, one at
                                 a time (u32 framing, no capnp)
  libp2p_stream_throughput_per_s the same echo with 32 requests in flight over ONE stream
  libp2p_bulk_mbps               one stream, 64 MiB in 1 MiB writes (MB = 10^6 bytes); "pull":
                                 the server writes, we read (a blob fetch's direction, so its
                                 fair baseline); "push": we write until the server acknowledges
                                 the last byte
  delegate_echo                  DelegationClient -> DelegationServer running ``system.echo`` of
                                 100 bytes (capnp both ways, a signed receipt), one at a time, and
                                 with 32 in flight
  blob_fetch_mbps                BlobClient.fetch of a 64 MiB blob (verified), into a fresh
                                 bytearray or (fetch_into) a reused buffer

The server process also backs the cross-process integration tests: it runs ``echo_handler``
(methods ``echo``, ``upper``, ``sleep``, ``fail``) and prints ``STARTED <requestId>`` when a
``sleep`` job begins, so a test can kill it mid-request without sleeping.
"""

from __future__ import annotations

import os
import statistics as stats
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import blake3
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from inos_node.identity import Identity
from inos_node.net.blobs import BlobClient, BlobServer, MemoryBlobStore
from inos_node.net.delegation import DelegationClient, DelegationServer, Handler, sign_receipt
from inos_node.net.framing import FrameReader, encode_frame, reset_quietly
from inos_node.net.host import HostConfig, addresses, connect, open_host, peer_id_of, quiet_libp2p_logs
from inos_node.types import JobRequest, JobResult, Metrics, Status
from inos_node.wire.delegation import DelegateResponse, DelegateRun, ReceiptBody

__all__ = [
    "BENCH_BLOB_SEED",
    "BULK_PROTOCOL",
    "ECHO_PROTOCOL",
    "ServerProcess",
    "blob_fetch_mbps",
    "bench_blob",
    "delegate_echo",
    "echo_handler",
    "libp2p_bulk_mbps",
    "libp2p_stream_rtt_p50_us",
    "libp2p_stream_throughput_per_s",
    "open_server_process",
    "register_raw_handlers",
    "run_mesh_bench",
]

ECHO_PROTOCOL = TProtocol("/inos/bench/echo/1.0.0")
BULK_PROTOCOL = TProtocol("/inos/bench/bulk/1.0.0")
BENCH_BLOB_SEED = b"inos bench blob"
_ECHO_LIMIT = 1024 * 1024
_MiB = 1024 * 1024


def bench_blob(size: int) -> bytes:
    """Deterministic bytes both processes can make (blake3 in XOF mode: fast)."""
    return blake3.blake3(BENCH_BLOB_SEED).digest(length=size)


# --------------------------------------------------------------------------------- echo handler


def echo_handler(identity: Identity, *, on_start: Callable[[DelegateRun], None] | None = None) -> Handler:
    """A test/bench worker: ``system.echo`` / ``upper`` / ``sleep`` / ``fail``, with signed receipts."""
    worker = peer_id_of(identity)

    async def handle(run: DelegateRun, peer_id: str) -> DelegateResponse:
        job = run.job
        if on_start is not None:
            on_start(run)
        data = bytes(job.input) if isinstance(job.input, bytes | bytearray | memoryview) else b""
        if job.method == "sleep":
            await trio.sleep_forever()
        if job.method == "fail":
            raise ValueError("asked to fail")
        out = data.upper() if job.method == "upper" else data
        body = ReceiptBody(
            job_id=job.job_id,
            requester=peer_id,
            worker=worker,
            capsule=job.name,
            input_digest=run.input_digest,
            output_digest=blake3.blake3(out).digest(),
            cost=1,
            metrics=Metrics(input_bytes=len(data), output_bytes=len(out)),
            finished_unix_ms=int(time.time() * 1000),
        )
        return DelegateResponse(
            request_id=run.request_id,
            result=JobResult(
                job_id=job.job_id,
                status=Status.SUCCESS,
                output=out,
                cost=1,
                metrics=body.metrics,
                executor=worker,
            ),
            receipt=sign_receipt(identity, body),
        )

    return handle


# ------------------------------------------------------------------------------- raw protocols


async def _echo_stream(stream: Any) -> None:
    try:
        reader = FrameReader(stream, limit=_ECHO_LIMIT)
        while (frame := await reader.read_frame()) is not None:
            await stream.write(encode_frame(frame, limit=_ECHO_LIMIT))
    except Exception:  # noqa: BLE001 - bench peer went away; never kill the node (P7)
        pass
    await reset_quietly(stream)


async def _read_exactly(stream: Any, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        got = await stream.read(n - len(buf))
        if not got:
            raise EOFError
        buf += got
    return buf


async def _drain(stream: Any, total: int) -> None:
    left = total
    while left > 0:
        chunk = await stream.read(min(left, _MiB))
        if not chunk:
            raise EOFError
        left -= len(chunk)


_BULK_CHUNK = os.urandom(_MiB)


async def _bulk(stream: Any) -> None:
    """``P`` + u64 n: read n bytes, answer ``k`` (push);  ``G`` + u64 n: send n bytes (pull)."""
    try:
        head = await _read_exactly(stream, 9)
        total = int.from_bytes(head[1:], "little")
        if head[:1] == b"P":
            await _drain(stream, total)
            await stream.write(b"k")
        else:
            for _ in range(total // _MiB):
                await stream.write(_BULK_CHUNK)
        await stream.close()
    except Exception:  # noqa: BLE001 - bench peer went away; never kill the node (P7)
        await reset_quietly(stream)


def register_raw_handlers(host: Any) -> None:
    """The raw echo and bulk protocols, on a node started for ``inos bench mesh`` (INOS_BENCH=1)."""
    host.set_stream_handler(ECHO_PROTOCOL, _echo_stream)
    host.set_stream_handler(BULK_PROTOCOL, _bulk)


# ------------------------------------------------------------------------------ server process


async def _serve_main(seed: bytes, blob_mib: int) -> None:
    quiet_libp2p_logs()
    identity = Identity(seed)
    store = MemoryBlobStore()
    if blob_mib:
        store.put(bench_blob(blob_mib * _MiB))

    def started(run: DelegateRun) -> None:
        if run.job.method == "sleep":
            print(f"STARTED {run.request_id}", flush=True)  # noqa: T201 - the test harness reads it

    async with open_host(identity, HostConfig()) as host:
        register_raw_handlers(host)
        async with trio.open_nursery() as nursery:
            await nursery.start(DelegationServer(host, echo_handler(identity, on_start=started)).run)
            await nursery.start(BlobServer(host, store).run)
            print("ADDR", addresses(host)[0], flush=True)  # noqa: T201 - the parent reads it
            # Run until the parent closes our stdin.
            await trio.to_thread.run_sync(sys.stdin.buffer.read, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()


@dataclass
class ServerProcess:
    process: trio.Process
    address: str
    lines: trio.MemoryReceiveChannel[str]  # further stdout lines (STARTED ...)


@asynccontextmanager
async def open_server_process(
    *, seed: bytes | None = None, blob_mib: int = 0
) -> AsyncIterator[ServerProcess]:
    """A bench/echo server in a child process; yields once it prints its address.

    Resource handling: on exit stdin is closed (the child exits) and the child is killed if it
    is still there after 5 s.
    """
    seed = seed or os.urandom(32)
    cmd = [sys.executable, "-m", "inos_node.net.bench", "serve", seed.hex(), str(blob_mib)]
    send, recv = trio.open_memory_channel[str](64)
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(_process_starter(cmd))
        try:
            address_ready: trio.Event = trio.Event()
            address: list[str] = []

            async def pump() -> None:
                assert proc.stdout is not None
                buf = b""
                async with send:
                    async for data in proc.stdout:
                        buf += data
                        while b"\n" in buf:
                            line, buf = buf.split(b"\n", 1)
                            text = line.decode()
                            if text.startswith("ADDR ") and not address:
                                address.append(text[5:])
                                address_ready.set()
                            else:
                                try:
                                    send.send_nowait(text)
                                except trio.WouldBlock:
                                    pass
                address_ready.set()

            nursery.start_soon(pump)
            with trio.fail_after(30):
                await address_ready.wait()
            if not address:
                raise RuntimeError(f"bench server exited without an address (rc={proc.returncode})")
            yield ServerProcess(proc, address[0], recv)
        finally:
            with trio.CancelScope(shield=True):
                if proc.stdin is not None:
                    try:
                        await proc.stdin.aclose()
                    except trio.BrokenResourceError:
                        pass
                with trio.move_on_after(5):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            nursery.cancel_scope.cancel()


def _process_starter(cmd: list[str]) -> Callable[..., Awaitable[Any]]:
    async def start(*, task_status: trio.TaskStatus[trio.Process]) -> None:
        await trio.run_process(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, check=False, task_status=task_status
        )

    return start


# ----------------------------------------------------------------------------- measurements


def _summary(samples_s: list[float]) -> dict[str, float]:
    xs = sorted(samples_s)
    return {
        "n": len(xs),
        "p50_us": stats.median(xs) * 1e6,
        "p99_us": xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1e6,
    }


async def libp2p_stream_rtt_p50_us(
    host: Any, peer_id: str, *, n: int = 2000, size: int = 100
) -> dict[str, Any]:
    stream = await host.new_stream(ID.from_base58(peer_id), [ECHO_PROTOCOL])
    try:
        reader = FrameReader(stream, limit=_ECHO_LIMIT)
        frame = encode_frame(b"x" * size, limit=_ECHO_LIMIT)
        samples = []
        for i in range(n + 50):
            t = time.perf_counter()
            await stream.write(frame)
            await reader.read_frame()
            if i >= 50:  # warm-up
                samples.append(time.perf_counter() - t)
        return {"what": "raw libp2p echo, one stream, one at a time", "size": size, **_summary(samples),
                "samples_s": samples}
    finally:
        await reset_quietly(stream)


async def libp2p_stream_throughput_per_s(
    host: Any, peer_id: str, *, n: int = 5000, in_flight: int = 32, size: int = 100
) -> dict[str, Any]:
    stream = await host.new_stream(ID.from_base58(peer_id), [ECHO_PROTOCOL])
    try:
        reader = FrameReader(stream, limit=_ECHO_LIMIT)
        frame = encode_frame(b"x" * size, limit=_ECHO_LIMIT)
        window = trio.Semaphore(in_flight)
        t = time.perf_counter()
        async with trio.open_nursery() as nursery:

            async def writer() -> None:
                for _ in range(n):
                    await window.acquire()
                    await stream.write(frame)

            nursery.start_soon(writer)
            for _ in range(n):
                await reader.read_frame()
                window.release()
        elapsed = time.perf_counter() - t
        return {
            "what": f"raw libp2p echo, ONE stream, {in_flight} in flight (u32 framing)",
            "n": n,
            "size": size,
            "per_s": n / elapsed,
        }
    finally:
        await reset_quietly(stream)


async def libp2p_bulk_mbps(
    host: Any, peer_id: str, *, total: int = 64 * _MiB, direction: str = "pull"
) -> dict[str, Any]:
    """Raw one-stream bulk transfer, 1 MiB writes.

    ``pull``: the server writes, we read (the direction of a blob fetch, so the fair baseline for
    ``blob_fetch_mbps``); ``push``: we write, the server reads and acknowledges the last byte.
    """
    stream = await host.new_stream(ID.from_base58(peer_id), [BULK_PROTOCOL])
    try:
        t = time.perf_counter()
        if direction == "push":
            await stream.write(b"P" + total.to_bytes(8, "little"))
            for _ in range(total // _MiB):
                await stream.write(_BULK_CHUNK)
            if await stream.read(1) != b"k":
                raise RuntimeError("bulk sink did not acknowledge")
        else:
            await stream.write(b"G" + total.to_bytes(8, "little"))
            await _drain(stream, total)
        elapsed = time.perf_counter() - t
        return {
            "what": f"raw libp2p, one stream, {total // _MiB} MiB in 1 MiB writes, {direction}",
            "bytes": total,
            "seconds": elapsed,
            "mb_per_s": total / elapsed / 1e6,
        }
    finally:
        await reset_quietly(stream)


async def delegate_echo(
    client: DelegationClient, peer_id: str, *, n: int = 1000, in_flight: int = 32, size: int = 100
) -> dict[str, Any]:
    data = b"x" * size
    digest = blake3.blake3(data).digest()

    async def one(i: int) -> float:
        t = time.perf_counter()
        r = await client.request(
            peer_id,
            JobRequest(f"b{i}", "system", "echo", data),
            input_digest=digest,
            deadline_unix_ms=int(time.time() * 1000) + 30_000,
        )
        if r.result.status is not Status.SUCCESS:
            raise RuntimeError(f"delegate echo failed: {r.result.error}")
        return time.perf_counter() - t

    samples = []
    for i in range(n + 50):
        s = await one(i)
        if i >= 50:
            samples.append(s)
    window = trio.Semaphore(in_flight)
    t = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n * 2):
            await window.acquire()

            async def go(i: int = i) -> None:
                try:
                    await one(i)
                finally:
                    window.release()

            nursery.start_soon(go)
    per_s = n * 2 / (time.perf_counter() - t)
    return {
        "what": "DelegationClient -> DelegationServer system.echo (capnp + signed receipt)",
        "size": size,
        **_summary(samples),
        f"per_s_{in_flight}_in_flight": per_s,
    }


async def blob_fetch_mbps(
    client: BlobClient, peer_id: str, *, size: int = 64 * _MiB, into: bytearray | None = None
) -> dict[str, Any]:
    """Fetch the server's bench blob: into a fresh bytearray (``fetch``), or into ``into``
    (``fetch_into``, as into an arena block: no page faults for a fresh 64 MiB buffer)."""
    digest = blake3.blake3(bench_blob(size)).digest()
    t = time.perf_counter()
    if into is None:
        data: bytearray | memoryview = await client.fetch(peer_id, digest, max_bytes=size)
        what = "fetch (fresh bytearray)"
    else:
        data = await client.fetch_into(
            peer_id, digest, max_bytes=size, allocate=lambda n: memoryview(into)[:n]
        )
        what = "fetch_into (reused buffer)"
    elapsed = time.perf_counter() - t
    if len(data) != size:
        raise RuntimeError("short blob")
    return {
        "what": f"BlobClient.{what} {size // _MiB} MiB, verified",
        "bytes": size,
        "seconds": elapsed,
        "mb_per_s": size / elapsed / 1e6,
    }


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "what": runs[0]["what"],
        "mb_per_s": stats.median(r["mb_per_s"] for r in runs),
        "runs_mb_per_s": [round(r["mb_per_s"], 1) for r in runs],
    }


async def run_mesh_bench(*, quick: bool = False, reps: int = 3) -> dict[str, Any]:
    """All baselines against one server process, in one run (see the module docstring).

    Bulk and blob runs are interleaved ``reps`` times and reported as medians (with every run),
    because a shared machine's noise is larger than the differences being measured.
    """
    quiet_libp2p_logs()
    n = 300 if quick else 2000
    blob_mib = 16 if quick else 64
    size = blob_mib * _MiB
    async with (
        open_server_process(blob_mib=blob_mib) as server,
        open_host(Identity(os.urandom(32)), HostConfig()) as host,
        trio.open_nursery() as nursery,
    ):
        peer = await connect(host, server.address)
        dclient = DelegationClient(host)
        bclient = BlobClient(host)
        await nursery.start(dclient.run)
        await nursery.start(bclient.run)
        out: dict[str, Any] = {
            "server": "another process, 127.0.0.1, TCP + Noise + Yamux",
            "cpus": os.cpu_count(),
        }
        out["libp2p_stream_rtt"] = await libp2p_stream_rtt_p50_us(host, peer, n=n)
        out["libp2p_stream_throughput"] = await libp2p_stream_throughput_per_s(host, peer, n=n * 2)
        out["delegate_echo"] = await delegate_echo(dclient, peer, n=n // 2)
        buffer = bytearray(size)
        await blob_fetch_mbps(bclient, peer, size=size)  # warm-up: Yamux windows grow on first use
        runs: dict[str, list[dict[str, Any]]] = {"pull": [], "push": [], "fetch": [], "fetch_into": []}
        for _ in range(reps):
            runs["pull"].append(await libp2p_bulk_mbps(host, peer, total=size, direction="pull"))
            runs["fetch"].append(await blob_fetch_mbps(bclient, peer, size=size))
            runs["fetch_into"].append(await blob_fetch_mbps(bclient, peer, size=size, into=buffer))
            runs["push"].append(await libp2p_bulk_mbps(host, peer, total=size, direction="push"))
        out["libp2p_bulk_pull"] = _median_of(runs["pull"])
        out["libp2p_bulk_push"] = _median_of(runs["push"])
        out["blob_fetch"] = _median_of(runs["fetch"])
        out["blob_fetch_into"] = _median_of(runs["fetch_into"])
        raw = out["libp2p_bulk_pull"]["mb_per_s"]
        out["blob_fetch_vs_raw_pull"] = out["blob_fetch"]["mb_per_s"] / raw
        out["blob_fetch_into_vs_raw_pull"] = out["blob_fetch_into"]["mb_per_s"] / raw
        nursery.cancel_scope.cancel()
    return out


def main(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "serve":
        seed = bytes.fromhex(argv[1]) if len(argv) > 1 else os.urandom(32)
        blob_mib = int(argv[2]) if len(argv) > 2 else 0
        trio.run(_serve_main, seed, blob_mib)
        return 0
    if len(argv) >= 1 and argv[0] == "run":
        import json

        print(json.dumps(trio.run(run_mesh_bench), indent=2))  # noqa: T201 - a CLI entry
        return 0
    print("usage: python -m inos_node.net.bench serve [seed-hex] [blob-MiB] | run", file=sys.stderr)  # noqa: T201
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
