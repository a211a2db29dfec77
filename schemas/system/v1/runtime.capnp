@0xe37efbafd957b2f7;
# Node role and runtime capabilities, published in diagnostics and (later) in adverts.

enum NodeRole {
  light @0;      # submits capsules, runs only local ones
  worker @1;     # runs capsules for peers
  bootstrap @2;  # a well-known entry point of the mesh
}

struct HardwareFeatures {
  avx2 @0 :Bool;
  avx512 @1 :Bool;
  neon @2 :Bool;
  gpu @3 :Bool;
  arch @4 :Text;          # "x86_64", "aarch64", ...
}

struct RuntimeCapabilities {
  role @0 :NodeRole;
  cores @1 :UInt32;
  memoryBytes @2 :UInt64;
  arenaBytes @3 :UInt64;
  hardware @4 :HardwareFeatures;
  pythonVersion @5 :Text;
  nodeVersion @6 :Text;
}

struct UnitInfo {
  library @0 :Text;
  methods @1 :List(MethodInfo);
  restarts @2 :UInt32;
  state @3 :Text;         # "running", "restarting", "stopped"
}

struct MethodInfo {
  name @0 :Text;          # "library.method"
  executor @1 :Text;      # "inline", "thread", "process"
  deterministic @2 :Bool;
  cost @3 :Text;          # how cost is measured: "call", "mib", "fuel"
  params @4 :Text;        # the parameter schema as JSON
  summary @5 :Text;
}

struct UnitRegistry {
  units @0 :List(UnitInfo);
  generation @1 :UInt64;
}

struct Diagnostics {
  capabilities @0 :RuntimeCapabilities;
  unitRestarts @1 :List(UnitRestart);
  jobsCompleted @2 :UInt64;
  jobsFailed @3 :UInt64;
  arenaUsedBytes @4 :UInt64;
  arenaFreeBytes @5 :UInt64;
}

struct UnitRestart {
  library @0 :Text;
  restarts @1 :UInt32;
  lastError @2 :Text;
}
