@0xb9e21a9bdd377c00;
# Requests units (and local tools) make of their node.

using Capsule = import "/compute/v1/capsule.capnp";

struct ArenaRef {
  offset @0 :UInt64;
  length @1 :UInt64;
}

struct Syscall {
  id @0 :UInt64;
  union {
    allocate @1 :Allocate;
    free @2 :ArenaRef;
    publishEpoch @3 :UInt32;      # epoch index to bump
    submit @4 :Capsule.JobRequest;
    reserveEpoch @5 :Text;        # a name; the node answers with a dynamic epoch index
  }
  struct Allocate {
    size @0 :UInt64;
    name @1 :Text;
  }
}

struct SyscallResult {
  id @0 :UInt64;
  union {
    ok @1 :Void;
    block @2 :ArenaRef;
    epochIndex @3 :UInt32;
    result @4 :Capsule.JobResult;
    error @5 :Text;
  }
}
