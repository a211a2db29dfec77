@0xd5e1da8a4b6327a0;
# Capsule jobs: the library proxy compute_execute(library, method, input, params) at the edge.

struct ArenaSlice {
  offset @0 :UInt64;      # byte offset in the node's arena
  length @1 :UInt64;
}

struct Param {
  key @0 :Text;
  value @1 :Text;         # JSON text of the value ("5", "\"abc\"", "[1,2]")
}

struct JobRequest {
  jobId @0 :Text;
  library @1 :Text;
  method @2 :Text;
  input :union {
    inline @3 :Data;
    digest @4 :Data;      # blake3 digest (32 bytes) of content held elsewhere
    arena @5 :ArenaSlice; # bytes already in the local arena (passed by reference)
  }
  params @6 :List(Param);
  budget @7 :UInt64;      # max cost in credits' smallest unit; 0 = no limit
  priority @8 :Int32;
  deadlineMs @9 :UInt64;  # relative wall-clock budget in ms; 0 = default
  replicas @10 :UInt32;
  module @11 :Data;       # optional WASM/WAT module bytes for wasm.run (or use moduleDigest)
  moduleDigest @12 :Data;
}

enum Status {
  success @0;
  failed @1;
  invalidParams @2;
  budgetExceeded @3;
  timeout @4;
  outOfFuel @5;
  capacityExceeded @6;
  cancelled @7;
}

struct Metrics {
  wallNs @0 :UInt64;
  cpuNs @1 :UInt64;
  fuel @2 :UInt64;
  peakMemoryBytes @3 :UInt64;
  inputBytes @4 :UInt64;
  outputBytes @5 :UInt64;
}

struct JobResult {
  jobId @0 :Text;
  status @1 :Status;
  output :union {
    inline @2 :Data;
    digest @3 :Data;
    arena @4 :ArenaSlice;
  }
  cost @5 :UInt64;
  metrics @6 :Metrics;
  error @7 :Text;
  retryable @8 :Bool;
  executor @9 :Text;      # "inline", "thread", "process:<pid>", later a peer id
}
