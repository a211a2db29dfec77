#!/usr/bin/env bash
# The main job for a newcomer: install into .venv (once) and run a local node's showcase:
# the boids flock in the shared arena plus a few capsules through the engine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/inos demo "$@"
