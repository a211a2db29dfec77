"""Real node processes on loopback: Noise-encrypted py-libp2p between them, the control API, the CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess

import blake3
import pytest

from inos_node.api.service import SubmitRequest
from inos_node.client import ApiError
from inos_node.testing.procs import NodeProc, start_node

pytestmark = pytest.mark.integration

EVOLVE = {"population": 8, "generations": 30, "count": 150, "steps": 40, "seed": 5}  # a few seconds of work


@pytest.fixture(scope="module")
def trio_nodes(tmp_path_factory):
    """A (the bootstrap), B and C, all connected and aware of each other's adverts."""
    base = tmp_path_factory.mktemp("mesh")
    a = start_node(base, "a")
    b = start_node(base, "b", bootstrap=(a.address,))
    c = start_node(base, "c", bootstrap=(a.address,))
    nodes = (a, b, c)
    try:
        for n in nodes:
            assert n.client().wait_peers(serving="system.echo", count=2, timeout_s=30), f"{n.name} sees both peers"
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def test_peer_pinned_capsule_runs_there_with_a_verified_receipt(trio_nodes, inos_cmd):
    a, b, _ = trio_nodes
    p = subprocess.run([*inos_cmd, "submit", "compute.blake3", "--input", "-", "--peer", b.peer_id, "--json",
                        "--api", a.api, "--token", a.token], input=b"hello mesh", capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["status"] == "success" and doc["executor"] == b.peer_id
    assert base64.b64decode(doc["output_b64"]) == blake3.blake3(b"hello mesh").digest()
    receipt = doc["receipt"]
    assert receipt["worker"] == b.peer_id and receipt["requester"] == a.peer_id
    assert receipt["input_digest"] == blake3.blake3(b"hello mesh").hexdigest()
    assert receipt["output_digest"] == blake3.blake3(base64.b64decode(doc["output_b64"])).hexdigest()


def test_remote_picks_a_serving_peer_and_the_wasm_module_travels(trio_nodes, capsules):
    a, b, c = trio_nodes
    rec = a.client().run(SubmitRequest("wasm.run", b"stressed", module=(capsules / "reverse.wat").read_bytes(),
                                       params={"fuel": 1_000_000}, placement="remote"))
    assert rec.ok, rec.error
    assert rec.executor in (b.peer_id, c.peer_id)
    assert rec.output == b"desserts"
    assert rec.receipt is not None and rec.receipt["worker"] == rec.executor
    assert rec.cost == rec.metrics["fuel"] > 0


def _pushes_stored(node: NodeProc) -> float:
    text = node.client().request("GET", "/metrics").body.decode()
    line = next(x for x in text.splitlines() if x.startswith('inos_blob_pushes_total{outcome="stored"}'))
    return float(line.split()[-1])


def test_large_input_travels_by_digest(trio_nodes):
    a, b, _ = trio_nodes
    data = bytes(range(256)) * (3 * 4096)  # 3 MiB: over the inline limit: pushed to B before the request
    before = _pushes_stored(b)
    rec = a.client().run(SubmitRequest("compute.sha256", data, placement=f"peer:{b.peer_id}"))
    assert rec.ok, rec.error
    assert _pushes_stored(b) == before + 1, "the input went over /inos/blob-push"
    import hashlib

    assert rec.output == hashlib.sha256(data).digest() and rec.receipt["input_digest"] == blake3.blake3(data).hexdigest()


def test_replicas_agree_on_honest_peers(trio_nodes):
    a, b, c = trio_nodes
    rec = a.client().run(SubmitRequest("compute.sha256", b"abc", replicas=2, placement="remote"))
    assert rec.ok, rec.error
    assert {r["executor"] for r in rec.replicas} == {b.peer_id, c.peer_id}
    assert len({r["output_digest"] for r in rec.replicas}) == 1


def test_without_the_token_the_api_answers_401(trio_nodes):
    from inos_node.client import Client

    a = trio_nodes[0]
    with pytest.raises(ApiError) as info:
        Client(a.api, "not-the-token").peers()
    assert info.value.status == 401


def test_a_late_joiner_finds_the_mesh_through_bootstrap_and_gets_adverts(trio_nodes, tmp_path):
    a, b, c = trio_nodes
    d = start_node(tmp_path, "d", bootstrap=(a.address,))
    try:
        client = d.client()
        assert client.wait_peers(peer_id=b.peer_id, timeout_s=30)
        assert client.wait_peers(peer_id=c.peer_id, timeout_s=30)
        known = {p["peer_id"] for p in client.peers()}
        assert {a.peer_id, b.peer_id, c.peer_id} <= known
        rec = client.run(SubmitRequest("system.echo", b"hi", placement=f"peer:{c.peer_id}"))
        assert rec.ok and rec.output == b"hi"
    finally:
        d.stop()


def test_a_peer_killed_mid_capsule_is_retried_on_another(tmp_path):
    a = start_node(tmp_path, "a")
    workers = [start_node(tmp_path, n, bootstrap=(a.address,)) for n in ("w1", "w2")]
    try:
        client = a.client()
        assert client.wait_peers(serving="boids.evolve", count=2, timeout_s=30)
        victim: list[NodeProc] = []
        with client.events(timeout=180) as events:  # live before the job exists: no event is missed
            job_id = client.submit(SubmitRequest("boids.evolve", b"", params=EVOLVE, placement="remote",
                                                 timeout_s=120))
            for ev in events:
                if ev.get("job_id") != job_id:
                    continue
                if ev.get("type") == "running" and not victim:
                    victim.extend(w for w in workers if w.peer_id == ev.get("executor"))
                    assert victim, f"the job runs on a worker: {ev}"
                    victim[0].kill()
                if ev.get("type") == "finished":
                    break
        rec = client.job(job_id)
        assert victim, "the executor was killed while the job ran"
        assert rec.ok, rec.error
        survivor = next(w for w in workers if w is not victim[0])
        assert rec.executor == survivor.peer_id
        assert rec.receipt["worker"] == survivor.peer_id
    finally:
        for n in (a, *workers):
            n.stop()


def test_a_lying_peer_is_caught_by_replicas(tmp_path):
    a = start_node(tmp_path, "a")
    honest = start_node(tmp_path, "honest", bootstrap=(a.address,))
    liar = start_node(tmp_path, "liar", bootstrap=(a.address,), env={"INOS_TEST_CORRUPT_OUTPUTS": "1"})
    try:
        client = a.client()
        assert client.wait_peers(serving="compute.sha256", count=2, timeout_s=30)
        rec = client.run(SubmitRequest("compute.sha256", b"trust but verify", replicas=2, placement="remote"))
        # the two replicas disagree; this node breaks the tie itself and the majority wins
        assert rec.status == "success", rec.error
        assert rec.output == hashlib.sha256(b"trust but verify").digest()
        assert "disagreed" in rec.error and liar.peer_id in rec.error and honest.peer_id not in rec.error
        assert {r["executor"] for r in rec.replicas} == {honest.peer_id, liar.peer_id, "local"}
        assert all(r["receipt"] is not None for r in rec.replicas if r["executor"] != "local"), "receipts kept"
        assert len({r["output_digest"] for r in rec.replicas}) == 2
        peers = {p["peer_id"]: p for p in client.peers()}
        assert peers[liar.peer_id]["mismatches"] == 1 and peers[honest.peer_id]["mismatches"] == 0
        assert peers[liar.peer_id]["reputation"] < peers[honest.peer_id]["reputation"]
    finally:
        for n in (a, honest, liar):
            n.stop()


def test_one_node_per_data_dir_and_clean_shutdown(tmp_path, inos_cmd):
    import glob
    import signal

    a = start_node(tmp_path, "a")
    try:
        arena = a.info["arena"]
        assert glob.glob(f"/dev/shm/{arena}")
        p = subprocess.run([*inos_cmd, "node", "run", "--data-dir", str(a.data_dir), "--listen",
                            "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"], capture_output=True, timeout=60)
        assert p.returncode != 0 and b"in use by a running node" in p.stderr
        for name in ("identity.key", "api.token"):
            assert (a.data_dir / name).stat().st_mode & 0o777 == 0o600
        p = subprocess.run([*inos_cmd, "id", "--data-dir", str(a.data_dir), "--api", a.api, "--json"],
                           capture_output=True, timeout=60)
        doc = json.loads(p.stdout)
        assert doc["peer_id"] == a.peer_id and doc["did"].startswith("did:inos:")
        assert doc["addresses"] == a.info["addresses"] and doc["addresses"][0].endswith(f"/p2p/{a.peer_id}")
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(timeout=5) == 0, "SIGTERM: a clean exit within 5 s"
        assert not glob.glob(f"/dev/shm/{arena}*"), "the arena and its doorbells are unlinked"
    finally:
        a.kill()


async def test_garbage_frames_reset_the_stream_and_the_node_keeps_serving(tmp_path):
    """A verified peer (it passed the hello) sends malformed and oversized frames to a real node."""
    import secrets

    import trio
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from inos_node.daemon import DEV_NETWORK_ID
    from inos_node.identity import Identity
    from inos_node.net.delegation import PROTOCOL, open_protocol_stream
    from inos_node.net.hello import HelloGate
    from inos_node.net.host import HostConfig, connect, open_host

    node = await trio.to_thread.run_sync(lambda: start_node(tmp_path, "target"))
    try:
        me = Identity(secrets.token_bytes(32))
        async with open_host(me, HostConfig()) as host, trio.open_nursery() as nursery:
            gate = HelloGate(host, me, DEV_NETWORK_ID)
            await nursery.start(gate.run)
            await connect(host, node.address)
            with trio.fail_after(10):
                await gate.wait_verified(node.peer_id)
            frames = []

            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
            @given(st.one_of(
                st.binary(min_size=1, max_size=300).map(lambda b: len(b).to_bytes(4, "little") + b),  # garbage capnp
                st.integers(64 * 1024 * 1024, 2**32 - 1).map(lambda n: n.to_bytes(4, "little") + b"x" * 16),  # oversized
                st.just(b"\x00\x00\x00\x00"),  # zero-length frame
            ))
            def collect(frame: bytes) -> None:
                frames.append(frame)

            collect()
            for frame in frames:
                stream = await open_protocol_stream(host, PROTOCOL, node.peer_id)
                await stream.write(frame)
                with trio.fail_after(10):
                    try:
                        got = await stream.read(65536)  # the node resets the stream: EOF or an error
                    except Exception:  # noqa: BLE001 - a reset surfaces as one of several libp2p errors
                        got = b""
                assert got == b"", "a malformed frame gets no answer: the stream is reset"
            nursery.cancel_scope.cancel()
        # the node is up and serves a fresh request
        rec = await trio.to_thread.run_sync(lambda: node.client().run(SubmitRequest("system.echo", b"still here")))
        assert rec.ok and rec.output == b"still here"
        assert node.proc.poll() is None
    finally:
        await trio.to_thread.run_sync(node.stop)


def test_replicas_of_a_non_deterministic_capsule_are_refused(trio_nodes):
    a = trio_nodes[0]
    with pytest.raises(ApiError) as info:
        a.client().run(SubmitRequest("crypto.ed25519_keygen", b"", replicas=2))
    assert info.value.status == 400 and "not deterministic" in str(info.value)


def test_a_peer_that_hangs_is_left_behind_within_the_deadline(tmp_path):
    """A peer alive but silent (INOS_TEST_HANG=1) gets a backup after half the job's time."""
    import secrets

    from inos_node.identity import Identity
    from inos_node.net.host import peer_id_of

    seeds = sorted((secrets.token_bytes(32) for _ in range(2)), key=lambda s: peer_id_of(Identity(s)))
    for name, seed in (("hung", seeds[0]), ("good", seeds[1])):  # equal peers rank by peer id: hung first
        (tmp_path / name).mkdir()
        key = tmp_path / name / "identity.key"
        key.write_bytes(seed)
        key.chmod(0o600)
    a = start_node(tmp_path, "a", extra=("--prefer", "remote"))
    hung = start_node(tmp_path, "hung", bootstrap=(a.address,), env={"INOS_TEST_HANG": "1"})
    good = start_node(tmp_path, "good", bootstrap=(a.address,))
    try:
        client = a.client()
        assert client.wait_peers(serving="compute.sha256", count=2, timeout_s=30)
        with client.events(timeout=60) as events:
            job_id = client.submit(SubmitRequest("compute.sha256", b"are you there", placement="remote",
                                                 timeout_s=6))
            first = None
            for ev in events:
                if ev.get("job_id") != job_id:
                    continue
                if ev.get("type") == "running" and first is None:
                    first = ev["executor"]
                if ev.get("type") == "finished":
                    break
        rec = client.job(job_id)
        assert first == hung.peer_id, "the hung peer was tried first (it ranks first)"
        assert rec.ok, rec.error
        assert rec.executor == good.peer_id and rec.receipt["worker"] == good.peer_id
        import hashlib

        assert rec.output == hashlib.sha256(b"are you there").digest()
    finally:
        for n in (a, hung, good):
            n.stop()


def test_spot_checks_reject_a_lying_peer(tmp_path):
    """--verify-sample 1: every remote result of a deterministic capsule is re-run here first."""
    a = start_node(tmp_path, "a", extra=("--verify-sample", "1"))
    liar = start_node(tmp_path, "liar", bootstrap=(a.address,), env={"INOS_TEST_CORRUPT_OUTPUTS": "1"})
    honest = start_node(tmp_path, "honest", bootstrap=(a.address,))
    try:
        client = a.client()
        assert client.wait_peers(serving="compute.sha256", count=2, timeout_s=30)
        rec = client.run(SubmitRequest("compute.sha256", b"spot check", placement=f"peer:{liar.peer_id}"))
        assert rec.status == "failed" and "differs from this node's re-execution" in rec.error, rec
        rec = client.run(SubmitRequest("compute.sha256", b"spot check", placement=f"peer:{honest.peer_id}"))
        assert rec.status == "success" and rec.output == hashlib.sha256(b"spot check").digest()
        peers = {p["peer_id"]: p for p in client.peers()}
        assert peers[liar.peer_id]["mismatches"] == 1 and peers[honest.peer_id]["mismatches"] == 0
    finally:
        for n in (a, liar, honest):
            n.stop()


async def test_a_large_input_is_announced_in_the_dht_once_its_job_is_done(tmp_path):
    """The requester provides its large input by digest (after the job: see ``Mesh.run_remote``),
    so a peer lacking it can find who holds it: the worker process stores the record, and a DHT
    lookup from the requester finds the requester itself.  A small (inline) input is not announced."""
    import trio

    from inos_node.daemon import DaemonConfig, NodeDaemon
    from inos_node.testing.procs import free_port

    b = start_node(tmp_path, "b")
    try:
        a = NodeDaemon(DaemonConfig(data_dir=tmp_path / "a", listen=("/ip4/127.0.0.1/tcp/0",),
                                    bootstrap=(b.address,), api=f"127.0.0.1:{free_port()}", name="a"))
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            with trio.fail_after(30):
                await a.net.wait_peers(peer_id=b.peer_id, serving="compute.sha256", count=1)
            big, small = bytes(range(256)) * (3 * 4096), b"small"
            for data in (big, small):
                rec = await a.net.run_remote(f"announce-{len(data)}", SubmitRequest("compute.sha256", data),
                                             b.peer_id, 10_000)
                assert rec["status"] == "success" and rec["output"] == hashlib.sha256(data).digest()
            with trio.fail_after(30):
                while await a.net.dht.find_providers(blake3.blake3(big).digest()) != [a.net.peer_id]:
                    await trio.sleep(0.05)  # the announcement runs in the background: poll the network
            assert await a.net.dht.find_providers(blake3.blake3(small).digest()) == []
            nursery.cancel_scope.cancel()
    finally:
        b.stop()
