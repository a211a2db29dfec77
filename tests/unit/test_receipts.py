from __future__ import annotations

import secrets

import blake3
import pytest

from inos_node.identity import Identity
from inos_node.net.host import peer_id_of
from inos_node.receipts import ReceiptInvalid, receipt_json, sign_receipt, verify_receipt
from inos_node.types import Metrics
from inos_node.wire.delegation import Receipt

W = Identity(secrets.token_bytes(32))
OTHER = Identity(secrets.token_bytes(32))
IN = blake3.blake3(b"input").digest()


def make(identity=W, output=b"out", **kw):
    args = dict(job_id="j1", requester="R", worker=peer_id_of(W), capsule="compute.blake3", input_digest=IN,
                output=output, cost=3, metrics=Metrics(wall_ns=5))
    args.update(kw)
    return sign_receipt(identity, **args)


def check(receipt, output=b"out", **kw):
    args = dict(worker=peer_id_of(W), job_id="j1", requester="R", capsule="compute.blake3", input_digest=IN,
                output=output)
    args.update(kw)
    return verify_receipt(receipt, **args)


def test_a_good_receipt_verifies():
    body = check(make())
    assert body.cost == 3 and body.metrics.wall_ns == 5
    doc = receipt_json(make())
    assert doc["worker"] == peer_id_of(W) and doc["output_digest"] == blake3.blake3(b"out").digest().hex()


@pytest.mark.parametrize(
    ("receipt_kw", "check_kw", "why"),
    [
        ({}, {"output": b"other"}, "output digest"),
        ({}, {"job_id": "j2"}, "job id"),
        ({}, {"requester": "X"}, "requester"),
        ({}, {"capsule": "compute.sha256"}, "capsule"),
        ({}, {"input_digest": b"\0" * 32}, "input digest"),
        ({"identity": OTHER}, {}, "signed by another key"),
        ({"worker": "someone-else"}, {}, "worker"),
    ],
)
def test_each_lie_is_caught_and_named(receipt_kw, check_kw, why):
    with pytest.raises(ReceiptInvalid, match=why):
        check(make(**receipt_kw), **check_kw)


def test_tampered_body_or_missing_receipt():
    r = make()
    bad = Receipt(body=r.body[:-1] + bytes([r.body[-1] ^ 1]), signature=r.signature, public_key=r.public_key)
    with pytest.raises(ReceiptInvalid, match="signature does not verify"):
        check(bad)
    with pytest.raises(ReceiptInvalid, match="without a receipt"):
        check(None)
