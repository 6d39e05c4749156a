"""The quarantine keeps refused bytes and why, named by time and a random id."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from storage import Quarantine

HOSTILE = b"\x00" * 128 + b"DICM" + b"PatientName=../../etc/passwd"


def test_put_writes_bytes_and_sidecar(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "q")
    before = datetime.now(UTC)
    path = quarantine.put(HOSTILE, "unparseable dataset", {"calling_ae": "MODALITY1"})
    assert path.read_bytes() == HOSTILE
    assert path.parent == quarantine.root
    assert "passwd" not in path.name and "DICM" not in path.name
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["reason"] == "unparseable dataset"
    assert sidecar["context"] == {"calling_ae": "MODALITY1"}
    assert sidecar["size"] == len(HOSTILE)
    assert sidecar["sha256"] == hashlib.sha256(HOSTILE).hexdigest()
    when = datetime.fromisoformat(sidecar["quarantined_at"])
    assert when.tzinfo is not None and when >= before


def test_list_returns_complete_entries_oldest_first(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "q")
    first = quarantine.put(b"one", "r1", {})
    second = quarantine.put(b"two", "r2", {"k": "v"})
    (quarantine.root / "tmp" / "half.tmp").write_bytes(b"in flight")
    entries = Quarantine(tmp_path / "q").list()
    assert [e.path for e in entries] == [first, second]
    assert [e.reason for e in entries] == ["r1", "r2"]
    assert entries[1].context == {"k": "v"}
    assert entries[1].size == 3 and entries[1].sha256 == hashlib.sha256(b"two").hexdigest()
    # a crash between the bytes and the sidecar leaves an incomplete entry: not counted
    (quarantine.root / "20260101T000000-0000000000000000.bin").write_bytes(b"torn")
    assert Quarantine(tmp_path / "q").count() == len(entries) == 2


def test_same_bytes_twice_are_two_entries(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "q")
    assert quarantine.put(b"x", "r", {}) != quarantine.put(b"x", "r", {})
    assert len(quarantine.list()) == 2


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "q")
    with pytest.raises(ValueError):
        quarantine.put(b"x", "", {})
    with pytest.raises(TypeError):
        quarantine.put(b"x", "r", {"n": 1})  # type: ignore[dict-item]
    assert quarantine.list() == []
