"""Ingest service against a real index (SQLite and PostgreSQL) and real blob store."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import MRImageStorage

from node.errors import MissingAttribute, SopClassMismatch, UndecodableDataset
from node.index import open_index
from node.index.records import AddOutcome
from node.services.ingest import IngestService, StoreRequest
from storage import Quarantine, open_store
from tests.factories import StudySpec, make_dataset, to_bytes


@pytest.fixture
def service(tmp_path: Path, db_url: str):  # type: ignore[no-untyped-def]
    index = open_index(db_url)
    store = open_store(tmp_path / "blobs")
    quarantine = Quarantine(tmp_path / "quarantine")
    svc = IngestService(store, index, quarantine, max_instance_bytes=1_000_000)
    yield svc, index, store, quarantine
    index.close()


def _request(data: bytes, sop_class: str, sop_uid: str) -> StoreRequest:
    return StoreRequest(data, "MODALITY", "GRIDPACS", sop_class, sop_uid)


def test_store_indexes_and_keeps_the_bytes_as_received(service) -> None:  # type: ignore[no-untyped-def]
    svc, index, store, _ = service
    ds = make_dataset(StudySpec(patient_id="P1"))
    data = to_bytes(ds)
    result = svc.store(_request(data, ds.SOPClassUID, ds.SOPInstanceUID), collection="local")
    assert result.outcome is AddOutcome.STORED
    stored = index.get_instance(ds.SOPInstanceUID)
    assert stored is not None and store.get(stored.blob_key) == data
    again = svc.store(_request(data, ds.SOPClassUID, ds.SOPInstanceUID), collection="local")
    assert again.outcome is AddOutcome.ALREADY_STORED
    assert index.stats()["instances"] == 1


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda ds: delattr(ds, "StudyInstanceUID"), MissingAttribute),
        (lambda ds: setattr(ds, "SeriesInstanceUID", ""), MissingAttribute),
        (lambda ds: setattr(ds, "SeriesInstanceUID", "1.2.abc"), UndecodableDataset),
        (lambda ds: setattr(ds, "PatientID", "X" * 65), UndecodableDataset),
    ],
)
def test_bad_datasets_are_refused_and_quarantined(service, mutate, error) -> None:  # type: ignore[no-untyped-def]
    svc, index, _, quarantine = service
    ds = make_dataset()
    mutate(ds)
    with pytest.raises(error):
        svc.store(_request(to_bytes(ds), ds.SOPClassUID, ds.SOPInstanceUID), collection="local")
    assert index.stats()["instances"] == 0
    entries = quarantine.list()
    assert len(entries) == 1 and entries[0].reason


def test_truncated_and_garbage_bytes_are_quarantined(service) -> None:  # type: ignore[no-untyped-def]
    svc, _, _, quarantine = service
    ds = make_dataset()
    data = to_bytes(ds)
    garbage = b"\x00" * 128 + b"DICM" + b"garbage" * 10
    for payload in (data[:-10], garbage):
        with pytest.raises(UndecodableDataset):
            svc.store(_request(payload, ds.SOPClassUID, ds.SOPInstanceUID), collection="local")
    assert sorted(e.size for e in quarantine.list()) == sorted([len(data) - 10, len(garbage)])


def test_sop_class_mismatch(service) -> None:  # type: ignore[no-untyped-def]
    svc, _, _, quarantine = service
    ds = make_dataset()
    with pytest.raises(SopClassMismatch):
        svc.store(_request(to_bytes(ds), MRImageStorage, ds.SOPInstanceUID), collection="local")
    assert "does not match" in quarantine.list()[0].reason


def test_the_same_instance_from_concurrent_associations_is_stored_once(service) -> None:  # type: ignore[no-untyped-def]
    """Two associations sending one instance at the same moment: both are acknowledged,
    one stores it, the other finds it stored; one row, one outbox change, one blob."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    svc, index, store, _ = service
    ds = make_dataset(StudySpec(patient_id="P1"))
    data = to_bytes(ds)
    barrier = threading.Barrier(4)

    def send(_: int) -> AddOutcome:
        barrier.wait(timeout=10)
        request = _request(data, ds.SOPClassUID, ds.SOPInstanceUID)
        return svc.store(request, collection="local").outcome

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(send, range(4)))
    assert sorted(o.value for o in outcomes) == ["already_stored"] * 3 + ["stored"]
    assert index.stats()["instances"] == 1
    assert [c.record.sop_instance_uid for c in index.changes_since(0, 10)] == [ds.SOPInstanceUID]
    stored = index.get_instance(ds.SOPInstanceUID)
    assert stored is not None and store.get(stored.blob_key) == data


def test_a_dataset_pydicom_must_read_is_indexed_as_before(service) -> None:  # type: ignore[no-untyped-def]
    """A character set with code extensions is beyond the quick header path: pydicom's
    path stores and indexes it, decoded."""
    svc, index, _, _ = service
    ds = make_dataset(StudySpec(patient_id="P1"))
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou=\u5c71\u7530^\u592a\u90ce"
    data = to_bytes(ds)
    result = svc.store(_request(data, ds.SOPClassUID, ds.SOPInstanceUID), collection="local")
    assert result.outcome is AddOutcome.STORED
    record = index.get_record(ds.SOPInstanceUID)
    assert record is not None
    assert record.attributes["PatientName"] == "Yamada^Tarou=\u5c71\u7530^\u592a\u90ce"
