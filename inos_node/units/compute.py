"""The ``compute`` library: hashing and compression of the job input.

Methods (all cost ``mib``: ceil(input MiB), at least 1; all deterministic; ``thread`` executor):

* ``compute.blake3``: no params; output the 32-byte BLAKE3 digest of the input.
* ``compute.sha256``: no params; output the 32-byte SHA-256 digest of the input.
* ``compute.brotli_compress``: ``quality`` 0..11 (default 5), ``lgwin`` 10..24 (default 22);
  output a brotli stream (generic mode).
* ``compute.brotli_decompress``: ``max_output_mb`` 1..65536 (default 1024); output the
  decompressed bytes.

Rules this module lives by:

* The input is a read-only memoryview that may be arena shared memory (up to the node's input
  limit, 256 MiB by default).  It is handed to blake3, hashlib and brotli as it is: all of them
  take any contiguous buffer and release the GIL while they work, so the methods run on the
  ``thread`` executor and never copy the input (``bytes(view)`` of a big region holds the GIL
  and costs more than the hash itself; see ``notes/arena.md`` §3).
* blake3 uses its own worker threads (``max_threads=AUTO``) from ``BLAKE3_THREADS_FROM`` bytes
  on.  Measured on a 2-core box: single-threaded 6.2 GB/s and AUTO 10.7 GB/s at 1 MiB, AUTO
  *slower* (3.3 vs 5.9 GB/s) at 64 KiB, break-even near 256 KiB.  1 MiB leaves margin for
  machines where several jobs share the cores.
* Decompression is incremental (``brotli.Decompressor`` with ``output_buffer_limit``) and stops
  as soon as the output passes ``max_output_mb``, so a small bomb cannot make the node allocate
  gigabytes before it is refused.  The refusal is ``BudgetExceeded(kind="memory")``; a stream
  that is corrupt, truncated or followed by trailing bytes is ``CapsuleFailed``.
"""

from __future__ import annotations

import hashlib

import blake3
import brotli  # type: ignore[import-untyped]  # no stubs, no py.typed

from inos_node.engine.spec import Call, Library, Method, Param, UnitContext
from inos_node.errors import BudgetExceeded, CapsuleFailed

__all__ = ["BLAKE3_THREADS_FROM", "make"]

MIB = 1024 * 1024

BLAKE3_THREADS_FROM = 1 * MIB
"""Inputs of at least this many bytes are hashed with blake3's multithreaded mode."""

# Decompression feeds at most _IN_STEP input bytes per call (the decoder buffers what it cannot
# consume yet, so this bounds that internal copy) and asks for at most _OUT_STEP output bytes
# per call (brotli may overshoot the limit by about 2x, measured).
_IN_STEP = 1 * MIB
_OUT_STEP = 4 * MIB


def blake3_threads(nbytes: int) -> int:
    """The ``max_threads`` compute.blake3 uses for an input of ``nbytes`` (benchmarks match it)."""
    return blake3.blake3.AUTO if nbytes >= BLAKE3_THREADS_FROM else 1


def _blake3(call: Call) -> bytes:
    view = call.input
    if view.nbytes >= BLAKE3_THREADS_FROM:
        return blake3.blake3(view, max_threads=blake3.blake3.AUTO).digest()
    return blake3.blake3(view).digest()


def _sha256(call: Call) -> bytes:
    return hashlib.sha256(call.input).digest()


def _brotli_compress(call: Call) -> bytes:
    packed: bytes = brotli.compress(call.input, quality=call.params["quality"], lgwin=call.params["lgwin"])
    return packed


def _brotli_decompress(call: Call) -> bytes:
    view = call.input
    limit = call.params["max_output_mb"] * MIB
    decoder = brotli.Decompressor()
    chunks: list[bytes] = []
    produced = 0
    pos = 0
    try:
        while True:
            # The decoder must be given empty input until it can accept more (its contract).
            if pos < view.nbytes and decoder.can_accept_more_data():
                piece = view[pos : pos + _IN_STEP]
                pos += piece.nbytes
            else:
                piece = view[0:0]
            out = decoder.process(piece, output_buffer_limit=min(_OUT_STEP, limit - produced + 1))
            produced += len(out)
            if produced > limit:
                raise BudgetExceeded(
                    f"compute.brotli_decompress: output passed max_output_mb={call.params['max_output_mb']} "
                    f"({limit} bytes) after {pos} of {view.nbytes} input bytes; refused "
                    "(raise max_output_mb if the data is expected to be this large)",
                    kind="memory",
                    used=produced,
                    limit=limit,
                )
            if out:
                chunks.append(out)
            if decoder.is_finished():
                break
            if not out and not piece.nbytes and decoder.can_accept_more_data():
                raise CapsuleFailed(
                    f"compute.brotli_decompress: input is not a valid brotli stream "
                    f"(truncated: the stream ends before its last block, {view.nbytes} bytes read)"
                )
    except brotli.error as exc:
        raise CapsuleFailed(
            f"compute.brotli_decompress: input is not a valid brotli stream "
            f"(decoder error within the first {pos} of {view.nbytes} bytes)"
        ) from exc
    if pos < view.nbytes:
        raise CapsuleFailed(
            f"compute.brotli_decompress: input is not a valid brotli stream "
            f"({view.nbytes - pos} trailing bytes after the end of the stream)"
        )
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


# Under 64 KiB a hash costs 2-40 us: less than a thread hop (~40-80 us), so it runs inline.
_INLINE_HASH_BELOW = 64 * 1024


def make(ctx: UnitContext) -> Library:
    del ctx  # the compute methods need nothing from the node
    return Library(
        name="compute",
        summary="Hashing (BLAKE3, SHA-256) and brotli compression of the input, without copying it.",
        methods=(
            Method(
                name="compute.blake3",
                fn=_blake3,
                executor="thread",
                inline_below=_INLINE_HASH_BELOW,
                cost="mib",
                summary="32-byte BLAKE3 digest of the input (multithreaded from 1 MiB).",
            ),
            Method(
                name="compute.sha256",
                fn=_sha256,
                executor="thread",
                inline_below=_INLINE_HASH_BELOW,
                cost="mib",
                summary="32-byte SHA-256 digest of the input.",
            ),
            Method(
                name="compute.brotli_compress",
                fn=_brotli_compress,
                executor="thread",
                cost="mib",
                params=(
                    Param(
                        "quality", "int", default=5, minimum=0, maximum=11, doc="higher is smaller and slower"
                    ),
                    Param("lgwin", "int", default=22, minimum=10, maximum=24, doc="log2 of the window size"),
                ),
                summary="Brotli-compress the input (generic mode).",
            ),
            Method(
                name="compute.brotli_decompress",
                fn=_brotli_decompress,
                executor="thread",
                cost="mib",
                params=(
                    Param(
                        "max_output_mb",
                        "int",
                        default=1024,
                        minimum=1,
                        maximum=65536,
                        doc="refuse (budgetExceeded) once the output passes this many MiB",
                    ),
                ),
                summary="Decompress a brotli stream; corrupt input fails; over max_output_mb is refused.",
            ),
        ),
    )
