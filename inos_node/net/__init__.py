"""The libp2p adapter: the only package that imports ``libp2p`` (STYLE.md C8).

py-libp2p 0.8.1 needs guard rails (notes/py-libp2p.md): Noise-only security (its default also
accepts plaintext), one connection per peer (else every dial waits a fixed 250 ms), GossipSub
configured by hand, and every handler and validator wrapped so that no exception can reach the
swarm (one would take the whole node down).
"""

from __future__ import annotations

__all__: list[str] = []
