"""`inos ledger ...` and `inos genesis create` against real nodes on a network with a genesis."""

from __future__ import annotations

import json
import subprocess

import pytest
from _economy import EcoNet, wait_for

pytestmark = pytest.mark.integration


def _inos(inos_cmd: list[str], node, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*inos_cmd, *args, "--api", node.api, "--data-dir", str(node.data_dir)],
                          capture_output=True, text=True, timeout=120)


def test_ledger_commands(tmp_path, inos_cmd):
    net = EcoNet(tmp_path, ["a", "b"], alloc=1000)
    try:
        a = net.start("a")
        b = net.start("b", bootstrap=["a"])
        b_did = net.dids["b"]
        p = _inos(inos_cmd, a, "ledger", "balance", "--json")
        assert p.returncode == 0, p.stderr
        mine = json.loads(p.stdout)
        assert mine["did"] == net.dids["a"] and mine["balance"] == 1000 and mine["escrow"] == 0
        assert mine["frozen"] is False

        p = _inos(inos_cmd, a, "ledger", "transfer", b_did, "250")
        assert p.returncode == 0, p.stderr
        assert "transfer: block 1" in p.stdout and "balance 750" in p.stdout
        p = _inos(inos_cmd, a, "ledger", "stake", "100", "--json")
        assert p.returncode == 0 and json.loads(p.stdout)["staked"] == 100
        p = _inos(inos_cmd, a, "ledger", "unstake", "40", "--json")
        assert p.returncode == 0 and json.loads(p.stdout)["staked"] == 60

        # refused blocks say why, and nothing changes
        p = _inos(inos_cmd, a, "ledger", "transfer", b_did, "5000")
        assert p.returncode == 1 and "balance would be" in p.stderr, p.stderr
        p = _inos(inos_cmd, a, "ledger", "unstake", "61")
        assert p.returncode == 1 and "refused" in p.stderr, p.stderr
        p = _inos(inos_cmd, a, "ledger", "transfer", "did:inos:nope", "5")
        assert p.returncode == 2 and "not an inos DID" in p.stderr, p.stderr
        p = _inos(inos_cmd, a, "ledger", "transfer", b_did, "0")
        assert p.returncode == 2 and "amount must be a positive integer" in p.stderr, p.stderr

        # every node holds every account: b sees a's chain and its own credit
        wait_for(lambda: b.client().balance(b_did)["balance"] == 1250 or None, 30, "b to apply the transfer")
        p = _inos(inos_cmd, b, "ledger", "history", net.dids["a"], "--json")
        assert [blk["type"] for blk in json.loads(p.stdout)["blocks"]] == ["transfer", "stake", "unstake"]
        p = _inos(inos_cmd, b, "ledger", "history", net.dids["a"])
        assert p.returncode == 0 and "HEIGHT" in p.stdout and "unstake" in p.stdout

        p = _inos(inos_cmd, a, "ledger", "supply", "--json")
        supply = json.loads(p.stdout)
        assert supply["minted"] == 2000 == supply["balances"] + supply["escrow"] + supply["staked"]
        assert supply["staked"] == 60
        net.converge(["a", "b"])
        hashes = set()
        for node in (a, b):
            p = _inos(inos_cmd, node, "ledger", "verify", "--json")
            assert p.returncode == 0, p.stdout
            doc = json.loads(p.stdout)
            assert doc["ok"] and doc["state_hash"] == doc["live_state_hash"]
            hashes.add(doc["state_hash"])
        assert len(hashes) == 1, "two nodes with the same blocks print the same state hash"
    finally:
        net.close()


def test_ledger_commands_on_the_dev_network_say_there_is_none(tmp_path, inos_cmd):
    from inos_node.testing.procs import start_node

    node = start_node(tmp_path, "dev")
    try:
        p = _inos(inos_cmd, node, "ledger", "balance")
        assert p.returncode == 1 and "no ledger" in p.stderr and "--genesis" in p.stderr
    finally:
        node.stop()


def test_genesis_create_refuses_bad_input(tmp_path, inos_cmd):
    out = tmp_path / "g.json"
    p = subprocess.run([*inos_cmd, "genesis", "create", "--out", str(out), "--alloc", "did:inos:bad=10"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "did:inos:bad" in p.stderr and not out.exists()
