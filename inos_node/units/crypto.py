"""The ``crypto`` library: Ed25519 signatures and XChaCha20-Poly1305 encryption (libsodium via pynacl).

Methods (all cost ``call``, ``inline`` executor: meant for small messages):

* ``crypto.ed25519_keygen``: ``seed_hex`` (64 hex chars, default "" = a fresh random seed); no
  input.  Output 64 bytes: the 32-byte seed, then the 32-byte public key (libsodium's secret-key
  layout).  Non-deterministic (a random seed unless one is given).
* ``crypto.ed25519_sign``: ``seed_hex`` (64 hex chars, required: the signing key); input the
  message; output the 64-byte signature.  Ed25519 signing is deterministic.
* ``crypto.ed25519_verify``: ``public_key_hex`` (64 hex), ``signature_hex`` (128 hex); input the
  message; output one byte, ``0x01`` when the signature is valid and ``0x00`` when it is not.  A
  signature that does not verify is an *answer*, not an error; a malformed key or signature
  (wrong length, not hex) is ``InvalidParams``.
* ``crypto.encrypt``: ``key_hex`` (64 hex, required), ``aad_hex`` (default "": no associated
  data), ``nonce_hex`` (48 hex, default "" = a fresh random nonce); input the plaintext; output
  the 24-byte nonce, then ciphertext + 16-byte tag (input length + 40 bytes in all).
  Non-deterministic (a random nonce unless one is given; never reuse a nonce with a key).
* ``crypto.decrypt``: ``key_hex``, ``aad_hex`` as for encrypt; input the encrypt output
  (nonce || ciphertext+tag); output the plaintext.  A wrong key, wrong associated data, a
  tampered ciphertext or an input shorter than 40 bytes is ``CapsuleFailed``.

Rules:

* Hex params are strict: exactly the stated number of hex digits, nothing else (no ``0x``, no
  spaces).  Errors name the param and the expected length, never echo a secret.
* pynacl's bindings accept only ``bytes``, so the message is copied once out of the (possibly
  shared-memory) input view.  That is fine for the small messages these methods are for; a
  ``thread`` executor is the answer if big inputs become common.
* Keys travel as params.  They are secrets: whoever records params must treat ``seed_hex`` and
  ``key_hex`` accordingly.
"""

from __future__ import annotations

import re

import nacl.bindings as sodium
import nacl.exceptions
import nacl.utils

from inos_node.engine.spec import REQUIRED, Call, Library, Method, Param, UnitContext
from inos_node.errors import CapsuleFailed, InvalidParams

__all__ = ["make"]

SEED_BYTES = sodium.crypto_sign_SEEDBYTES  # 32
PUBLIC_KEY_BYTES = sodium.crypto_sign_PUBLICKEYBYTES  # 32
SIGNATURE_BYTES = sodium.crypto_sign_BYTES  # 64
KEY_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_KEYBYTES  # 32
NONCE_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
TAG_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16

_HEX = re.compile(r"[0-9a-fA-F]*")


def _hex_param(call: Call, name: str, nbytes: int | None) -> bytes:
    """The param ``name`` decoded from hex; ``nbytes`` None means any whole number of bytes."""
    text: str = call.params[name]
    if nbytes is None:
        ok = len(text) % 2 == 0 and _HEX.fullmatch(text) is not None
        allowed = "an even number of hex digits"
    else:
        ok = len(text) == 2 * nbytes and _HEX.fullmatch(text) is not None
        allowed = f"{2 * nbytes} hex digits ({nbytes} bytes)"
    if not ok:
        # Describe the value without echoing it: it may be a secret key.
        raise InvalidParams(
            f"param {name!r}: expected {allowed}, got {len(text)} characters"
            + ("" if _HEX.fullmatch(text) else " including non-hex ones"),
            param=name,
            allowed=allowed,
        )
    return bytes.fromhex(text)


def _keygen(call: Call) -> bytes:
    seed = (
        _hex_param(call, "seed_hex", SEED_BYTES) if call.params["seed_hex"] else nacl.utils.random(SEED_BYTES)
    )
    public_key, _ = sodium.crypto_sign_seed_keypair(seed)
    return seed + public_key  # libsodium's secret key has this layout too; spelled out as documented


