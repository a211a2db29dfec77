#!/usr/bin/env bash
# The main job without docker: a local testnet of 3 node processes trading capsules for credits.
#
#   bash deploy/quickstart.sh            install into .venv (once), start node1..node3 with one
#                                        genesis, run capsules on other nodes, show who was paid
#   bash deploy/quickstart.sh --keep     ... and leave the testnet running (inos testnet down stops it)
#
# With docker, `docker compose up` runs the same testnet in containers (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet -e .
export PATH="$PWD/.venv/bin:$PATH"
export INOS_TESTNET_DIR="${INOS_TESTNET_DIR:-$PWD/.inos-testnet}"
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1

inos testnet down >/dev/null 2>&1 || true
inos testnet up --nodes 3
[ "$KEEP" = 1 ] || trap 'inos testnet down' EXIT

field() {  # field NODE KEY: a value from `inos testnet status --json`
    inos testnet status --json | python3 -c "import json,sys; print(next(n for n in json.load(sys.stdin) if n['name']=='$1')['$2'])"
}
NODE1_API=$(field node1 api)
export INOS_API=${NODE1_API#http://} INOS_TOKEN=$(inos token --data-dir "$INOS_TESTNET_DIR/node1")
NODE2=$(field node2 peer_id)
NODE3=$(field node3 peer_id)

echo
echo "== capsules submitted on node1, run and paid elsewhere"
summary() {  # the interesting fields of `inos submit --json`
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1] + ":", d["status"], "| executor", d["executor"][-6:], "| cost", d["cost"], "| settled", d["settlement"])' "$1"
}
echo -n "hello, mesh" | inos submit compute.blake3 --input - --peer "$NODE2" --json | summary "blake3 on node2"
inos submit wasm.run --module tests/capsules/reverse.wat --input - --peer "$NODE3" --param fuel=100000 <<< "stressed"
echo
inos submit compute.sha256 --input README.md --remote --replicas 2 --json | summary "sha256 on two peers"

echo
echo "== the books (every node holds the same ledger)"
inos testnet status
inos ledger supply
inos ledger verify
