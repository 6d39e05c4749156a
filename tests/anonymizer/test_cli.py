"""The CLI as a user runs it: ``python -m gridpacs anonymize …`` in a subprocess."""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.fileset import FileSet

from anonymizer import generate_secret
from tests.factories import StudySpec, make_dataset, make_pdf_document, to_bytes, write_study

ROOT = Path(__file__).resolve().parents[2]


def _gridpacs(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "gridpacs", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    secret, key = tmp_path / "site.secret", tmp_path / "reid.key"
    generate_secret(secret)
    generate_secret(key)
    return {"secret": secret, "key": key, "map": tmp_path / "reid.sqlite"}


def test_folder_with_bad_files_reports_each_and_exits_nonzero(
    tmp_path: Path, site: dict[str, Path]
) -> None:
    source = tmp_path / "in" / "DOE_JANE"
    source.mkdir(parents=True)
    write_study(str(source), 3, StudySpec(patient_id="MRN-77"))
    (source / "truncated.dcm").write_bytes(to_bytes(make_dataset())[:-300])
    burned = make_dataset()
    burned.BurnedInAnnotation = "YES"
    (source / "burned.dcm").write_bytes(to_bytes(burned))
    (source / "request.dcm").write_bytes(to_bytes(make_pdf_document(text="DOE^JANE")))
    out = tmp_path / "out"
    result = _gridpacs(
        "anonymize", str(tmp_path / "in"), str(out),
        "--secret-file", str(site["secret"]),
        "--option", "retain-uids", "--option", "clean-descriptors",
        "--reid-map", str(site["map"]), "--reid-key", str(site["key"]),
        "--json",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert (report["files"], report["written"], report["failed"]) == (6, 3, 3)
    assert report["options"] == ["retain-uids", "clean-descriptors"]
    kinds = {Path(r["source"]).name: r["error_kind"] for r in report["results"]}
    assert kinds["truncated.dcm"] == "UnreadableInput"
    assert kinds["burned.dcm"] == "BurnedInAnnotation"
    assert kinds["request.dcm"] == "EncapsulatedDocument"
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 3 and all(n.endswith(".dcm") for n in written)
    assert not any("DOE" in n for n in written)

    pseudonym = dcmread(out / written[0]).PatientID
    back = _gridpacs(
        "anonymizer", "reidentify", pseudonym,
        "--map", str(site["map"]), "--key", str(site["key"]), "--json",
        "--reason", "incidental finding, ticket 4711",
    )  # fmt: skip
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout) == [{"kind": "PatientID", "original": "MRN-77"}]


def test_all_good_exits_zero_with_a_summary_table(tmp_path: Path, site: dict[str, Path]) -> None:
    source = tmp_path / "one.dcm"
    source.write_bytes(to_bytes(make_dataset()))
    result = _gridpacs("anonymize", str(source), str(tmp_path / "out"), "--secret-file",
                       str(site["secret"]))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "written" in result.stdout and "files/s" in result.stdout
    assert len(list((tmp_path / "out").iterdir())) == 1


def test_a_dl_folder_where_it_runs_does_not_break_the_decoders(
    tmp_path: Path, site: dict[str, Path]
) -> None:
    # python-gdcm runs ``import dl`` as pydicom loads it: a downloads folder named ``dl``
    # in the working directory once made every pydicom import fail (anonymizer/_gdcm_guard).
    (tmp_path / "dl").mkdir()
    source = tmp_path / "one.dcm"
    source.write_bytes(to_bytes(make_dataset()))
    bare = subprocess.run([sys.executable, "-c", "import pydicom"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "has no attribute 'RTLD_NOW'" in bare.stderr  # what it guards against
    result = _gridpacs("anonymize", str(source), str(tmp_path / "out"), "--secret-file",
                       str(site["secret"]), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out").iterdir())) == 1


def test_allow_documents_writes_an_encapsulated_pdf(tmp_path: Path, site: dict[str, Path]) -> None:
    source = tmp_path / "request.dcm"
    source.write_bytes(to_bytes(make_pdf_document(text="DOE^JANE")))
    refused = _gridpacs("anonymize", str(source), str(tmp_path / "refused"), "--secret-file",
                        str(site["secret"]))  # fmt: skip
    assert refused.returncode == 1 and "EncapsulatedDocument" in refused.stdout
    result = _gridpacs("anonymize", str(source), str(tmp_path / "out"), "--secret-file",
                       str(site["secret"]), "--allow-documents", "--jobs", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    [written] = list((tmp_path / "out").iterdir())
    assert dcmread(written).MIMETypeOfEncapsulatedDocument == "application/pdf"


def test_setup_errors_exit_2_with_one_line(tmp_path: Path, site: dict[str, Path]) -> None:
    broken = tmp_path / "deid.broken"
    broken.write_text("FORMAT dicom\n%header\nSCRAMBLE PatientID\n")
    bad = _gridpacs("anonymize", str(tmp_path), str(tmp_path / "out"), "--secret-file",
                    str(site["secret"]), "--recipe", str(broken))  # fmt: skip
    assert bad.returncode == 2 and "not a recognised action" in bad.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("which", ["secret", "key"])
def test_a_secret_others_may_read_is_refused_before_anything_is_written(
    tmp_path: Path, site: dict[str, Path], which: str
) -> None:
    # Whoever reads the site secret computes every pseudonym (patient IDs are few enough to
    # try them all); whoever reads the key decrypts the re-identification map.
    source = tmp_path / "one.dcm"
    source.write_bytes(to_bytes(make_dataset()))
    site[which].chmod(0o640)
    args = ["anonymize", str(source), str(tmp_path / "out"), "--secret-file", str(site["secret"])]
    args += ["--reid-map", str(site["map"]), "--reid-key", str(site["key"])]
    refused = _gridpacs(*args)
    assert refused.returncode == 2, refused.stderr
    assert f"{site[which]} is accessible by group/others (mode 0640); chmod 600" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not site["map"].exists()
    site[which].chmod(0o600)
    assert _gridpacs(*args).returncode == 0
    assert len(list((tmp_path / "out").iterdir())) == 1


def test_reidentify_asks_why_and_lookups_lists_and_checks_every_request(
    tmp_path: Path, site: dict[str, Path]
) -> None:
    source = tmp_path / "one.dcm"
    source.write_bytes(to_bytes(make_dataset(StudySpec(patient_id="MRN-991"))))
    out = tmp_path / "out"
    common = ["--map", str(site["map"]), "--key", str(site["key"])]
    made = _gridpacs("anonymize", str(source), str(out), "--secret-file", str(site["secret"]),
                     "--reid-map", str(site["map"]), "--reid-key", str(site["key"]))  # fmt: skip
    assert made.returncode == 0, made.stderr
    pseudonym = dcmread(next(out.iterdir())).PatientID
    unasked = _gridpacs("anonymizer", "reidentify", pseudonym, *common)
    assert unasked.returncode == 2 and "--reason" in unasked.stderr
    assert "MRN-991" not in unasked.stdout
    asked = _gridpacs("anonymizer", "reidentify", pseudonym, *common, "--reason", "ticket 12")
    assert asked.returncode == 0 and "MRN-991" in asked.stdout
    assert (
        _gridpacs("anonymizer", "reidentify", "GP-NOPE", *common, "--reason", "x").returncode == 1
    )

    listed = _gridpacs("anonymizer", "lookups", *common, "--json")
    assert listed.returncode == 0, listed.stderr
    report = json.loads(listed.stdout)
    user = pwd.getpwuid(os.getuid()).pw_name
    assert [(r["actor"], r["reason"], r["pseudonym"], r["found"]) for r in report["lookups"]] == [
        (f"local:{user}", "ticket 12", pseudonym, 1),
        (f"local:{user}", "x", "GP-NOPE", 0),
    ]
    assert report["broken_at"] is None and "MRN-991" not in listed.stdout
    table = _gridpacs("anonymizer", "lookups", *common)
    assert table.returncode == 0 and "2 records, chain intact" in table.stdout

    with sqlite3.connect(site["map"]) as conn:
        conn.execute("DELETE FROM lookup_log WHERE seq = 1")
    broken = _gridpacs("anonymizer", "lookups", *common)
    assert broken.returncode == 1 and "lookup record 2 does not verify" in broken.stderr


def test_a_cd_folder_is_de_identified_and_its_dicomdir_skipped_with_a_reason(
    tmp_path: Path, site: dict[str, Path]
) -> None:
    # A CD's DICOMDIR indexes the files by path (patient names, IDs in its records); it is
    # no instance, and failing it would make every CD import exit 1.
    media = FileSet()
    for n in (1, 2):
        media.add(make_dataset(StudySpec(patient_id="MRN-CD-1", patient_name="CDNAME^JOHN"),
                               instance_number=n))  # fmt: skip
    media.write(tmp_path / "cd")
    assert (tmp_path / "cd" / "DICOMDIR").is_file()
    out = tmp_path / "out"
    args = ["anonymize", str(tmp_path / "cd"), str(out), "--secret-file", str(site["secret"])]
    result = _gridpacs(*args, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert (report["files"], report["written"], report["failed"]) == (2, 2, 0)
    assert [Path(s["source"]).name for s in report["skipped"]] == ["DICOMDIR"]
    assert "not an instance" in report["skipped"][0]["reason"]
    written = list(out.iterdir())
    assert len(written) == 2 and not any(b"CDNAME" in p.read_bytes() for p in written)
    shown = _gridpacs(*args)
    assert shown.returncode == 0 and "skipped" in shown.stdout and "DICOMDIR" in shown.stdout


def test_clean_pixel_data_blanks_a_known_scanner_and_refuses_the_unknown(
    tmp_path: Path, site: dict[str, Path]
) -> None:
    from tests.factories import BANNER_TEXT, make_ultrasound

    source = tmp_path / "in"
    source.mkdir()
    (source / "iu22.dcm").write_bytes(
        to_bytes(make_ultrasound(rows=600, columns=800, frames=1, banner_rows=59))
    )
    unknown = make_ultrasound(manufacturer="Nobody")
    del unknown.ImageType
    (source / "unknown.dcm").write_bytes(to_bytes(unknown))
    out = tmp_path / "out"
    result = _gridpacs("anonymize", str(source), str(out), "--secret-file", str(site["secret"]),
                       "--option", "clean-pixel-data", "--json")  # fmt: skip
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    kinds = {Path(r["source"]).name: r["error_kind"] for r in report["results"]}
    assert kinds == {"iu22.dcm": None, "unknown.dcm": "PixelsFlagged"}
    [written] = list(out.iterdir())
    assert BANNER_TEXT[:12] not in written.read_bytes()
    assert dcmread(written).BurnedInAnnotation == "NO"
