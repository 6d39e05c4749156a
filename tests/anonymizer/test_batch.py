"""Many files at once: worker processes write exactly what one process writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom import dcmread

from anonymizer import ReidentificationMap, generate_secret, load_secret
from anonymizer.batch import Settings, _chunks, run_batch
from anonymizer.files import list_inputs
from tests.anonymizer.test_cli import _gridpacs
from tests.factories import StudySpec, make_dataset, to_bytes, write_study

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """40 good instances of 4 patients, a truncated file and a burned-in one among them."""
    source = tmp_path / "in"
    for n in range(4):
        study = source / f"DOE_{n}"
        study.mkdir(parents=True)
        write_study(str(study), 10, StudySpec(patient_id=f"MRN-{n}", patient_name=f"DOE^P{n}"))
    (source / "DOE_1" / "truncated.dcm").write_bytes(to_bytes(make_dataset())[:-300])
    burned = make_dataset()
    burned.BurnedInAnnotation = "YES"
    (source / "DOE_2" / "burned.dcm").write_bytes(to_bytes(burned))
    return source


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    secret, key = tmp_path / "site.secret", tmp_path / "reid.key"
    generate_secret(secret)
    generate_secret(key)
    return Settings(
        secret,
        options=("clean-descriptors",),
        reid_map=tmp_path / "reid.sqlite",
        reid_key=key,
    )


def _contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_parallel_output_is_byte_identical_to_one_process(
    tmp_path: Path, folder: Path, settings: Settings
) -> None:
    inputs = list_inputs(folder)
    assert len(_chunks(inputs, 2)) > 2  # the work really is split
    seen: list[int] = []
    one = run_batch(settings, inputs, tmp_path / "one", jobs=1)
    two = run_batch(settings, inputs, tmp_path / "two", jobs=2, on_progress=seen.append)

    assert sum(seen) == len(inputs) and len(seen) > 1
    assert [o.source for o in two] == inputs  # input order, whatever finished first
    assert [(o.error_kind, o.target and o.target.name) for o in one] == [
        (o.error_kind, o.target and o.target.name) for o in two
    ]
    written = _contents(tmp_path / "one")
    assert len(written) == 40
    assert written == _contents(tmp_path / "two")

    # Both worker processes recorded into the one SQLite map: every patient resolves.
    assert settings.reid_map is not None and settings.reid_key is not None
    reid = ReidentificationMap(settings.reid_map, load_secret(settings.reid_key))
    originals = {
        m.original
        for name in written
        for m in reid.lookup(
            str(dcmread(tmp_path / "two" / name).PatientID), actor="test", reason="checking"
        )
    }
    assert originals == {f"MRN-{n}" for n in range(4)}


def test_cli_jobs_2_reports_each_failure_and_leaves_no_partial_file(
    tmp_path: Path, folder: Path, settings: Settings
) -> None:
    out = tmp_path / "out"
    result = _gridpacs(
        "anonymize", str(folder), str(out), "--secret-file", str(settings.secret_file),
        "--jobs", "2", "--json",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert (report["files"], report["written"], report["failed"]) == (42, 40, 2)
    failed = {Path(r["source"]).name: r["error_kind"] for r in report["results"] if r["error"]}
    assert failed == {"truncated.dcm": "UnreadableInput", "burned.dcm": "BurnedInAnnotation"}
    names = [p.name for p in out.iterdir()]
    assert len(names) == 40 and all(n.endswith(".dcm") and not n.startswith(".") for n in names)

    table = _gridpacs(
        "anonymize", str(folder), str(tmp_path / "again"), "--secret-file",
        str(settings.secret_file), "-j", "2",
    )  # fmt: skip
    assert table.returncode == 1
    assert "failures" in table.stdout and "truncated.dcm" in table.stdout
    assert _contents(tmp_path / "again") == _contents(out)


def test_jobs_must_be_positive(tmp_path: Path, settings: Settings) -> None:
    result = _gridpacs("anonymize", str(tmp_path), str(tmp_path / "out"), "--secret-file",
                       str(settings.secret_file), "--jobs", "0")  # fmt: skip
    assert result.returncode == 2
    assert not (tmp_path / "out").exists()
