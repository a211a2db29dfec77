@0xac3f582380ec1705;
# /inos/delegate/1.0.0 and /inos/blob/1.0.0: capsules run by a peer, and the bytes they need.
#
# Framing (both protocols): every frame is a little-endian UInt32 length, then that many bytes of
# a single-segment capnp message (the standard segment-table encoding of to_bytes()). A frame
# over the receiver's limit resets the stream. Streams are long-lived and multiplexed: many
# requests may be in flight on one stream, correlated by requestId.

using Capsule = import "/compute/v1/capsule.capnp";

struct DelegateRequest {
  requestId @0 :UInt64;
  union {
    run @1 :Capsule.JobRequest;     # input inline (small) or by digest (fetched over /inos/blob)
    cancel @2 :Void;                # cancel the request with this requestId
  }
  requester @3 :Text;               # the requester's peer id
  deadlineUnixMs @4 :UInt64;        # absolute deadline; the worker stops work after it
  inputDigest @5 :Data;             # blake3 of the input bytes (always set for run)
  escrow @6 :Data;                  # on a network with a ledger: the requester's signed
                                    # escrow_lock block for this job (economy/v1/ledger.capnp Block)
  escrowChain @7 :List(Data);       # the requester's blocks just before the lock (oldest first):
                                    # a worker that has not heard of them yet applies them first
}

struct Receipt {
  # The worker's signed statement of what it ran. The signature covers the canonical capnp
  # bytes of `body` (a ReceiptBody message), by the worker's Ed25519 key.
  body @0 :Data;
  signature @1 :Data;
  publicKey @2 :Data;               # the worker's Ed25519 public key (its peer id derives from it)
}

struct ReceiptBody {
  jobId @0 :Text;
  requester @1 :Text;               # peer id
  worker @2 :Text;                  # peer id
  capsule @3 :Text;                 # "library.method"
  inputDigest @4 :Data;             # blake3
  outputDigest @5 :Data;            # blake3
  cost @6 :UInt64;
  metrics @7 :Capsule.Metrics;
  finishedUnixMs @8 :UInt64;
}

struct DelegateResponse {
  requestId @0 :UInt64;
  result @1 :Capsule.JobResult;     # output inline, or by digest (fetch it over /inos/blob)
  receipt @2 :Receipt;              # present when status is success
}

struct BlobRequest {
  requestId @0 :UInt64;
  digest @1 :Data;                  # blake3 of the whole content
  offset @2 :UInt64;
  length @3 :UInt32;                # at most the chunk limit (1 MiB)
}

struct BlobResponse {
  requestId @0 :UInt64;
  union {
    chunk @1 :Data;
    notFound @2 :Void;
    error @3 :Text;
  }
  totalLength @4 :UInt64;
}

# /inos/blob-push/1.0.0: a requester hands a large input to the worker it is about to delegate
# to, on a stream of its own: BlobOffer, then (on `send`) exactly `length` raw bytes, then the
# worker's verdict. One offer per stream.
struct BlobOffer {
  digest @0 :Data;                  # blake3 of the whole content
  length @1 :UInt64;
}

struct BlobOfferAnswer {
  union {
    send @0 :Void;                  # go on: write the bytes
    have @1 :Void;                  # already held: nothing to send
    refused @2 :Text;               # too large, no room, busy: fetch it the usual way
    stored @3 :Void;                # (after the bytes) verified and stored
    corrupt @4 :Text;               # (after the bytes) they do not hash to the digest
  }
}
