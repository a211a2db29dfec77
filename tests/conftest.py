from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CAPSULES = ROOT / "tests" / "capsules"


@pytest.fixture
def capsules() -> Path:
    return CAPSULES


@pytest.fixture
def inos_cmd() -> list[str]:
    """The CLI as a newcomer runs it (the console script of this venv)."""
    script = Path(sys.executable).parent / "inos"
    return [str(script)] if script.exists() else [sys.executable, "-m", "inos_node"]


@pytest.fixture
def shm_dir(tmp_path: Path) -> str:
    """Arenas of tests live in /dev/shm like a node's; the test's name keeps them apart."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else str(tmp_path)
