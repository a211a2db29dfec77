@0x8e4303369c0e54c4;
# The shared arena ("SAB") layout of one inos node: the single source of truth.
# Python reads these constants at import (inos_node/arena/layout.py) and never repeats them.
#
#   offset 0                 header page         (headerSize bytes)
#   epochTableOffset         epoch table         (epochCount lines of cacheLine bytes;
#                                                 word 0 of each line is the epoch counter)
#   processTableOffset       subscriber table    (maxProcesses slots of processSlotSize bytes)
#   regionTableOffset        region directory    (maxRegions entries of regionEntrySize bytes)
#   fixedRegionsOffset       fixed regions, in this order: inbox, outbox, registry, diagnostics
#   dynamic region           the rest, handed out by the block allocator (allocAlign-aligned)
#
# Every multi-byte value is little-endian. Every counter is 8-byte aligned on its own line.

struct Constants {}

const magic :UInt64 = 0x414e455241534f4e;   # "NOSARENA" read as little-endian bytes
const layoutVersion :UInt32 = 1;
const cacheLine :UInt32 = 64;
const pageSize :UInt32 = 4096;

# --- header (page 0), byte offsets ---
const headerSize :UInt32 = 4096;
const hdrMagic :UInt32 = 0;            # UInt64
const hdrVersion :UInt32 = 8;          # UInt32
const hdrTotalSize :UInt32 = 16;       # UInt64, bytes of the whole segment
const hdrCreatorPid :UInt32 = 24;      # UInt64
const hdrCreatedNs :UInt32 = 32;       # UInt64, CLOCK_REALTIME ns
const hdrEpochCount :UInt32 = 40;      # UInt32
const hdrRegionCount :UInt32 = 44;     # UInt32
const hdrProcGen :UInt32 = 64;         # UInt64 on its own line: process-table generation
const hdrAllocLock :UInt32 = 128;      # UInt64 on its own line: allocator generation

# --- epoch table ---
const epochTableOffset :UInt32 = 4096;
const epochCount :UInt32 = 256;

# --- subscriber process table ---
const processTableOffset :UInt32 = 20480;   # epochTableOffset + epochCount * cacheLine
const maxProcesses :UInt32 = 64;
const processSlotSize :UInt32 = 64;         # pid u64 @0, interest bitmap 256 bits @8, started ns @40
const procPid :UInt32 = 0;
const procMask :UInt32 = 8;
const procStarted :UInt32 = 40;

# --- region directory ---
const regionTableOffset :UInt32 = 24576;
const maxRegions :UInt32 = 32;
const regionEntrySize :UInt32 = 64;   # name 32 bytes (ASCII, NUL padded) @0, offset u64 @32,
                                      # size u64 @40, epoch index u32 @48, kind u32 @52
const regionName :UInt32 = 0;
const regionNameLen :UInt32 = 32;
const regionOffset :UInt32 = 32;
const regionSize :UInt32 = 40;
const regionEpoch :UInt32 = 48;
const regionKind :UInt32 = 52;

# --- fixed regions ---
const fixedRegionsOffset :UInt32 = 32768;
const inboxSize :UInt32 = 2097152;       # capsule request rings, one lane per worker
const outboxSize :UInt32 = 2097152;      # capsule result rings, one lane per worker
const registrySize :UInt32 = 65536;      # unit registry: capnp UnitRegistry message
const diagnosticsSize :UInt32 = 65536;   # diagnostics: capnp Diagnostics message
const allocAlign :UInt32 = 64;           # dynamic blocks are 64-byte aligned
const minArenaSize :UInt64 = 8388608;    # 8 MiB: everything fixed plus some dynamic room
const defaultArenaSize :UInt64 = 134217728;  # 128 MiB