def _sign(call: Call) -> bytes:
    seed = _hex_param(call, "seed_hex", SEED_BYTES)
    _, secret_key = sodium.crypto_sign_seed_keypair(seed)
    signed = sodium.crypto_sign(bytes(call.input), secret_key)  # signature || message
    return signed[:SIGNATURE_BYTES]


def _verify(call: Call) -> bytes:
    public_key = _hex_param(call, "public_key_hex", PUBLIC_KEY_BYTES)
    signature = _hex_param(call, "signature_hex", SIGNATURE_BYTES)
    try:
        sodium.crypto_sign_open(signature + call.input, public_key)
    except nacl.exceptions.BadSignatureError:
        # Documented outcome, not a failure: the caller asked "is this valid?" and the answer is no.
        return b"\x00"
    return b"\x01"


def _encrypt(call: Call) -> bytes:
    key = _hex_param(call, "key_hex", KEY_BYTES)
    aad = _hex_param(call, "aad_hex", None) or None
    nonce = (
        _hex_param(call, "nonce_hex", NONCE_BYTES)
        if call.params["nonce_hex"]
        else nacl.utils.random(NONCE_BYTES)
    )
    sealed = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(bytes(call.input), aad, nonce, key)
    return nonce + sealed


def _decrypt(call: Call) -> bytes:
    key = _hex_param(call, "key_hex", KEY_BYTES)
    aad = _hex_param(call, "aad_hex", None) or None
    view = call.input
    if view.nbytes < NONCE_BYTES + TAG_BYTES:
        raise CapsuleFailed(
            f"crypto.decrypt: input is {view.nbytes} bytes, shorter than the {NONCE_BYTES + TAG_BYTES} "
            f"bytes of the smallest sealed message ({NONCE_BYTES}-byte nonce + {TAG_BYTES}-byte tag)"
        )
    nonce = bytes(view[:NONCE_BYTES])
    try:
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(bytes(view[NONCE_BYTES:]), aad, nonce, key)
    except nacl.exceptions.CryptoError as exc:
        raise CapsuleFailed(
            "crypto.decrypt: decryption failed: wrong key or tampered ciphertext (or wrong aad_hex)"
        ) from exc


def _hex(name: str, nbytes: int, doc: str, *, default: str = REQUIRED) -> Param:
    return Param(name, "str", default=default, doc=f"{2 * nbytes} hex digits: {doc}")


def make(ctx: UnitContext) -> Library:
    del ctx  # nothing from the node is needed
    aad = Param("aad_hex", "str", default="", doc="associated data as hex (authenticated, not encrypted)")
    key = _hex("key_hex", KEY_BYTES, "the 32-byte secret key")
    return Library(
        name="crypto",
        summary="Ed25519 sign/verify and XChaCha20-Poly1305 authenticated encryption (libsodium).",
        methods=(
            Method(
                name="crypto.ed25519_keygen",
                fn=_keygen,
                params=(_hex("seed_hex", SEED_BYTES, 'the seed; "" = random', default=""),),
                deterministic=False,
                summary="64 bytes: 32-byte seed || 32-byte public key. Inline.",
            ),
            Method(
                name="crypto.ed25519_sign",
                fn=_sign,
                params=(_hex("seed_hex", SEED_BYTES, "the signing key's seed"),),
                summary="64-byte Ed25519 signature of the input. Inline: small messages.",
            ),
            Method(
                name="crypto.ed25519_verify",
                fn=_verify,
                params=(
                    _hex("public_key_hex", PUBLIC_KEY_BYTES, "the signer's public key"),
                    _hex("signature_hex", SIGNATURE_BYTES, "the signature"),
                ),
                summary="One byte: 0x01 if the signature of the input is valid, 0x00 if not. Inline.",
            ),
            Method(
                name="crypto.encrypt",
                fn=_encrypt,
                params=(key, aad, _hex("nonce_hex", NONCE_BYTES, '"" = random (the default)', default="")),
                deterministic=False,
                summary="XChaCha20-Poly1305: 24-byte nonce || ciphertext || 16-byte tag. Inline.",
            ),
            Method(
                name="crypto.decrypt",
                fn=_decrypt,
                params=(key, aad),
                summary="Open nonce || ciphertext || tag; wrong key or tampering fails. Inline.",
            ),
        ),
    )
