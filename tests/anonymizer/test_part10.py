"""Bad input: clear per-file errors, and never a partial output file."""

from __future__ import annotations

from pathlib import Path

import pytest

from anonymizer import Deidentifier, UnreadableInput, load_profile
from anonymizer.files import anonymize_file, write_atomic
from tests.anonymizer.conftest import SITE_A
from tests.factories import make_dataset, to_bytes


@pytest.fixture
def deid() -> Deidentifier:
    return Deidentifier(load_profile(), SITE_A)


@pytest.mark.parametrize("keep", [0, 10, 128, 132, 200, 400, -2000, -1])
def test_truncated_input_is_refused_with_a_clear_error(deid: Deidentifier, keep: int) -> None:
    data = to_bytes(make_dataset())
    with pytest.raises(UnreadableInput):
        deid.deidentify_bytes(data[:keep])


def test_garbage_is_refused(deid: Deidentifier) -> None:
    with pytest.raises(UnreadableInput, match="not a DICOM"):
        deid.deidentify_bytes(b"this is not dicom at all" * 20)


def test_no_partial_output_is_left_behind(deid: Deidentifier, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.dcm", tmp_path / "bad.dcm"
    good.write_bytes(to_bytes(make_dataset()))
    bad.write_bytes(to_bytes(make_dataset())[:-500])
    out = tmp_path / "out"
    ok = anonymize_file(deid, good, out)
    failed = anonymize_file(deid, bad, out)
    assert ok.ok and ok.target is not None and ok.target.exists()
    assert not failed.ok and failed.error_kind == "UnreadableInput"
    assert "truncated" in (failed.error or "")
    assert sorted(p.name for p in out.iterdir()) == [ok.target.name]
    missing = anonymize_file(deid, tmp_path / "missing.dcm", out)
    assert missing.error_kind == "UnreadableInput"


def test_write_atomic_removes_its_temporary_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "x" / "file.dcm"
    write_atomic(target, b"complete")
    assert target.read_bytes() == b"complete"
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.dcm"]
    assert target.read_bytes() == b"complete"