# --- epoch indices (one writer each) ---
const idxControl :UInt32 = 0;        # shutdown / control generation
const idxInbox :UInt32 = 1;          # capsule requests written to the inbox rings (engine writes)
const idxOutbox :UInt32 = 8;         # results of worker lane i are published on idxOutbox + i
const maxWorkerLanes :UInt32 = 8;    # so indices 8..15 belong to the worker lanes (one writer each)
const idxRegistry :UInt32 = 3;       # unit registry republished
const idxDiagnostics :UInt32 = 4;    # diagnostics republished
const idxAllocator :UInt32 = 5;      # allocator state changed
const idxBoids :UInt32 = 6;          # boids frame flipped (ping-pong)
const idxFirstDynamic :UInt32 = 16;  # indices >= this are handed out to units on request

# --- region kinds ---
const kindRing :UInt32 = 1;
const kindMessage :UInt32 = 2;
const kindDynamic :UInt32 = 3;
const kindBlock :UInt32 = 4;

# --- liveness: fcntl open-file-description (OFD) locks on single bytes ---
# The owner holds a shared lock on byte hdrOwnerLock for as long as the arena is open, and each
# subscriber holds one on the first byte of its process-table slot.  The kernel drops them when
# the process dies, so "lock free" means "gone" even after the pid has been reused.
const hdrOwnerLock :UInt32 = 192;
# Set to 1 (and procGen bumped) by any process that cannot use membarrier(2): publishers then
# fence between their epoch store and their process-table read (see arena/_barrier.py).
const hdrFenceMode :UInt32 = 48;       # UInt32

# --- epoch lines (epochTableOffset + index * cacheLine) ---
const epochValue :UInt32 = 0;          # UInt64 counter, one writer
const epochName :UInt32 = 32;          # ASCII name, NUL padded, written once (fixed or reserved)
const epochNameLen :UInt32 = 32;
const noEpoch :UInt32 = 0xffffffff;    # region entry with no epoch index

# --- message regions (seqlock): the header line, then the payload ---
const msgSeq :UInt32 = 0;              # UInt64, odd while the writer copies
const msgLength :UInt32 = 8;           # UInt64 payload bytes
const msgHeaderSize :UInt32 = 64;      # the payload starts here (8-aligned for capnp)

# --- ring lanes: the inbox and outbox regions are split into equal lanes ---
const ringHead :UInt32 = 0;            # UInt64 bytes consumed, written by the consumer only
const ringTail :UInt32 = 64;           # UInt64 bytes produced, written by the producer only
const ringHeaderSize :UInt32 = 128;    # records follow: UInt64 length, payload, pad
const ringRecordAlign :UInt32 = 8;

# --- dynamic heap: the allocator's state, at the start of the dynamic region ---
const heapFreeHead :UInt32 = 0;        # UInt64 heap offset of the first free block, 0 = none
const heapUsedBytes :UInt32 = 8;       # UInt64 bytes in used blocks, headers included
const heapUsedBlocks :UInt32 = 16;     # UInt64
const heapCapacity :UInt32 = 24;       # UInt64 bytes of the heap, this header included
const heapHeaderSize :UInt32 = 64;
const blockHeaderSize :UInt32 = 64;    # each block: one line of metadata, then the payload
const blkSize :UInt32 = 0;             # UInt64 bytes of the block, header included
const blkTag :UInt32 = 8;              # UInt64 blockTagFree or blockTagUsed
const blkNextFree :UInt32 = 16;        # UInt64 next free block (address order), 0 = last
const blkLength :UInt32 = 24;          # UInt64 bytes asked for
const blockTagFree :UInt64 = 0x45455246434f4c42;   # "BLOCFREE"
const blockTagUsed :UInt64 = 0x44455355434f4c42;   # "BLOCUSED"

# --- ping-pong blocks: descriptor line, two seq lines, then the two slots ---
const ppDtype :UInt32 = 0;             # numpy dtype string, ASCII, NUL padded ("<f4")
const ppDtypeLen :UInt32 = 16;
const ppNdim :UInt32 = 16;             # UInt64
const ppShape :UInt32 = 24;            # UInt64 x ppMaxDims
const ppMaxDims :UInt32 = 5;
const ppSeq0 :UInt32 = 64;             # UInt64 frame complete in slot 0 (0 while written)
const ppSeq1 :UInt32 = 128;            # UInt64 frame complete in slot 1
const ppHeaderSize :UInt32 = 192;      # slot 0 starts here, slot 1 one slot stride later
