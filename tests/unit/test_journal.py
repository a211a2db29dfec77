"""The own-block journal: records come back whole and in order; a torn or corrupt tail ends the
recovery (that block never left the node); reset empties it; the file is private."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from inos_node.economy.journal import MAX_RECORD, OwnJournal
from inos_node.economy.store import StoreError


def test_records_come_back_in_order_and_reset_empties(tmp_path: Path) -> None:
    j = OwnJournal(tmp_path / "j")
    payloads = [b"first", b"", b"x" * 70_000, b"last"]
    for p in payloads:
        j.append(p)
    assert j.appended == 4
    assert OwnJournal(tmp_path / "j").recover() == payloads  # another reader sees the same
    j.reset()
    assert j.recover() == [] and j.appended == 0
    j.append(b"after reset")  # O_APPEND: written at the new end, i.e. at offset 0
    assert j.recover() == [b"after reset"]
    assert stat.S_IMODE((tmp_path / "j").stat().st_mode) == 0o600
    j.close()


@pytest.mark.parametrize("cut", [1, 5, 37, 38 + 3])
def test_a_torn_last_record_is_left_out(tmp_path: Path, cut: int) -> None:
    j = OwnJournal(tmp_path / "j")
    j.append(b"whole")
    j.append(b"torn record")
    j.close()
    data = (tmp_path / "j").read_bytes()
    (tmp_path / "j").write_bytes(data[:len(data) - cut])  # the process died mid-write
    assert OwnJournal(tmp_path / "j").recover() == [b"whole"]


def test_a_corrupt_record_ends_the_recovery(tmp_path: Path) -> None:
    j = OwnJournal(tmp_path / "j")
    for p in (b"one", b"two", b"three"):
        j.append(p)
    j.close()
    data = bytearray((tmp_path / "j").read_bytes())
    second = 38 + 3  # header (2 + 4 + 32) + b"one"
    data[second + 38] ^= 0xFF  # a byte of b"two"
    (tmp_path / "j").write_bytes(bytes(data))
    assert OwnJournal(tmp_path / "j").recover() == [b"one"]


def test_an_oversized_record_is_refused(tmp_path: Path) -> None:
    j = OwnJournal(tmp_path / "j")
    with pytest.raises(StoreError, match="over"):
        j.append(b"x" * (MAX_RECORD + 1))
    assert j.recover() == []
