"""A node's data dir: its persistent Ed25519 identity, its API token, and a lock.

    <data-dir>/
      identity.key    32-byte Ed25519 seed, mode 0600 (created on first use)
      api.token       the control API bearer token, mode 0600
      node.lock       held (fcntl) by the running node: a second node on the same dir is refused
      config.toml     optional configuration

The same key is the node's libp2p identity (its peer id derives from the public key), its
signing key for receipts, adverts and hellos, and (with the economy) its account:
``did:inos:<base58btc(blake3(public key))>``.  One key for all of them means the binding
between peer id and account needs no extra certificate: both are the same public key.
"""

from __future__ import annotations

import fcntl
import functools
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import base58
import blake3
import nacl.exceptions
import nacl.signing

from inos_node.errors import ConfigError

__all__ = ["DataDir", "Identity", "did_of", "verify"]

KEY_FILE = "identity.key"
TOKEN_FILE = "api.token"
LOCK_FILE = "node.lock"


def did_of(public_key: bytes) -> str:
    return "did:inos:" + base58.b58encode(blake3.blake3(public_key).digest()).decode("ascii")


@dataclass(frozen=True)
class Identity:
    seed: bytes

    @functools.cached_property
    def signing_key(self) -> nacl.signing.SigningKey:
        # Deriving the key pair from the seed costs tens of microseconds: once per identity.
        return nacl.signing.SigningKey(self.seed)

    @functools.cached_property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def did(self) -> str:
        return did_of(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return bytes(self.signing_key.sign(message).signature)


@functools.lru_cache(maxsize=4096)
def _verify_key(public_key: bytes) -> nacl.signing.VerifyKey:
    return nacl.signing.VerifyKey(public_key)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        _verify_key(bytes(public_key)).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True


class DataDir:
    """The files of one node.  Creating missing files is idempotent and never overwrites."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self._lock_fd: int | None = None

    def ensure(self) -> DataDir:
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create data dir {self.path}: {exc.strerror}", key="data_dir") from exc
        return self

    def _secret_file(self, name: str, make: bytes) -> bytes:
        path = self.path / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                raise ConfigError(
                    f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}", key="data_dir"
                ) from None
            return path.read_bytes()
        with os.fdopen(fd, "wb") as f:
            f.write(make)
            f.flush()
            os.fsync(f.fileno())
        return make

    def identity(self) -> Identity:
        self.ensure()
        seed = self._secret_file(KEY_FILE, secrets.token_bytes(32))
        if len(seed) != 32:
            raise ConfigError(f"{self.path / KEY_FILE} is not a 32-byte Ed25519 seed ({len(seed)} bytes)",
                              key="data_dir")
        return Identity(seed)

    def token(self) -> str:
        self.ensure()
        raw = self._secret_file(TOKEN_FILE, secrets.token_urlsafe(32).encode()).decode().strip()
        if len(raw) < 16:
            raise ConfigError(f"{self.path / TOKEN_FILE} holds a token shorter than 16 characters", key="data_dir")
        return raw

    def lock(self) -> None:
        """Take the node lock; a second node on this data dir gets a clear ConfigError."""
        self.ensure()
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(f"data dir {self.path} is in use by a running node (pid {other}); "
                              "give each node its own --data-dir", key="data_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
