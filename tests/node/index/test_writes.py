"""Adding and deleting: counters, duplicates (also concurrent), conflicts and the outbox."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from node.index import (
    AddOutcome,
    ChangeKind,
    IndexQuery,
    Level,
    Model,
    RecordConflict,
    SqlIndex,
    StoredInstance,
)

from .conftest import record

STUDY = "1.2.826.0.1.1"
COUNTS = (
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
)


def _patient(index: SqlIndex, patient_id: str = "PID1") -> dict[str, object] | None:
    query = IndexQuery(
        level=Level.PATIENT,
        model=Model.PATIENT_ROOT,
        filters={"PatientID": patient_id},
        requested=(*COUNTS, "PatientName"),
    )
    answers = list(index.find(query))
    assert len(answers) <= 1
    return answers[0] if answers else None


def _study(index: SqlIndex, uid: str = STUDY) -> dict[str, object] | None:
    query = IndexQuery(
        level=Level.STUDY,
        filters={"StudyInstanceUID": uid},
        requested=(
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
            "ModalitiesInStudy",
            "StudyDescription",
            "PatientName",
        ),
    )
    answers = list(index.find(query))
    return answers[0] if answers else None


def _series_counts(index: SqlIndex) -> dict[object, object]:
    query = IndexQuery(level=Level.SERIES, requested=("NumberOfSeriesRelatedInstances",))
    return {a["SeriesInstanceUID"]: a["NumberOfSeriesRelatedInstances"] for a in index.find(query)}


def test_counters_follow_adds_duplicates_and_deletes(index: SqlIndex) -> None:
    assert index.add_instance(record("1.1", series="9.1", Modality="CT")) is AddOutcome.STORED
    assert index.add_instance(record("1.2", series="9.1", Modality="CT")) is AddOutcome.STORED
    assert index.add_instance(record("1.3", series="9.2", Modality="MR")) is AddOutcome.STORED
    assert index.add_instance(record("1.4", study="7.7", series="9.3")) is AddOutcome.STORED
    before = index.last_change_seq()
    assert index.add_instance(record("1.2", series="9.1")) is AddOutcome.ALREADY_STORED
    assert index.add_instances([record("1.1", series="9.1"), record("1.3", series="9.2")]) == [
        AddOutcome.ALREADY_STORED,
        AddOutcome.ALREADY_STORED,
    ]
    assert index.last_change_seq() == before  # duplicates leave no outbox row
    assert _patient(index) == {
        "PatientID": "PID1",
        "NumberOfPatientRelatedStudies": 2,
        "NumberOfPatientRelatedSeries": 3,
        "NumberOfPatientRelatedInstances": 4,
        "PatientName": "Doe^John",
    }
    study = _study(index)
    assert study is not None
    assert study["NumberOfStudyRelatedSeries"] == 2
    assert study["NumberOfStudyRelatedInstances"] == 3
    assert study["ModalitiesInStudy"] == ["CT", "MR"]
    assert _series_counts(index) == {"9.1": 2, "9.2": 1, "9.3": 1}

    assert index.delete_instance("1.3") is True  # last MR instance: series goes
    assert index.delete_instance("1.3") is False
    assert index.delete_instance("no.such.uid") is False
    study = _study(index)
    assert study is not None
    assert study["ModalitiesInStudy"] == ["CT"]
    assert study["NumberOfStudyRelatedSeries"] == 1
    assert _series_counts(index) == {"9.1": 2, "9.3": 1}
    patient = _patient(index)
    assert patient is not None
    assert patient["NumberOfPatientRelatedSeries"] == 2
    assert patient["NumberOfPatientRelatedInstances"] == 3

    assert index.delete_instance("1.4") is True  # last of its study: study goes
    assert _study(index, "7.7") is None
    patient = _patient(index)
    assert patient is not None
    assert patient["NumberOfPatientRelatedStudies"] == 1
    for sop in ("1.1", "1.2"):
        assert index.delete_instance(sop) is True
    assert _patient(index) is None  # emptied patient goes too
    assert index.stats() == {
        "patients": 0,
        "studies": 0,
        "series": 0,
        "instances": 0,
        "bytes": 0,
        "last_change_seq": before + 4,
    }
    # and a deleted instance can come back
    assert index.add_instance(record("1.3", series="9.2")) is AddOutcome.STORED


def test_later_attributes_update_the_rows(index: SqlIndex) -> None:
    index.add_instance(record("1.1", PatientName="Doe^Jon", StudyDescription="CHEST"))
    index.add_instance(record("1.2", PatientName="Doe^John", StudyDescription=None))
    study = _study(index)
    assert study is not None
    assert study["PatientName"] == "Doe^John"
    assert study["StudyDescription"] == "CHEST"  # an absent value does not erase
    found = IndexQuery(level=Level.STUDY, filters={"PatientName": "doe^john"})
    assert len(list(index.find(found))) == 1
    assert list(index.find(IndexQuery(level=Level.STUDY, filters={"PatientName": "DOE^JON"}))) == []


def test_conflicting_hierarchy_is_refused_and_leaves_no_trace(index: SqlIndex) -> None:
    index.add_instance(record("1.1"))
    seq, stats = index.last_change_seq(), index.stats()
    with pytest.raises(RecordConflict):
        index.add_instance(record("1.2", patient_id="OTHER"))  # same study, other patient
    with pytest.raises(RecordConflict):
        index.add_instance(record("1.3", collection="c2"))  # same study, other collection
    with pytest.raises(RecordConflict):
        index.add_instance(record("1.4", study="5.5"))  # same series, other study
    assert index.last_change_seq() == seq
    assert index.stats() == stats
    assert _patient(index, "OTHER") is None
    patient = _patient(index)
    assert patient is not None
    assert patient["NumberOfPatientRelatedInstances"] == 1


def test_a_failed_batch_rolls_back_its_outbox_rows(index: SqlIndex) -> None:
    """The outbox rows of records added before a failure go with the transaction."""
    index.add_instance(record("1.1"))
    seq = index.last_change_seq()
    batch = [record("2.1", study="2.0", series="2.0.1"), record("1.2", patient_id="OTHER")]
    with pytest.raises(RecordConflict):
        index.add_instances(batch)
    assert index.last_change_seq() == seq
    assert index.changes_since(seq, 10) == []
    assert index.get_instance("2.1") is None


def test_outbox_is_ordered_and_carries_the_record(index: SqlIndex) -> None:
    records = [record(f"1.{n}", InstanceNumber=str(n)) for n in range(1, 6)]
    for rec in records:
        index.add_instance(rec)
    index.delete_instance("1.2")
    changes = index.changes_since(0, 100)
    assert [c.seq for c in changes] == [1, 2, 3, 4, 5, 6]
    assert [c.kind for c in changes] == [ChangeKind.INSTANCE_ADDED] * 5 + [
        ChangeKind.INSTANCE_DELETED
    ]
    assert changes[0].record == records[0]
    deleted = changes[-1].record
    assert deleted.sop_instance_uid == "1.2"
    assert deleted.blob_key == "blob-1.2"
    assert deleted.attributes["InstanceNumber"] == 2
    assert deleted.received_at == records[1].received_at
    assert [c.seq for c in index.changes_since(2, 2)] == [3, 4]
    assert index.changes_since(6, 10) == []
    assert index.last_change_seq() == 6
    assert index.prune_changes(4) == 4
    assert [c.seq for c in index.changes_since(0, 100)] == [5, 6]
    index.add_instance(record("1.9"))
    assert index.last_change_seq() == 7  # never reused after pruning
    assert [c.seq for c in index.changes_since(0, 100)] == [5, 6, 7]


def test_concurrent_duplicates_store_once(index: SqlIndex) -> None:
    rec = record("1.1")
    barrier = threading.Barrier(6)

    def add(_: int) -> AddOutcome:
        barrier.wait(timeout=10)
        return index.add_instance(rec)

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(add, range(6)))
    assert outcomes.count(AddOutcome.STORED) == 1
    assert outcomes.count(AddOutcome.ALREADY_STORED) == 5
    assert index.last_change_seq() == 1
    patient = _patient(index)
    assert patient is not None
    assert patient["NumberOfPatientRelatedInstances"] == 1


def test_concurrent_adds_keep_counters_exact_and_outbox_gapless(index: SqlIndex) -> None:
    """Threads adding to the same new study (and re-sending) never lose an update."""
    records = [
        record(f"1.{n}", series=f"9.{n % 4}", Modality=("CT", "MR", "US", "SR")[n % 4])
        for n in range(40)
    ]

    def add(n: int) -> AddOutcome:
        return index.add_instance(records[n % 40])

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(add, range(60)))
    assert outcomes.count(AddOutcome.STORED) == 40
    study = _study(index)
    assert study is not None
    assert study["NumberOfStudyRelatedInstances"] == 40
    assert study["NumberOfStudyRelatedSeries"] == 4
    assert study["ModalitiesInStudy"] == ["CT", "MR", "SR", "US"]
    assert _series_counts(index) == {f"9.{k}": 10 for k in range(4)}
    assert [c.seq for c in index.changes_since(0, 1000)] == list(range(1, 41))


def test_instances_for_retrieve(index: SqlIndex) -> None:
    index.add_instance(record("1.1", series="9.1", InstanceNumber="2"))
    index.add_instance(record("1.2", series="9.1", InstanceNumber="1"))
    index.add_instance(record("1.3", series="9.2"))
    index.add_instance(record("2.1", study="2.0", series="2.0.1", patient_id="PID2"))
    query = IndexQuery(level=Level.STUDY, filters={"StudyInstanceUID": STUDY})
    assert index.count_instances(query) == 3
    found = list(index.instances(query))
    assert {i.sop_instance_uid for i in found} == {"1.1", "1.2", "1.3"}
    assert found[0] == StoredInstance(
        sop_instance_uid=found[0].sop_instance_uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        blob_key=f"blob-{found[0].sop_instance_uid}",
        size=1000,
        study_instance_uid=STUDY,
        series_instance_uid=found[0].series_instance_uid,
    )
    series = IndexQuery(level=Level.SERIES, filters={"SeriesInstanceUID": "9.1"})
    assert [i.sop_instance_uid for i in index.instances(series)] == ["1.2", "1.1"]
    patient = IndexQuery(
        level=Level.PATIENT, model=Model.PATIENT_ROOT, filters={"PatientID": "PID2"}
    )
    assert [i.sop_instance_uid for i in index.instances(patient)] == ["2.1"]
    one = IndexQuery(level=Level.IMAGE, filters={"SOPInstanceUID": "1.3"})
    assert index.count_instances(one) == 1
    restricted = IndexQuery(level=Level.STUDY, collections=("elsewhere",))
    assert index.count_instances(restricted) == 0
    assert index.get_instance("1.3") == StoredInstance(
        "1.3", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "blob-1.3", 1000, STUDY, "9.2"
    )
    assert index.get_instance("nope") is None
    rec = index.get_record("1.1")
    assert rec is not None
    assert rec == replace(
        record("1.1", series="9.1", InstanceNumber="2"), attributes=rec.attributes
    )
    assert rec.attributes["InstanceNumber"] == 2


def test_a_resent_instance_is_already_stored_even_if_its_parents_now_conflict(
    index: SqlIndex,
) -> None:
    """The instance insert is the duplicate check; a conflict on the way there is
    not reported for an instance that is held already (nothing changes either way)."""
    index.add_instance(record("1.1", StudyDescription="CHEST"))
    seq, stats = index.last_change_seq(), index.stats()
    assert index.add_instance(record("1.1", patient_id="OTHER")) == AddOutcome.ALREADY_STORED
    assert index.add_instance(record("1.1", study="5.5")) == AddOutcome.ALREADY_STORED
    resent = record("1.1", StudyDescription="ABDOMEN", PatientName="Roe^Jane")
    assert index.add_instance(resent) == AddOutcome.ALREADY_STORED
    assert (index.last_change_seq(), index.stats()) == (seq, stats)
    study = _study(index)
    assert study is not None
    assert study["StudyDescription"] == "CHEST"  # a duplicate's updates are rolled back
    assert study["NumberOfStudyRelatedInstances"] == 1
    with pytest.raises(RecordConflict):  # a new instance under those parents still is one
        index.add_instance(record("1.2", study="5.5"))


def test_a_failure_before_commit_leaves_no_trace(index: SqlIndex) -> None:
    """``before_commit`` runs inside the transaction: if it raises, nothing commits and
    the next add numbers its outbox row as if the failed one never happened."""
    index.add_instance(record("1.1"))
    stats = index.stats()

    def blob_lost() -> None:
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        index.add_instance(record("1.2", series="9.9", Modality="MR"), before_commit=blob_lost)
    assert index.stats() == stats
    assert index.get_instance("1.2") is None
    study = _study(index)
    assert study is not None and study["ModalitiesInStudy"] == ["CT"]
    calls: list[int] = []
    seen = lambda: calls.append(index.stats()["instances"])  # noqa: E731
    index.add_instance(record("1.3"), before_commit=seen)
    assert calls == [1]  # ran before COMMIT: another connection does not see the row yet
    assert [c.seq for c in index.changes_since(0, 10)] == [1, 2]
    assert index.get_instance("1.3") is not None
