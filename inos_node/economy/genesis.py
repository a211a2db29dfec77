"""The genesis file: a network's initial allocation, signed by a one-off genesis key.

    {"version": 1, "name": "...", "created_unix_ms": ..., "allocations": [{"did", "amount"}, ...],
     "treasury": did, "fee_bps": 500, "grace_ms": 30000,
     "genesis_key": base64 public key, "signature": base64}

``signature`` is Ed25519 by the genesis key over the canonical bytes of the document without
it (``json.dumps(sort_keys=True, separators=(",", ":"))``).  ``network_id`` is blake3 of the
canonical bytes *with* the signature: it names the network, and nodes whose genesis differs are
not peers.  The genesis private key is thrown away after signing: nobody can mint later.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from inos_node.economy.model import account_of_did, did_of_account
from inos_node.errors import GenesisError, LedgerError
from inos_node.identity import Identity, did_of, verify

__all__ = ["DEFAULT_FEE_BPS", "DEFAULT_GRACE_MS", "Genesis", "canonical", "create_genesis", "write_genesis"]

DEFAULT_FEE_BPS = 500
DEFAULT_GRACE_MS = 30_000
_KEYS = {"version", "name", "created_unix_ms", "allocations", "treasury", "fee_bps", "grace_ms",
         "genesis_key", "signature"}


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _int(doc: dict[str, Any], key: str, lo: int, hi: int | None = None) -> int:
    v = doc.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise GenesisError(f"genesis {key} must be an integer in {bound}, got {v!r}", key=key)
    return v


def _did(value: Any, key: str) -> bytes:
    try:
        return account_of_did(value)
    except LedgerError as exc:
        raise GenesisError(f"genesis {key}: {exc}", key=key) from None


@dataclass(frozen=True)
class Genesis:
    """A verified genesis document (build with ``from_doc`` or ``load``)."""

    doc: dict[str, Any]
    name: str
    allocations: tuple[tuple[bytes, int], ...]  # (account id, amount), in file order
    treasury: bytes
    fee_bps: int
    grace_ms: int
    genesis_key: bytes
    network_id: bytes

    @property
    def minted(self) -> int:
        return sum(a for _, a in self.allocations)

    @classmethod
    def from_doc(cls, doc: Any) -> Genesis:
        """Check every field and the signature; a ``GenesisError`` names the bad field."""
        if not isinstance(doc, dict):
            raise GenesisError("a genesis document must be a JSON object", key="")
        unknown = sorted(set(doc) - _KEYS)
        missing = sorted(_KEYS - set(doc))
        if unknown or missing:
            raise GenesisError(f"genesis fields: unknown {unknown}, missing {missing}",
                               key=(unknown or missing)[0])
        if doc["version"] != 1:
            raise GenesisError(f"genesis version {doc['version']!r} is not supported (expected 1)",
                               key="version")
        if not isinstance(doc["name"], str):
            raise GenesisError("genesis name must be a string", key="name")
        _int(doc, "created_unix_ms", 0)
        fee_bps = _int(doc, "fee_bps", 0, 10_000)
        grace_ms = _int(doc, "grace_ms", 0)
        allocs = doc["allocations"]
        if not isinstance(allocs, list) or not allocs:
            raise GenesisError("genesis allocations must be a non-empty list", key="allocations")
        seen: set[bytes] = set()
        parsed = []
        for i, item in enumerate(allocs):
            key = f"allocations[{i}]"
            if not isinstance(item, dict) or set(item) != {"did", "amount"}:
                raise GenesisError(f"genesis {key} must be {{\"did\", \"amount\"}}, got {item!r}", key=key)
            account = _did(item["did"], f"{key}.did")
            amount = item["amount"]
            if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
                raise GenesisError(f"genesis {key}.amount must be a positive integer, got {item['amount']!r}",
                                   key=f"{key}.amount")
            if account in seen:
                raise GenesisError(f"genesis {key}: {item['did']} is allocated twice", key=key)
            seen.add(account)
            parsed.append((account, amount))
        if sum(a for _, a in parsed) >= 2**63:
            raise GenesisError("genesis allocations add up to more than 2**63 - 1", key="allocations")
        treasury = _did(doc["treasury"], "treasury")
        try:
            gkey = base64.b64decode(doc["genesis_key"], validate=True)
            sig = base64.b64decode(doc["signature"], validate=True)
        except (ValueError, TypeError):
            raise GenesisError("genesis genesis_key and signature must be base64", key="signature") from None
        unsigned = {k: v for k, v in doc.items() if k != "signature"}
        if len(gkey) != 32 or not verify(gkey, canonical(unsigned), sig):
            raise GenesisError("genesis signature does not verify under genesis_key (edited after signing?)",
                               key="signature")
        return cls(doc=doc, name=doc["name"], allocations=tuple(parsed), treasury=treasury, fee_bps=fee_bps,
                   grace_ms=grace_ms, genesis_key=gkey, network_id=blake3.blake3(canonical(doc)).digest())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Genesis:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise GenesisError(f"cannot read genesis file {path}: {exc.strerror}", key="genesis") from exc
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise GenesisError(f"genesis file {path} is not JSON: {exc}", key="genesis") from exc
        try:
            return cls.from_doc(doc)
        except GenesisError as exc:
            raise GenesisError(f"{path}: {exc}", key=exc.key) from None


def create_genesis(
    allocs: Iterable[tuple[str, int]] | dict[str, int],
    treasury: str | None = None,
    fee_bps: int = DEFAULT_FEE_BPS,
    name: str = "inos",
    grace_ms: int = DEFAULT_GRACE_MS,
    *,
    created_unix_ms: int | None = None,
) -> tuple[dict[str, Any], bytes]:
    """A signed genesis document and its network id.  The genesis key is fresh and discarded;
    the treasury defaults to the genesis key's own DID (an account nobody can spend from)."""
    items = list(allocs.items()) if isinstance(allocs, dict) else list(allocs)
    key = Identity(secrets.token_bytes(32))
    doc: dict[str, Any] = {
        "version": 1,
        "name": name,
        "created_unix_ms": int(time.time() * 1000) if created_unix_ms is None else created_unix_ms,
        "allocations": [{"did": d, "amount": a} for d, a in items],
        "treasury": treasury if treasury is not None else did_of(key.public_key),
        "fee_bps": fee_bps,
        "grace_ms": grace_ms,
        "genesis_key": base64.b64encode(key.public_key).decode("ascii"),
    }
    doc["signature"] = base64.b64encode(key.sign(canonical(doc))).decode("ascii")
    g = Genesis.from_doc(doc)  # the same checks a loader makes: refuse to write a bad file
    return doc, g.network_id


def write_genesis(path: str | os.PathLike[str], doc: dict[str, Any], *, force: bool = False) -> Path:
    """Write ``doc`` atomically (temp file + rename), mode 0644; refuse an existing file unless ``force``."""
    target = Path(path)
    if target.exists() and not force:
        raise GenesisError(f"{target} already exists (pass --force to overwrite it)", key="out")
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
    except OSError as exc:
        raise GenesisError(f"cannot write {target}: {exc.strerror}", key="out") from exc
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def did_list(g: Genesis) -> list[dict[str, Any]]:
    return [{"did": did_of_account(a), "amount": n} for a, n in g.allocations]
