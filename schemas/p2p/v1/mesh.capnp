@0x994ea61546ad2ae4;
# /inos/hello/1.0.0: the first exchange on every new connection. It keeps the INOS mesh apart from
# foreign libp2p networks: a peer that does not prove, within the hello timeout, that it belongs to
# the same network (same network id, a signature by its own key over both peers' ids) is
# disconnected and never enters the DHT routing table or the gossip mesh.

struct Hello {
  networkId @0 :Data;       # 32 bytes: blake3 of the network's genesis (a fixed dev id until then)
  peerId @1 :Text;
  remotePeerId @2 :Text;    # whom this hello is for (stops replay to another peer)
  protocolVersion @3 :UInt32;
  name @4 :Text;
  nonce @5 :Data;
}

struct SignedHello {
  hello @0 :Data;
  signature @1 :Data;
  publicKey @2 :Data;
}
