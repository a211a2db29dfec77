@0x889d7fcd24203dc1;
# A signed node identity record.

struct Capability {
  name @0 :Text;          # "library.method"
  version @1 :UInt32;
}

struct NodeIdentity {
  publicKey @0 :Data;     # Ed25519, 32 bytes
  did @1 :Text;           # did:inos:<base58btc(blake3(publicKey))>
  peerId @2 :Text;        # libp2p peer id (base58)
  capabilities @3 :List(Capability);
  createdMs @4 :UInt64;
  addresses @5 :List(Text);
}

struct SignedIdentity {
  identity @0 :Data;      # the canonical capnp bytes of NodeIdentity
  signature @1 :Data;     # Ed25519 over identity, by publicKey
}
