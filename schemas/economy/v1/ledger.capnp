@0xffaae40a43f9241b;
# The credits ledger (issue 4): one chain of signed blocks per account (a Nano-style block
# lattice), gossiped on the ledger topic and fetched over /inos/ledger-sync/1.0.0.
#
# Hashing and signing: a block travels as a Block = (body, signature), where `body` holds the
# canonical bytes of a BlockBody message (fields set in ordinal order into a fresh single-segment
# message). hash = blake3(body); signature = Ed25519 by the account key over the 32-byte hash.
# Verifiers hash the bytes they received; nobody re-encodes to verify.
#
# Sync framing: like /inos/delegate, a little-endian UInt32 length, then one single-segment
# message; a frame over the receiver's limit resets the stream.

struct Payment {
  account @0 :Data;                # 32-byte account id (blake3 of the Ed25519 public key)
  amount @1 :UInt64;               # escrowLock: max pay; settle: pay; slash: share
}

struct BlockBody {
  account @0 :Data;                # 32 bytes, = blake3(publicKey)
  publicKey @1 :Data;              # 32-byte Ed25519 key
  height @2 :UInt64;               # 1, 2, 3 ...
  previous @3 :Data;               # hash of the block at height-1; 32 zero bytes at height 1
  type @4 :UInt8;                  # 1 transfer, 2 escrowLock, 3 settle, 4 refund, 5 stake, 6 unstake, 7 slash
  amount @5 :UInt64;
  counterparty @6 :Data;           # transfer: recipient; slash: offender; else empty
  job @7 :Text;                    # escrowLock/settle/refund/slash: the job id (<= 128 chars)
  timestampMs @8 :UInt64;
  credits @9 :UInt64;              # cumulative credits from others the author had seen when signing
  balance @10 :UInt64;             # the author's spendable balance after this block
  payments @11 :List(Payment);     # <= 16
  deadlineMs @12 :UInt64;          # escrowLock: the requester may refund after this (unix ms)
  refHeight @13 :UInt64;           # slash: the offender's chain is cut at this height
  evidence @14 :List(Data);        # settle/slash: encoded Receipt messages (p2p/v1/delegation.capnp), <= 16 x 4 KiB
}

struct Block {
  body @0 :Data;                   # canonical BlockBody bytes
  signature @1 :Data;              # Ed25519 over blake3(body)
}

struct EquivocationProof {
  # Two different validly signed blocks (encoded Block messages) of one account at one height.
  a @0 :Data;
  b @1 :Data;
}

struct Head {
  account @0 :Data;
  height @1 :UInt64;
  head @2 :Data;                   # hash of the block at `height`
}

struct SyncRequest {
  requestId @0 :UInt64;
  union {
    heads @1 :Void;                # every account's (height, head): what a late joiner compares
    blocks :group {                # an account's chain from `fromHeight`, at most `limit` blocks
      account @2 :Data;
      fromHeight @3 :UInt64;
      limit @4 :UInt32;
    }
    claim :group {                 # a worker presents its receipt for a job whose escrow the
      job @5 :Text;                # requester (the node asked) has neither settled nor refunded
      receipt @6 :Data;            # an encoded Receipt (p2p/v1/delegation.capnp)
    }
  }
}

struct SyncResponse {
  requestId @0 :UInt64;
  heads @1 :List(Head);
  blocks @2 :List(Data);           # encoded Block messages, ascending height
  proofs @3 :List(EquivocationProof);
  error @4 :Text;                  # non-empty: the request failed (the lists are empty)
}
