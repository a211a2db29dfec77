"""Dependency rules: each third-party library has one owning package (STYLE.md C1, C8)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "inos_node"

# library -> the only places (package dirs or modules, relative to inos_node/) allowed to import it
OWNERS = {
    "capnp": ("wire/",),
    "wasmtime": ("units/wasm.py", "units/_wasm_ffi.py", "units/_wasm_ticker.py"),
    "mmap": ("arena/",),
    "multiprocessing": (),
    "libp2p": ("net/",),
    "starlette": ("api/",),
    "hypercorn": ("api/",),
    "sqlite3": ("economy/store.py",),
}
# pure decision cores: standard library, inos_node.types and inos_node.errors only
CORES = ("actors/supervision.py", "protocols/decider.py", "protocols/adverts.py")
CORE_ALLOWED_INOS = {"inos_node.types", "inos_node.errors"}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_each_library_is_imported_only_by_its_owner():
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).as_posix()
        for name in _imports(path):
            top = name.split(".")[0]
            owners = OWNERS.get(top)
            if owners is not None and not any(rel.startswith(o) for o in owners):
                offenders.append(f"{rel} imports {name}")
    assert offenders == []


def test_cores_are_pure():
    import sys

    stdlib = sys.stdlib_module_names
    for rel in CORES:
        for name in _imports(PKG / rel):
            top = name.split(".")[0]
            if top == "inos_node":
                assert name in CORE_ALLOWED_INOS, f"{rel} imports {name}"
            else:
                assert top in stdlib or top == "__future__", f"{rel} imports {name}"
            assert top not in ("time", "random", "trio"), f"{rel} reads a clock or randomness"


def test_packages_declare_all():
    for init in PKG.rglob("__init__.py"):
        text = init.read_text()
        if text.strip():
            assert "__all__" in text, f"{init.relative_to(PKG)} has no __all__"
