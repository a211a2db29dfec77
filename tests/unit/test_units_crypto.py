"""The crypto unit: RFC 8032 Ed25519 vectors, XChaCha20-Poly1305 against libsodium, every error path."""

from __future__ import annotations

from typing import Any

import nacl.bindings as sodium
import nacl.signing
import pytest

from inos_node.engine.spec import Call, Output, UnitContext
from inos_node.errors import CapsuleFailed, InvalidParams
from inos_node.units import crypto

LIB = crypto.make(UnitContext())

# RFC 8032 §7.1, tests 1 and 2: (seed, public key, message, signature).
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        b"",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        bytes([0x72]),
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]
SEED, PUBLIC = RFC8032[0][0], RFC8032[0][1]
KEY = bytes(range(0x80, 0xA0)).hex()
OTHER_KEY = bytes(range(32)).hex()
NONCE = bytes(range(0x40, 0x58)).hex()
MESSAGE = b"a message to the mesh, " * 10


def run(short: str, data: bytes | memoryview = b"", **params: Any) -> bytes:
    method = LIB.method(short)
    assert method is not None, "unknown crypto method"
    out = method.fn(Call(input=memoryview(data), params=method.validate(params), ctx=UnitContext()))
    return bytes(out.data if isinstance(out, Output) else out)


def arena_slice(data: bytes) -> memoryview:
    backing = bytearray(b"\xaa" * 17 + data + b"\xbb" * 17)
    return memoryview(backing).toreadonly()[17 : 17 + len(data)]


def test_library_shape() -> None:
    assert LIB.name == "crypto"
    by_name = {m.name: m for m in LIB.methods}
    assert sorted(by_name) == [
        "crypto.decrypt",
        "crypto.ed25519_keygen",
        "crypto.ed25519_sign",
        "crypto.ed25519_verify",
        "crypto.encrypt",
    ]
    assert {n for n, m in by_name.items() if not m.deterministic} == {
        "crypto.ed25519_keygen",
        "crypto.encrypt",
    }
    for m in LIB.methods:
        assert m.executor == "inline"
        assert m.cost == "call"


# --- Ed25519 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "public", "message", "signature"), RFC8032)
def test_rfc8032_vectors(seed: str, public: str, message: bytes, signature: str) -> None:
    assert run("ed25519_keygen", seed_hex=seed) == bytes.fromhex(seed + public)
    assert run("ed25519_sign", arena_slice(message), seed_hex=seed).hex() == signature
    assert run("ed25519_verify", message, public_key_hex=public, signature_hex=signature) == b"\x01"


def test_keygen_random_seed() -> None:
    first, second = run("ed25519_keygen"), run("ed25519_keygen")
    assert len(first) == len(second) == 64
    assert first != second, "two random keys"
    seed, public = first[:32], first[32:]
    assert bytes(nacl.signing.SigningKey(seed).verify_key) == public


def test_keygen_accepts_upper_case_hex() -> None:
    assert run("ed25519_keygen", seed_hex=SEED.upper()) == bytes.fromhex(SEED + PUBLIC)


def test_sign_then_verify_round_trip() -> None:
    key = run("ed25519_keygen")
    seed_hex, public_hex = key[:32].hex(), key[32:].hex()
    signature = run("ed25519_sign", MESSAGE, seed_hex=seed_hex)
    assert len(signature) == 64
    assert nacl.signing.VerifyKey(key[32:]).verify(MESSAGE, signature) == MESSAGE
    assert run(
        "ed25519_verify", arena_slice(MESSAGE), public_key_hex=public_hex, signature_hex=signature.hex()
    ) == (b"\x01")


def test_invalid_signatures_answer_zero() -> None:
    signature = run("ed25519_sign", MESSAGE, seed_hex=SEED)
    tampered = bytearray(signature)
    tampered[10] ^= 1
    other_public = run("ed25519_keygen", seed_hex=OTHER_KEY)[32:].hex()
    cases = [
        (MESSAGE + b"!", PUBLIC, signature.hex()),  # another message
        (MESSAGE, other_public, signature.hex()),  # another signer
        (MESSAGE, PUBLIC, tampered.hex()),  # a changed signature
        (MESSAGE, PUBLIC, "00" * 64),  # all zeros
    ]
    for message, public, sig in cases:
        assert run("ed25519_verify", message, public_key_hex=public, signature_hex=sig) == b"\x00"


def test_sign_requires_the_seed() -> None:
    with pytest.raises(InvalidParams) as info:
        run("ed25519_sign", MESSAGE)
    assert info.value.param == "seed_hex"


@pytest.mark.parametrize(
    "bad",
    [
        SEED[:-2],  # 31 bytes
        SEED + "00",  # 33 bytes
        SEED[:-1],  # odd length
        "zz" + SEED[2:],  # not hex
        "0x" + SEED[2:],  # prefix
        SEED[:32] + " " + SEED[33:],  # a space (bytes.fromhex would skip it)
        "é" * 64,  # non-ASCII
    ],
)
def test_malformed_seed_is_invalid_params_without_echoing_it(bad: str) -> None:
    for short in ("ed25519_keygen", "ed25519_sign"):
        with pytest.raises(InvalidParams) as info:
            run(short, MESSAGE, seed_hex=bad)
        assert info.value.param == "seed_hex"
        assert info.value.allowed == "64 hex digits (32 bytes)"
        assert bad not in str(info.value), "secrets are not echoed"


