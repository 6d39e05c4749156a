"""`add_instances` (grouped bulk path) ends exactly where `add_instance` one by one does."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from node.index import AddOutcome, IndexQuery, InstanceRecord, Level, Model, SqlIndex
from node.index.records import LEVEL_KEYS, RejectedInstance

from .conftest import record

ALL_KEYS = tuple(k for keys in LEVEL_KEYS.values() for k in keys)


def _records() -> list[InstanceRecord]:
    """Interleaved patients/studies/series, changing and missing attributes, repeats."""
    out = []
    for n in range(60):
        p, st, se = n % 3, n % 5, n % 7
        out.append(
            record(
                f"5.{n}",
                patient_id=f"P{p}",
                study=f"6.{p}.{st}",
                series=f"7.{p}.{st}.{se}",
                PatientName=f"Name^{p}^{n // 20}",  # corrected along the way
                StudyDescription=None if n % 2 else f"desc {st}",
                Modality=("CT", "MR", None)[se % 3],
                InstanceNumber=str(n),
                StudyDate="20240101",
            )
        )
    return [*out, out[3], out[10]]  # re-sent within the batch


def _snapshot(index: SqlIndex) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for level in Level:
        query = IndexQuery(level=level, model=Model.PATIENT_ROOT, requested=ALL_KEYS)
        rows = [sorted(a.items(), key=lambda kv: kv[0]) for a in index.find(query)]
        answers[level.value] = sorted(map(repr, rows))
    changes = index.changes_since(0, 1000)
    answers["changes"] = [(c.seq, c.kind, c.record) for c in changes]
    answers["stats"] = index.stats()
    return answers


def test_bulk_equals_one_by_one(db_url: str, tmp_path: Any) -> None:
    records = _records()
    bulk = SqlIndex.open(db_url)
    single = SqlIndex.open(f"sqlite:///{tmp_path}/single.sqlite")
    try:
        outcomes = bulk.add_instances(records[:25]) + bulk.add_instances(records[25:])
        assert outcomes == [AddOutcome.STORED] * 60 + [AddOutcome.ALREADY_STORED] * 2
        assert [single.add_instance(r) for r in records] == outcomes
        assert _snapshot(bulk) == _snapshot(single)
        assert bulk.add_instances(records) == [AddOutcome.ALREADY_STORED] * len(records)
    finally:
        bulk.close()
        single.close()


def test_bulk_that_loses_a_race_falls_back_to_one_by_one(pg_url: str) -> None:
    """Another writer stores one of the chunk's SOPs between its check and its insert."""
    index = SqlIndex.open(pg_url)
    rival = SqlIndex.open(pg_url)
    records = [record(f"8.{n}", series="9.9", InstanceNumber=str(n)) for n in range(5)]
    raced = record("8.3", patient_id="RIVAL", study="4.4", series="4.4.4")
    fired: list[bool] = []

    def race(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not fired and statement.startswith("INSERT INTO instances"):
            fired.append(True)
            assert rival.add_instance(raced) is AddOutcome.STORED

    sa.event.listen(index.engine, "before_cursor_execute", race)
    try:
        outcomes = index.add_instances(records)
        assert fired
        assert outcomes == [AddOutcome.STORED] * 3 + [AddOutcome.ALREADY_STORED] + [
            AddOutcome.STORED
        ]
        stored = index.get_instance("8.3")
        assert stored is not None
        assert stored.series_instance_uid == "4.4.4"  # the rival's
        series = IndexQuery(
            level=Level.SERIES,
            filters={"SeriesInstanceUID": "9.9"},
            requested=("NumberOfSeriesRelatedInstances",),
        )
        [answer] = list(index.find(series))
        assert answer["NumberOfSeriesRelatedInstances"] == 4
        assert [c.seq for c in index.changes_since(0, 100)] == [1, 2, 3, 4, 5]
    finally:
        sa.event.remove(index.engine, "before_cursor_execute", race)
        index.close()
        rival.close()


def _rejection(rec: InstanceRecord) -> RejectedInstance:
    return RejectedInstance(rec.sop_instance_uid, rec.collection, reason="113001",
                            rejected_by="PACSADMIN")  # fmt: skip


def _levels(index: SqlIndex) -> dict[str, Any]:
    snapshot = _snapshot(index)
    return {level.value: snapshot[level.value] for level in Level}


def test_a_bulk_rejection_ends_where_deleting_one_by_one_does(db_url: str, tmp_path: Any) -> None:
    """Whole series, whole studies, a whole patient and single instances among others:
    counters, modalities and emptied parents exactly as `delete_instance` leaves them."""
    records = _records()[:60]
    bulk = SqlIndex.open(db_url)
    single = SqlIndex.open(f"sqlite:///{tmp_path}/single.sqlite")
    try:
        for index in (bulk, single):
            index.add_instances(records)
        going = [r for n, r in enumerate(records) if n % 3 == 0 or n % 7 in (1, 2) or n == 31]
        result = bulk.reject([_rejection(r) for r in going])
        for rec in going:
            assert single.delete_instance(rec.sop_instance_uid)
        assert result.removed == tuple(r.sop_instance_uid for r in going)
        assert _levels(bulk) == _levels(single)
        assert bulk.stats() == single.stats()
        patients = IndexQuery(level=Level.PATIENT, model=Model.PATIENT_ROOT,
                              requested=("PatientID",))  # fmt: skip
        assert sorted(a["PatientID"] for a in bulk.find(patients)) == ["P1", "P2"]  # P0: all
    finally:
        bulk.close()
        single.close()


def test_a_bulk_rejection_that_loses_a_race_is_redone(pg_url: str) -> None:
    """Another writer deletes a listed instance just before the counters are updated: the
    transaction is rolled back and redone, and the counters stay exact."""
    index = SqlIndex.open(pg_url)
    rival = SqlIndex.open(pg_url)
    records = [record(f"8.{n}", series="9.9", InstanceNumber=str(n)) for n in range(5)]
    index.add_instances(records)
    fired: list[bool] = []

    def race(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not fired and statement.startswith("UPDATE patients"):
            fired.append(True)
            assert rival.delete_instance("8.2")

    sa.event.listen(index.engine, "before_cursor_execute", race)
    try:
        result = index.reject([_rejection(r) for r in records[:3]])
        assert fired
        assert result.removed == ("8.0", "8.1") and "8.2" in result.recorded
        series = IndexQuery(
            level=Level.SERIES,
            filters={"SeriesInstanceUID": "9.9"},
            requested=("NumberOfSeriesRelatedInstances",),
        )
        [answer] = list(index.find(series))
        assert answer["NumberOfSeriesRelatedInstances"] == 2
    finally:
        sa.event.remove(index.engine, "before_cursor_execute", race)
        index.close()
        rival.close()
