"""Genesis files: create, sign, verify, load, and the `inos genesis create` command."""

from __future__ import annotations

import json
import os

import pytest

from inos_node.cli import main
from inos_node.economy.genesis import Genesis, canonical, create_genesis, write_genesis
from inos_node.economy.model import account_of_did
from inos_node.errors import GenesisError
from inos_node.identity import Identity, did_of

A = Identity(b"\x01" * 32)
B = Identity(b"\x02" * 32)


def test_create_signs_and_names_the_network():
    doc, network_id = create_genesis([(A.did, 100), (B.did, 50)], fee_bps=250, name="t", grace_ms=5)
    g = Genesis.from_doc(doc)
    assert g.network_id == network_id
    assert g.minted == 150
    assert g.allocations == ((account_of_did(A.did), 100), (account_of_did(B.did), 50))
    assert (g.fee_bps, g.grace_ms, g.name) == (250, 5, "t")
    # the treasury defaults to the genesis key's account
    import base64

    assert doc["treasury"] == did_of(base64.b64decode(doc["genesis_key"]))
    # two creations with the same allocations are two networks (fresh genesis key)
    _, other = create_genesis([(A.did, 100), (B.did, 50)], fee_bps=250, name="t", grace_ms=5)
    assert other != network_id


def test_network_id_ignores_formatting(tmp_path):
    doc, network_id = create_genesis({A.did: 7})
    path = tmp_path / "g.json"
    path.write_text(json.dumps(doc, indent=4))
    assert Genesis.load(path).network_id == network_id


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: d["allocations"][0].update(amount=101), "signature"),
        (lambda d: d.update(fee_bps=10_001), "fee_bps"),
        (lambda d: d["allocations"][0].update(amount=0), "allocations[0].amount"),
        (lambda d: d["allocations"][0].update(amount="5"), "allocations[0].amount"),
        (lambda d: d["allocations"][0].update(did="did:inos:nope"), "allocations[0].did"),
        (lambda d: d["allocations"].append(dict(d["allocations"][0])), "allocations[1]"),
        (lambda d: d.update(treasury="x"), "treasury"),
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d.update(version=2), "version"),
    ],
)
def test_invalid_documents_name_the_field(edit, key):
    doc, _ = create_genesis([(A.did, 100)])
    edit(doc)
    with pytest.raises(GenesisError) as info:
        Genesis.from_doc(doc)
    assert info.value.key == key


def test_signature_covers_the_canonical_bytes():
    doc, _ = create_genesis([(A.did, 100)])
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    assert canonical(unsigned) == json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()


def test_write_is_atomic_0644_and_refuses_to_overwrite(tmp_path):
    doc, _ = create_genesis([(A.did, 1)])
    path = write_genesis(tmp_path / "g.json", doc)
    assert os.stat(path).st_mode & 0o777 == 0o644
    with pytest.raises(GenesisError, match="already exists"):
        write_genesis(path, doc)
    write_genesis(path, doc, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["g.json"], "no temp file left behind"


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(GenesisError, match="cannot read"):
        Genesis.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(GenesisError, match="not JSON"):
        Genesis.load(bad)


def test_cli_genesis_create(tmp_path, capsys):
    out = tmp_path / "net.json"
    rc = main(["genesis", "create", "--out", str(out), "--alloc", f"{A.did}=1000", "--alloc", f"{B.did}=5",
               "--treasury", B.did, "--fee-bps", "100", "--grace-s", "2.5", "--name", "lab", "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    g = Genesis.load(out)
    assert printed["network_id"] == g.network_id.hex()
    assert printed["path"] == str(out)
    assert printed["minted"] == 1000 + 5 == g.minted
    assert (g.treasury, g.fee_bps, g.grace_ms, g.name) == (account_of_did(B.did), 100, 2500, "lab")
    # a second run refuses to overwrite, --force allows it
    assert main(["genesis", "create", "--out", str(out), "--alloc", f"{A.did}=1"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["genesis", "create", "--out", str(out), "--alloc", f"{A.did}=1", "--force"]) == 0
    assert Genesis.load(out).minted == 1


@pytest.mark.parametrize(
    ("alloc", "message"),
    [("did:inos:abc=5", "not an inos DID"), (f"{A.did}=x", "not an integer"), (f"{A.did}=0", "must be > 0"),
     ("nonsense", "DID=AMOUNT")],
)
def test_cli_genesis_create_clear_errors(tmp_path, capsys, alloc, message):
    assert main(["genesis", "create", "--out", str(tmp_path / "g.json"), "--alloc", alloc]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "g.json").exists()
