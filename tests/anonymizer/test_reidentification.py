"""The re-identification map: encrypted at rest, site-only, safe with concurrent writers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from anonymizer import (
    AnonymizationError,
    Deidentifier,
    ReidentificationMap,
    generate_secret,
    load_profile,
    load_secret,
)
from tests.anonymizer.conftest import SITE_A
from tests.factories import StudySpec, make_dataset, to_bytes

KEY = bytes(range(200, 232))


def test_record_and_lookup_round_trip_and_values_are_encrypted(tmp_path: Path) -> None:
    path = tmp_path / "reid.sqlite"
    reid = ReidentificationMap(path, KEY)
    reid.record("PatientID", "GP0123", "MRN-SECRET-4711")
    reid.record("PatientID", "GP0123", "MRN-SECRET-4711")  # idempotent
    found = reid.lookup("GP0123")
    assert [(m.kind, m.original) for m in found] == [("PatientID", "MRN-SECRET-4711")]
    assert reid.lookup("GP-unknown") == []
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"MRN-SECRET-4711" not in on_disk
    with pytest.raises(AnonymizationError, match="key"):
        ReidentificationMap(path, bytes(32)).lookup("GP0123")


def test_deidentifier_records_patient_and_study_mappings(tmp_path: Path) -> None:
    reid = ReidentificationMap(tmp_path / "reid.sqlite", KEY)
    deid = Deidentifier(load_profile(), SITE_A, reid_map=reid)
    spec = StudySpec(patient_id="MRN-0042", patient_name="DOE^JANE")
    result = deid.deidentify_part10(to_bytes(make_dataset(spec)))
    assert [m.original for m in reid.lookup(result.patient_id)] == ["MRN-0042"]
    assert [m.original for m in reid.lookup(f"ANON^{result.patient_id}")] == ["DOE^JANE"]
    assert [m.original for m in reid.lookup(result.study_instance_uid)] == [spec.study_uid]


def test_concurrent_writers_each_get_their_mapping(tmp_path: Path) -> None:
    reid = ReidentificationMap(tmp_path / "reid.sqlite", KEY)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            other = ReidentificationMap(tmp_path / "reid.sqlite", KEY)
            for n in range(40):
                target = reid if n % 2 else other
                target.record("PatientID", f"GP{worker}-{n}", f"MRN-{worker}-{n}")
                target.record("PatientID", "GP-shared", "MRN-shared")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert all(reid.lookup(f"GP{w}-{n}") for w in range(6) for n in range(40))
    assert [m.original for m in reid.lookup("GP-shared")] == ["MRN-shared"]


def test_secret_files(tmp_path: Path) -> None:
    path = tmp_path / "site.secret"
    secret = generate_secret(path)
    assert load_secret(path) == secret and len(secret) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(AnonymizationError, match="exists"):
        generate_secret(path)
    short = tmp_path / "short.secret"
    short.write_text("abcd\n")
    with pytest.raises(AnonymizationError):
        load_secret(short)
    with pytest.raises(AnonymizationError):
        Deidentifier(load_profile(), b"too short")


def test_one_deidentifier_serves_concurrent_ingest_threads(tmp_path: Path) -> None:
    reid = ReidentificationMap(tmp_path / "reid.sqlite", KEY)
    deid = Deidentifier(load_profile(), SITE_A, reid_map=reid)
    patients = [StudySpec(patient_id=f"MRN-{n}", patient_name=f"DOE^P{n}") for n in range(4)]
    inputs = [to_bytes(make_dataset(p, instance_number=i)) for p in patients for i in (1, 2, 3)]
    expected = [Deidentifier(load_profile(), SITE_A).deidentify_bytes(d) for d in inputs]
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def work(indexes: list[int]) -> None:
        try:
            for i in indexes:
                results[i] = deid.deidentify_bytes(inputs[i])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(list(range(w, len(inputs), 4)),)) for w in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert [results[i] for i in range(len(inputs))] == expected
    for n in range(4):
        pseudonym = Deidentifier(load_profile(), SITE_A).deidentify_part10(inputs[3 * n])
        assert [m.original for m in reid.lookup(pseudonym.patient_id)] == [f"MRN-{n}"]
