"""``/inos/ledger-sync/1.0.0``: fetch ledger heads, chains and equivocation proofs from a peer.

Gossip carries new blocks as they are made; this protocol fills what gossip cannot:

  * a node that joins late (or comes back from a partition) asks a peer for every account's
    (height, head) and then for the blocks it lacks, account by account;
  * a block whose predecessor is missing is held by the ledger, which names the gap
    (account, from height); the node fetches that range from the peer that sent the block.

Requests and responses are size-limited capnp frames (``wire.ledger``) over a long-lived,
multiplexed stream per peer (``CorrelatedClient``); the server answers from a ``SyncSource``
(the node's ledger) and never raises into py-libp2p: a malformed frame resets the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from libp2p.custom_types import TProtocol

from inos_node.errors import PeerError
from inos_node.net.delegation import open_protocol_stream
from inos_node.net.framing import (
    Admit,
    CorrelatedClient,
    InboundStreams,
    encode_frame,
    serve_frames,
)
from inos_node.wire.ledger import (
    MAX_SYNC_BYTES,
    SyncBlocks,
    SyncClaim,
    SyncHead,
    SyncHeads,
    SyncResponse,
    decode_sync_request,
    decode_sync_response,
    encode_sync_request,
    encode_sync_response,
)

__all__ = ["PROTOCOL", "LedgerSyncClient", "LedgerSyncServer", "SyncSource"]

PROTOCOL = TProtocol("/inos/ledger-sync/1.0.0")
MAX_BLOCKS_PER_RESPONSE = 256
_MAX_REQUEST_FRAME = 4096
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SyncSource:
    """What the server answers from (the node's ledger, read synchronously).

    heads: every account's (account, height, head hash).
    blocks: encoded blocks of ``account`` from ``from_height`` on, at most ``limit``.
    proofs: encoded equivocation proofs (a, b).
    """

    heads: Callable[[], list[tuple[bytes, int, bytes]]]
    blocks: Callable[[bytes, int, int], list[bytes]]
    proofs: Callable[[], list[tuple[bytes, bytes]]]
    claim: Callable[[str, bytes, str], str] | None = None  # (job, receipt, peer) -> "" or why not


class LedgerSyncServer:
    def __init__(
        self, host: Any, source: SyncSource, *, admit: Admit | None = None, max_streams: int = 64
    ) -> None:
        self._host = host
        self._source = source
        self._inbound = InboundStreams("ledger-sync", max_streams=max_streams, max_per_peer=2, admit=admit)
        self.streams_reset = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._inbound.run(self._host, PROTOCOL, self._serve, task_status=task_status)

    async def _serve(self, stream: Any, peer_id: str) -> None:
        async def on_frame(frame: bytes) -> None:
            req = decode_sync_request(frame, max_bytes=_MAX_REQUEST_FRAME)
            payload = encode_sync_response(self.answer(req, peer_id), max_bytes=MAX_SYNC_BYTES)
            await stream.write(encode_frame(payload, limit=MAX_SYNC_BYTES))

        if await serve_frames(stream, peer_id, name="ledger-sync", limit=_MAX_REQUEST_FRAME,
                              on_frame=on_frame):
            self.streams_reset += 1

    def answer(self, req: SyncHeads | SyncBlocks | SyncClaim, peer_id: str = "") -> SyncResponse:
        if isinstance(req, SyncClaim):
            if self._source.claim is None:
                return SyncResponse(req.request_id, error="this node takes no claims")
            return SyncResponse(req.request_id, error=self._source.claim(req.job, req.receipt, peer_id))
        if isinstance(req, SyncHeads):
            heads = tuple(SyncHead(a, h, head) for a, h, head in self._source.heads())
            return SyncResponse(req.request_id, heads=heads, proofs=tuple(self._source.proofs()))
        if len(req.account) != 32:
            return SyncResponse(req.request_id, error=f"an account id is 32 bytes, got {len(req.account)}")
        limit = max(1, min(req.limit or MAX_BLOCKS_PER_RESPONSE, MAX_BLOCKS_PER_RESPONSE))
        blocks: list[bytes] = []
        size = 0
        for raw in self._source.blocks(req.account, max(1, req.from_height), limit):
            size += len(raw) + 16
            if size > MAX_SYNC_BYTES // 2:  # stay well under the frame limit; the caller asks again
                break
            blocks.append(raw)
        return SyncResponse(req.request_id, blocks=tuple(blocks))


def _response_id(resp: SyncResponse) -> int:
    return resp.request_id


class LedgerSyncClient:
    def __init__(self, host: Any) -> None:
        self._core: CorrelatedClient[SyncResponse] = CorrelatedClient(
            name="ledger-sync",
            open_stream=partial(open_protocol_stream, host, PROTOCOL),
            decode=partial(decode_sync_response, max_bytes=MAX_SYNC_BYTES),
            response_id=_response_id,
            max_frame=MAX_SYNC_BYTES,
            max_in_flight=8,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._core.run(task_status=task_status)

    async def _call(self, peer_id: str, req: SyncHeads | SyncBlocks) -> SyncResponse:
        resp = await self._core.call(peer_id, req.request_id, encode_sync_request(req))
        if resp.error:
            raise PeerError(f"peer {peer_id} refused a ledger sync request: {resp.error}")
        return resp

    async def claim(self, peer_id: str, job: str, receipt: bytes) -> None:
        """Present our receipt for ``job`` to its requester ``peer_id`` (who then settles).

        Raises:
            PeerError: unreachable, or the requester refused the claim (the reason is given).
        """
        await self._call(peer_id, SyncClaim(self._core.next_request_id(), job, receipt))

    async def heads(self, peer_id: str) -> SyncResponse:
        """Every account's head at ``peer_id`` (and the equivocation proofs it holds)."""
        return await self._call(peer_id, SyncHeads(self._core.next_request_id()))

    async def blocks(
        self, peer_id: str, account: bytes, from_height: int, limit: int = MAX_BLOCKS_PER_RESPONSE
    ) -> list[bytes]:
        resp = await self._call(
            peer_id, SyncBlocks(self._core.next_request_id(), account, from_height, limit)
        )
        return list(resp.blocks)
