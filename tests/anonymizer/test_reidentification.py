"""The re-identification map: encrypted at rest, site-only, safe with concurrent writers."""

from __future__ import annotations

import sqlite3
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
#: Who asks and why, for lookups whose record is not what a test is about.
ASKED = {"actor": "local:test", "reason": "test of the map"}


def test_record_and_lookup_round_trip_and_values_are_encrypted(tmp_path: Path) -> None:
    path = tmp_path / "reid.sqlite"
    reid = ReidentificationMap(path, KEY)
    reid.record("PatientID", "GP0123", "MRN-SECRET-4711")
    reid.record("PatientID", "GP0123", "MRN-SECRET-4711")  # idempotent
    found = reid.lookup("GP0123", **ASKED)
    assert [(m.kind, m.original) for m in found] == [("PatientID", "MRN-SECRET-4711")]
    assert reid.lookup("GP-unknown", **ASKED) == []
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"MRN-SECRET-4711" not in on_disk
    with pytest.raises(AnonymizationError, match="key"):
        ReidentificationMap(path, bytes(32)).lookup("GP0123", **ASKED)


def test_deidentifier_records_patient_and_study_mappings(tmp_path: Path) -> None:
    reid = ReidentificationMap(tmp_path / "reid.sqlite", KEY)
    deid = Deidentifier(load_profile(), SITE_A, reid_map=reid)
    spec = StudySpec(patient_id="MRN-0042", patient_name="DOE^JANE")
    result = deid.deidentify_part10(to_bytes(make_dataset(spec)))
    assert [m.original for m in reid.lookup(result.patient_id, **ASKED)] == ["MRN-0042"]
    assert [m.original for m in reid.lookup(f"ANON^{result.patient_id}", **ASKED)] == ["DOE^JANE"]
    assert [m.original for m in reid.lookup(result.study_instance_uid, **ASKED)] == [spec.study_uid]


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
    assert all(reid.lookup(f"GP{w}-{n}", **ASKED) for w in range(6) for n in range(40))
    assert [m.original for m in reid.lookup("GP-shared", **ASKED)] == ["MRN-shared"]


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
        assert [m.original for m in reid.lookup(pseudonym.patient_id, **ASKED)] == [f"MRN-{n}"]


def _mapped(tmp_path: Path, key: bytes = KEY) -> ReidentificationMap:
    reid = ReidentificationMap(tmp_path / "reid.sqlite", key)
    reid.record("PatientID", "GP0123", "MRN-SECRET-4711")
    reid.record("PatientName", "ANON^GP0123", "DOE^JANE")
    return reid


def test_every_lookup_is_recorded_with_who_why_and_what_never_the_value(tmp_path: Path) -> None:
    reid = _mapped(tmp_path)
    assert reid.lookups() == []
    assert [m.original for m in reid.lookup(" GP0123 ", actor="local:alice", reason="T-1")] == [
        "MRN-SECRET-4711"
    ]
    assert reid.lookup("GP-fishing", actor="local:bob", reason="curious") == []  # recorded too
    records = reid.lookups()
    assert [(r.seq, r.actor, r.reason, r.pseudonym, r.found) for r in records] == [
        (1, "local:alice", "T-1", "GP0123", 1),
        (2, "local:bob", "curious", "GP-fishing", 0),
    ]
    assert records[0].at.endswith("+00:00") and records[0].at <= records[1].at
    assert reid.verify_lookups() is None
    with sqlite3.connect(tmp_path / "reid.sqlite") as conn:
        logged = repr(conn.execute("SELECT * FROM lookup_log").fetchall())
    assert "MRN-SECRET-4711" not in logged and "DOE" not in logged


@pytest.mark.parametrize("who, why", [("", "ticket"), ("local:alice", " ")])
def test_a_lookup_needs_who_asks_and_why(tmp_path: Path, who: str, why: str) -> None:
    reid = _mapped(tmp_path)
    with pytest.raises(AnonymizationError, match="who asks and why"):
        reid.lookup("GP0123", actor=who, reason=why)
    assert reid.lookups() == []


def test_a_wrong_key_gets_nothing_and_records_nothing(tmp_path: Path) -> None:
    reid = _mapped(tmp_path)
    reid.lookup("GP0123", **ASKED)
    wrong = ReidentificationMap(tmp_path / "reid.sqlite", bytes(32))
    for pseudonym in ("GP0123", "GP-unknown"):  # the key is checked even when none matches
        with pytest.raises(AnonymizationError, match="does not decrypt"):
            wrong.lookup(pseudonym, **ASKED)
    assert [r.seq for r in reid.lookups()] == [1] and reid.verify_lookups() is None


def test_an_edited_or_removed_record_breaks_the_chain(tmp_path: Path) -> None:
    reid = _mapped(tmp_path)
    for n in range(4):
        reid.lookup("GP0123", actor=f"local:user{n}", reason=f"ticket {n}")
    database = tmp_path / "reid.sqlite"
    with sqlite3.connect(database) as conn:  # hide who asked second
        conn.execute("UPDATE lookup_log SET actor = 'local:nobody' WHERE seq = 2")
    assert reid.verify_lookups() == 2
    with sqlite3.connect(database) as conn:  # put it back, then remove the third
        conn.execute("UPDATE lookup_log SET actor = 'local:user1' WHERE seq = 2")
        conn.execute("DELETE FROM lookup_log WHERE seq = 3")
    assert reid.verify_lookups() == 4
    with sqlite3.connect(database) as conn:  # renumbered to hide the gap: still broken
        conn.execute("UPDATE lookup_log SET seq = 3 WHERE seq = 4")
    assert reid.verify_lookups() == 3


def test_no_lookup_is_answered_after_the_newest_record_was_edited(tmp_path: Path) -> None:
    reid = _mapped(tmp_path)
    reid.lookup("GP0123", **ASKED)
    reid.lookup("GP0123", actor="local:mallory", reason="none of your business")
    with sqlite3.connect(tmp_path / "reid.sqlite") as conn:
        conn.execute("UPDATE lookup_log SET reason = 'routine audit' WHERE seq = 2")
    with pytest.raises(AnonymizationError, match="newest lookup record does not verify"):
        reid.lookup("GP0123", **ASKED)
    assert reid.verify_lookups() == 2 and len(reid.lookups()) == 2


def test_a_lookup_whose_record_cannot_be_written_returns_nothing(tmp_path: Path) -> None:
    reid = _mapped(tmp_path)
    with sqlite3.connect(tmp_path / "reid.sqlite") as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON lookup_log "
            "BEGIN SELECT RAISE(ABORT, 'the log refuses records'); END"
        )
    with pytest.raises(AnonymizationError, match="cannot record the lookup, nothing returned"):
        reid.lookup("GP0123", **ASKED)
    assert reid.lookups() == []


def test_a_reason_naming_the_patient_is_sealed_like_the_originals(tmp_path: Path) -> None:
    reid = _mapped(tmp_path)
    reason = "incidental finding for DOE^JANE, MRN-SECRET-4711"
    reid.lookup("GP0123", actor="local:alice", reason=reason)
    assert [r.reason for r in reid.lookups()] == [reason]
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"incidental" not in on_disk and b"MRN-SECRET-4711" not in on_disk
    with sqlite3.connect(tmp_path / "reid.sqlite") as conn:  # moved to another record
        conn.execute("INSERT INTO lookup_log SELECT 2, at, actor, reason, pseudonym, found, "
                     "chain FROM lookup_log WHERE seq = 1")  # fmt: skip
    assert "does not decrypt" in reid.lookups()[1].reason
    assert reid.verify_lookups() == 2
