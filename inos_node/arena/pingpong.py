"""``PingPong``: a double buffer of numpy arrays with one writer and any number of readers.

Theory of operation (notes/arena.md §5.1)
-----------------------------------------
Frame ``f >= 1`` lives in slot ``f & 1``; the epoch is the last *complete* frame.  Each slot has
its own sequence word on its own cache line::

    writer   begin():  f = epoch + 1;  s = f & 1;  seq[s] = 0;  fence      -> view of slot s
             ... fill slot s ...
             commit(): fence;  seq[s] = f;  publish (fence, epoch = f, wake subscribers)

    reader   e = epoch;  s = e & 1;  fence;  seq[s] == e ?   (else lapped: retry)
             result = copy(slot s)  or  fn(slot s)
             fence;  seq[s] == e ?   (else the writer started frame e + 2 meanwhile: retry)

Why that is enough: the writer's ``seq[s] = 0`` is ordered before its first store into the slot,
and the reader's last ``seq[s]`` load after its last load from the slot.  So if any load saw
frame ``e + 2`` data, the final check sees 0 or ``e + 2`` and the read is discarded.  Sequence
values only grow, so there is no ABA.  A reader has a whole frame period of grace before it can
be lapped; one that needs longer should copy out (``read()`` does by default).

The block is allocated with a name in the region directory, and its descriptor line records
dtype and shape, so another process can ``PingPong.open(arena, name)``.  Structure-of-arrays
layouts, e.g. shape ``(6, N)`` float32, keep per-field rows contiguous (notes §5.3).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from inos_node.arena._barrier import full_fence
from inos_node.arena.layout import layout
from inos_node.errors import ArenaError

if TYPE_CHECKING:
    from inos_node.arena.arena import Arena, Block

__all__ = ["PingPong"]

R = TypeVar("R")
_SEQ_STRIDE = (layout.pp_seq1 - layout.pp_seq0) // 8


class PingPong:
    """Two slots of ``shape``/``dtype`` in one arena block, flipped by epoch ``epoch_index``."""

    def __init__(
        self, arena: Arena, block: Block, shape: tuple[int, ...], dtype: np.dtype[Any], epoch_index: int
    ) -> None:
        self.arena = arena
        self.block = block
        self.name = block.name
        self.shape = shape
        self.dtype = dtype
        self.epoch_index = epoch_index
        self.laps = 0  # reads discarded because the writer overtook them (statistics)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.stride = _slot_stride(nbytes)
        base = block.offset
        self._seq: Any = arena._words(base + layout.pp_seq0, layout.pp_seq1 - layout.pp_seq0 + 8)
        first = base + layout.pp_header_size
        self._slots: list[Any] = [arena.ndarray(first + s * self.stride, dtype, shape) for s in (0, 1)]
        self._readonly: list[Any] = []
        for slot in self._slots:
            ro = slot.view()
            ro.flags.writeable = False
            self._readonly.append(ro)
        self._pending = 0
        arena._dependents.add(self)

    # ------------------------------------------------------------------ making / finding
    @classmethod
    def create(
        cls, arena: Arena, name: str, shape: int | tuple[int, ...], dtype: Any, epoch_index: int
    ) -> PingPong:
        """Allocate and describe a new double buffer; the caller becomes the writer of
        ``epoch_index`` (reserve one with ``arena.reserve_epoch``)."""
        shape = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
        dt = np.dtype(dtype)
        if not 1 <= len(shape) <= layout.pp_max_dims or any(d <= 0 for d in shape):
            raise ArenaError(f"ping-pong shape {shape} must have 1-{layout.pp_max_dims} positive dimensions")
        if dt.hasobject or len(dt.str) > layout.pp_dtype_len:
            raise ArenaError(f"ping-pong dtype {dt} cannot live in shared memory")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        block = arena.allocate(
            layout.pp_header_size + 2 * _slot_stride(nbytes), name, epoch_index=epoch_index
        )
        head = arena.view(block.offset, layout.pp_header_size)
        head[:] = bytes(layout.pp_header_size)
        head[layout.pp_dtype : layout.pp_dtype + layout.pp_dtype_len] = dt.str.encode("ascii").ljust(
            layout.pp_dtype_len, b"\0"
        )
        dims = arena.ndarray(block.offset + layout.pp_ndim, "<u8", 1 + layout.pp_max_dims)
        dims[1 : 1 + len(shape)] = shape
        dims[0] = len(shape)
        del head, dims
        return cls(arena, block, shape, dt, epoch_index)

    @classmethod
    def open(cls, arena: Arena, name: str) -> PingPong:
        """The double buffer ``name`` that another process (or object) created."""
        block = arena.find_block(name)
        if block is None:
            raise ArenaError(f"arena {arena.name} has no ping-pong block {name!r}")
        if block.epoch_index is None:
            raise ArenaError(f"block {name!r} has no epoch index: not a ping-pong buffer")
        head = bytes(arena.view(block.offset, layout.pp_header_size))
        dtype = np.dtype(
            head[layout.pp_dtype : layout.pp_dtype + layout.pp_dtype_len].rstrip(b"\0").decode("ascii")
        )
        dims = np.frombuffer(head, "<u8", 1 + layout.pp_max_dims, layout.pp_ndim).tolist()
        ndim = dims[0]
        if not 1 <= ndim <= layout.pp_max_dims:
            raise ArenaError(f"block {name!r} has no valid ping-pong descriptor (ndim {ndim})")
        shape = tuple(int(d) for d in dims[1 : 1 + ndim])
        return cls(arena, block, shape, dtype, block.epoch_index)

    # ------------------------------------------------------------------ writer
    @property
    def frame(self) -> int:
        """The last complete frame (the epoch)."""
        return self.arena.epoch(self.epoch_index)

    def begin(self) -> np.ndarray:
        """A writable view of the slot of the next frame (invalidated for readers first)."""
        if self._pending:
            raise ArenaError(f"ping-pong {self.name!r}: begin() twice without commit()")
        frame = self.arena.epoch(self.epoch_index) + 1
        slot = frame & 1
        self._seq[slot * _SEQ_STRIDE] = 0
        full_fence()  # seq[s] = 0 before any store into the slot
        self._pending = frame
        return self._slots[slot]

    def commit(self) -> int:
        """Mark the frame complete and publish it; returns the frame number."""
        frame = self._pending
        if not frame:
            raise ArenaError(f"ping-pong {self.name!r}: commit() without begin()")
        full_fence()  # slot stores before seq[s] = frame
        self._seq[(frame & 1) * _SEQ_STRIDE] = frame
        self._pending = 0
        published = self.arena.publish(self.epoch_index)  # fences, epoch = frame, wakes readers
        if published != frame:
            raise ArenaError(
                f"ping-pong {self.name!r}: epoch {self.epoch_index} moved to {published}, expected "
                f"{frame}: it has a second writer"
            )
        return frame

    # ------------------------------------------------------------------ readers
    def read(
        self,
        fn: Callable[[np.ndarray], R] | None = None,
        *,
        out: np.ndarray | None = None,
        max_retries: int = 1000,
    ) -> tuple[int, Any] | None:
        """``(frame, data)`` for the latest complete frame, validated; None before the first.

        Without ``fn`` the slot is copied (into ``out`` if given) and the copy returned.  With
        ``fn`` it is called on a read-only view of the slot and its result returned once the
        slot proved unchanged (compute-then-validate); ``fn`` must not keep the view.

        Raises:
            ArenaError: lapped ``max_retries`` times in a row (the reader is far too slow).
        """
        epochs_of = self.arena.epoch
        index = self.epoch_index
        seq = self._seq
        for attempt in range(max_retries):
            frame = epochs_of(index)
            if frame == 0:
                return None
            slot = frame & 1
            full_fence()
            if seq[slot * _SEQ_STRIDE] != frame:
                self.laps += 1
                if attempt > 16:
                    os.sched_yield()
                continue
            view = self._readonly[slot]
            if fn is None:
                if out is None:
                    result: Any = view.copy()
                else:
                    np.copyto(out, view)
                    result = out
            else:
                result = fn(view)
            full_fence()
            if seq[slot * _SEQ_STRIDE] == frame:
                return frame, result
            self.laps += 1
        raise ArenaError(f"ping-pong {self.name!r}: lapped by the writer {max_retries} times in a row")

    # ------------------------------------------------------------------ lifetime
    def _release(self) -> None:
        if self._seq is not None:
            self._seq.release()
        self._seq = None
        self._slots = []
        self._readonly = []

    def close(self) -> None:
        """Drop this object's views (the block stays; the creator frees it with ``free()``)."""
        self.arena._dependents.discard(self)
        self._release()

    def free(self) -> None:
        """Close and give the block back to the arena (creator only, once readers are done)."""
        self.close()
        self.arena.free(self.block)


def _slot_stride(nbytes: int) -> int:
    align = layout.alloc_align
    return max(align, -(-nbytes // align) * align)