@pytest.mark.parametrize(
    ("public", "signature", "param", "allowed"),
    [
        (PUBLIC[:-2], "00" * 64, "public_key_hex", "64 hex digits (32 bytes)"),
        ("g" * 64, "00" * 64, "public_key_hex", "64 hex digits (32 bytes)"),
        (PUBLIC, "00" * 63, "signature_hex", "128 hex digits (64 bytes)"),
        (PUBLIC, "0" * 127, "signature_hex", "128 hex digits (64 bytes)"),
        (PUBLIC, "xy" * 64, "signature_hex", "128 hex digits (64 bytes)"),
    ],
)
def test_malformed_verify_params(public: str, signature: str, param: str, allowed: str) -> None:
    with pytest.raises(InvalidParams) as info:
        run("ed25519_verify", MESSAGE, public_key_hex=public, signature_hex=signature)
    assert info.value.param == param
    assert info.value.allowed == allowed


# --- XChaCha20-Poly1305 -------------------------------------------------------------------------

# draft-irtf-cfrg-xchacha-03 §A.3.1 (AEAD_XChaCha20_Poly1305).
DRAFT_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
    b"sunscreen would be it."
)
DRAFT_AAD = "50515253c0c1c2c3c4c5c6c7"
DRAFT_SEALED = (
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
    "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
    "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
    "21f9664c97637da9768812f615c68b13b52e"
    "c0875924c1c7987947deafd8780acf49"
)


def test_xchacha_draft_vector() -> None:
    sealed = run("encrypt", DRAFT_PLAINTEXT, key_hex=KEY, aad_hex=DRAFT_AAD, nonce_hex=NONCE)
    assert sealed == bytes.fromhex(NONCE + DRAFT_SEALED)
    assert run("decrypt", arena_slice(sealed), key_hex=KEY, aad_hex=DRAFT_AAD) == DRAFT_PLAINTEXT


def test_encrypt_matches_libsodium_with_a_given_nonce() -> None:
    sealed = run("encrypt", arena_slice(MESSAGE), key_hex=KEY, nonce_hex=NONCE)
    expected = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        MESSAGE, None, bytes.fromhex(NONCE), bytes.fromhex(KEY)
    )
    assert sealed == bytes.fromhex(NONCE) + expected
    assert len(sealed) == len(MESSAGE) + 40


def test_encrypt_uses_a_fresh_random_nonce() -> None:
    first, second = run("encrypt", MESSAGE, key_hex=KEY), run("encrypt", MESSAGE, key_hex=KEY)
    assert first[:24] != second[:24], "random nonces"
    assert run("decrypt", first, key_hex=KEY) == run("decrypt", second, key_hex=KEY) == MESSAGE


@pytest.mark.parametrize("plaintext", [b"", b"x", MESSAGE, bytes(range(256)) * 300])
def test_round_trip(plaintext: bytes) -> None:
    sealed = run("encrypt", plaintext, key_hex=KEY, aad_hex="0badc0de")
    assert run("decrypt", sealed, key_hex=KEY, aad_hex="0badc0de") == plaintext


def _sealed() -> bytes:
    return run("encrypt", MESSAGE, key_hex=KEY, aad_hex="0badc0de", nonce_hex=NONCE)


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize(
    ("what", "data", "key", "aad"),
    [
        ("wrong key", _sealed(), OTHER_KEY, "0badc0de"),
        ("wrong aad", _sealed(), KEY, "0badc0df"),
        ("missing aad", _sealed(), KEY, ""),
        ("tampered nonce", _flip(_sealed(), 3), KEY, "0badc0de"),
        ("tampered ciphertext", _flip(_sealed(), 30), KEY, "0badc0de"),
        ("tampered tag", _flip(_sealed(), -1), KEY, "0badc0de"),
        ("truncated", _sealed()[:-1], KEY, "0badc0de"),
    ],
)
def test_decrypt_failures(what: str, data: bytes, key: str, aad: str) -> None:
    with pytest.raises(CapsuleFailed, match="decryption failed: wrong key or tampered ciphertext"):
        run("decrypt", data, key_hex=key, aad_hex=aad)


@pytest.mark.parametrize("size", [0, 1, 24, 39])
def test_decrypt_short_input(size: int) -> None:
    with pytest.raises(CapsuleFailed, match=f"input is {size} bytes, shorter than the 40 bytes"):
        run("decrypt", _sealed()[:size], key_hex=KEY)


def test_decrypt_of_the_smallest_sealed_message() -> None:
    sealed = run("encrypt", b"", key_hex=KEY)
    assert len(sealed) == 40
    assert run("decrypt", sealed, key_hex=KEY) == b""


@pytest.mark.parametrize(
    ("short", "params", "param"),
    [
        ("encrypt", {"key_hex": KEY[:-2]}, "key_hex"),
        ("encrypt", {"key_hex": "k" * 64}, "key_hex"),
        ("encrypt", {"key_hex": KEY, "nonce_hex": NONCE[:-2]}, "nonce_hex"),
        ("encrypt", {"key_hex": KEY, "aad_hex": "abc"}, "aad_hex"),
        ("encrypt", {"key_hex": KEY, "aad_hex": "zz"}, "aad_hex"),
        ("decrypt", {"key_hex": KEY + "00"}, "key_hex"),
        ("decrypt", {"key_hex": KEY, "aad_hex": "0"}, "aad_hex"),
        ("encrypt", {}, "key_hex"),
        ("decrypt", {}, "key_hex"),
        (
            "decrypt",
            {"key_hex": KEY, "nonce_hex": NONCE},
            "nonce_hex",
        ),  # decrypt reads the nonce from the input
    ],
)
def test_malformed_aead_params(short: str, params: dict[str, str], param: str) -> None:
    with pytest.raises(InvalidParams) as info:
        run(short, _sealed(), **params)
    assert info.value.param == param
