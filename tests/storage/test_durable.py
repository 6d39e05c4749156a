"""The atomic-write primitive on its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.durable import write_atomically


@pytest.fixture
def tmp_dir(tmp_path: Path) -> Path:
    path = tmp_path / "tmp"
    path.mkdir()
    return path


def test_writes_chunks_and_creates_missing_parents(tmp_path: Path, tmp_dir: Path) -> None:
    final = tmp_path / "a" / "b" / "file"
    write_atomically(str(final), [b"head", memoryview(b"-body-"), bytearray(b"tail")], str(tmp_dir))
    assert final.read_bytes() == b"head-body-tail"
    assert list(tmp_dir.iterdir()) == []


def test_overwrite_false_keeps_the_existing_file(tmp_path: Path, tmp_dir: Path) -> None:
    final = tmp_path / "marker"
    write_atomically(str(final), [b"first"], str(tmp_dir), overwrite=False)
    with pytest.raises(FileExistsError):
        write_atomically(str(final), [b"second"], str(tmp_dir), overwrite=False)
    assert final.read_bytes() == b"first"
    assert list(tmp_dir.iterdir()) == []
    write_atomically(str(final), [b"third"], str(tmp_dir))
    assert final.read_bytes() == b"third"


def test_a_failed_write_leaves_neither_file_nor_temp(tmp_path: Path, tmp_dir: Path) -> None:
    final = tmp_path / "never"
    with pytest.raises(TypeError):
        write_atomically(str(final), [b"ok", 42], str(tmp_dir))  # type: ignore[list-item]
    assert not final.exists()
    assert list(tmp_dir.iterdir()) == []
