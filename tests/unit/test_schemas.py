"""The schemas load, are the single source of the arena layout, and ship inside the wheel."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from inos_node.wire import schemas
from inos_node.wire.layout import layout_constants

ROOT = Path(__file__).resolve().parents[2]


def test_every_schema_loads():
    files = schemas.schema_files()
    names = {str(p) for p in files}
    for expected in ("system/v1/sab_layout.capnp", "system/v1/runtime.capnp", "system/v1/syscall.capnp",
                     "compute/v1/capsule.capnp", "identity/v1/identity.capnp"):
        assert expected in names
    for rel in names:
        assert schemas.load(rel) is schemas.load(rel), "loads are cached"


def test_layout_constants_come_from_the_schema():
    c = layout_constants()
    text = (schemas.schema_dir() / "system/v1/sab_layout.capnp").read_text()
    declared = dict(re.findall(r"const (\w+) :U?Int\d+ = (0x[0-9a-f]+|\d+);", text))
    assert declared, "the schema declares integer constants"
    for name, value in declared.items():
        assert c[name] == int(value, 0), name
    # the derived offsets in the comments are what the numbers say
    assert c["processTableOffset"] == c["epochTableOffset"] + c["epochCount"] * c["cacheLine"]
    assert c["idxOutbox"] + c["maxWorkerLanes"] <= c["idxFirstDynamic"]


def test_no_python_module_repeats_layout_numbers():
    """Offsets live in the schema only: no module outside wire/ spells the big layout numbers."""
    c = layout_constants()
    distinctive = {c["processTableOffset"], c["regionTableOffset"], c["fixedRegionsOffset"], c["magic"]}
    for path in (ROOT / "inos_node").rglob("*.py"):
        if "wire" in path.parts:
            continue
        text = path.read_text()
        for value in distinctive:
            assert not re.search(rf"\b{value}\b|{hex(value)}\b", text), f"{path} repeats {value}"


@pytest.mark.integration
def test_wheel_ships_the_schemas_and_finds_them(tmp_path):
    """Build the wheel, install it in a fresh venv, and load the schemas from the installed copy."""
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True)
    wheel = next(out.glob("inos_node-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "inos_node/_schemas/system/v1/sab_layout.capnp" in names
    assert "inos_node/_schemas/compute/v1/capsule.capnp" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = (
        "import sys; sys.path.insert(0, %r);"
        "from inos_node.wire import schemas; from inos_node.wire.layout import layout_constants;"
        "print(schemas.schema_dir()); print(layout_constants()['epochCount'])" % str(target)
    )
    proc = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path)
    found, epochs = proc.stdout.split()
    assert Path(found) == (target / "inos_node" / "_schemas").resolve()
    assert int(epochs) == layout_constants()["epochCount"]
    assert schemas.schema_dir() == (ROOT / "schemas"), "the editable checkout uses the repository's schemas/"
