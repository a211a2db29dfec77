@0x90b5debd19c7c0e2;
# Gossip topics: signed capability adverts (topic "inos/adverts/1").
# A gossip message's data is a SignedAdvert; the signature (the node's Ed25519 key) covers
# b"inos/advert/1\x00" + `advert` (the canonical capnp bytes of an Advert): the prefix keeps an
# advert signature from passing for a receipt or a hello signed by the same key. The libp2p
# message itself is signed too.

struct MethodPrice {
  method @0 :Text;          # "library.method"
  pricePerUnit @1 :UInt64;  # credits' smallest unit per cost unit (call, MiB or fuel)
  costModel @2 :Text;       # "call", "mib", "fuel"
}

struct Advert {
  peerId @0 :Text;
  name @1 :Text;
  protocolVersion @2 :UInt32;
  sequence @3 :UInt64;      # strictly increasing per node: newer adverts replace older ones
  issuedUnixMs @4 :UInt64;
  ttlMs @5 :UInt32;         # the advert expires after this
  methods @6 :List(MethodPrice);
  load @7 :Float32;         # 0..1, busy fraction of the executors
  queueDepth @8 :UInt32;
  cores @9 :UInt32;
  features @10 :List(Text); # "avx2", "avx512", "neon", "gpu"
  addresses @11 :List(Text);
  apiVersion @12 :Text;
}

struct SignedAdvert {
  advert @0 :Data;
  signature @1 :Data;
  publicKey @2 :Data;
}
