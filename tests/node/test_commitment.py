"""Storage Commitment without the network: decoding the N-ACTION's request, encoding the
report, and what the node commits to, against a real index (SQLite and PostgreSQL) and a
real blob store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import MRImageStorage

from catalog.errors import CatalogUnavailable
from node.dicom.commitment import (
    ALL_COMMITTED,
    FAILURES_EXIST,
    STORAGE_COMMITMENT_PUSH,
    WELL_KNOWN_INSTANCE,
    parse_request,
    report_dataset,
)
from node.index import SqlIndex, open_index
from node.index.records import CommitmentRequest, RejectedInstance
from node.routing import Route, Router
from node.services.commitment import (
    CommitmentRefused,
    CommitmentReport,
    CommitmentService,
    FailureReason,
)
from node.services.ingest import IngestService, StoreRequest
from storage import FilesystemBlobStore, Quarantine, open_store
from tests.factories import StudySpec, make_dataset, to_bytes

CT = "1.2.840.10008.5.1.4.1.1.2"


def _information(tx: str | None, refs: list[tuple[str | None, str | None]]) -> Dataset:
    ds = Dataset()
    if tx is not None:
        ds.TransactionUID = tx
    items = []
    for sop_class, uid in refs:
        item = Dataset()
        if sop_class is not None:
            item.ReferencedSOPClassUID = sop_class
        if uid is not None:
            item.ReferencedSOPInstanceUID = uid
        items.append(item)
    ds.ReferencedSOPSequence = DicomSequence(items)
    return ds


def _parse(info: Dataset | None, **overrides: object) -> CommitmentRequest:
    arguments: dict[str, object] = {
        "sop_class_uid": STORAGE_COMMITMENT_PUSH,
        "sop_instance_uid": WELL_KNOWN_INSTANCE,
        "action_type": 1,
        "information": info,
        "calling_ae": "CT1",
        "called_ae": "GRIDPACS",
    }
    arguments.update(overrides)
    return parse_request(**arguments)  # type: ignore[arg-type]


def test_a_request_is_decoded_without_repeats() -> None:
    info = _information("1.2.3", [(CT, "1.2.9.1"), (CT, "1.2.9.2"), (CT, "1.2.9.1")])
    request = _parse(info)
    assert request == CommitmentRequest("CT1", "1.2.3", "GRIDPACS",
                                        ((CT, "1.2.9.1"), (CT, "1.2.9.2")))  # fmt: skip


@pytest.mark.parametrize(
    ("info", "overrides", "status", "message"),
    [
        (_information("1.2.3", [(CT, "1.2")]), {"action_type": 2}, 0x0123, "action type 2"),
        (_information("1.2.3", [(CT, "1.2")]), {"sop_instance_uid": "1.2.3"}, 0x0117, "1.20.1.1"),
        (_information("1.2.3", [(CT, "1.2")]), {"sop_class_uid": CT}, 0x0118, "not Storage"),
        (None, {}, 0x0115, "no action information"),
        (_information(None, [(CT, "1.2")]), {}, 0x0115, "Transaction UID is missing"),
        (_information("1.2.x", [(CT, "1.2")]), {}, 0x0115, "Transaction UID is not a UID"),
        (_information("1." + "2" * 70, [(CT, "1.2")]), {}, 0x0115, "is not a UID"),
        (_information("1.2.3", []), {}, 0x0115, "Sequence is empty"),
        (_information("1.2.3", [(CT, "1.2"), (None, "1.3")]), {}, 0x0115,
         "item 2: Referenced SOP Class UID is missing"),
        (_information("1.2.3", [(CT, "'; DROP TABLE instances;--")]), {}, 0x0115,
         "item 1: Referenced SOP Instance UID is not a UID"),
    ],
)  # fmt: skip
def test_a_malformed_request_is_refused_with_its_status(
    info: Dataset | None, overrides: dict[str, object], status: int, message: str
) -> None:
    with pytest.raises(CommitmentRefused, match=message) as refused:
        _parse(info, **overrides)
    assert refused.value.status == status


def test_the_report_lists_committed_and_failed_instances() -> None:
    report = CommitmentReport(
        "1.2.3",
        committed=((CT, "1.2.9.1"),),
        failed=((CT, "1.2.9.2", FailureReason.NO_SUCH_OBJECT_INSTANCE),),
    )
    event_type, ds = report_dataset(report, "GRIDPACS")
    assert event_type == FAILURES_EXIST
    assert ds.TransactionUID == "1.2.3" and ds.RetrieveAETitle == "GRIDPACS"
    assert [i.ReferencedSOPInstanceUID for i in ds.ReferencedSOPSequence] == ["1.2.9.1"]
    (failed,) = ds.FailedSOPSequence
    assert (failed.ReferencedSOPClassUID, failed.ReferencedSOPInstanceUID) == (CT, "1.2.9.2")
    assert failed.FailureReason == 0x0112

    event_type, ds = report_dataset(CommitmentReport("1.2.4", ((CT, "1.5"),), ()), "X")
    assert event_type == ALL_COMMITTED and "FailedSOPSequence" not in ds


@pytest.fixture
def archive(
    tmp_path: Path, db_url: str
) -> Iterator[tuple[IngestService, SqlIndex, FilesystemBlobStore]]:
    index = open_index(db_url)
    store = open_store(tmp_path / "blobs")
    ingest = IngestService(store, index, Quarantine(tmp_path / "q"), max_instance_bytes=10**7)
    yield ingest, index, store
    index.close()


ROUTER = Router([
    Route(ae_title="GRIDPACS", collection="local"),
    Route(ae_title="GRID", collection="", grid=True),
    Route(ae_title="TEACHING", collection="teaching"),
])  # fmt: skip


def _service(index: SqlIndex, store: FilesystemBlobStore, **kwargs: object) -> CommitmentService:
    return CommitmentService(index, store, ROUTER, {"CT1": object()}, **kwargs)  # type: ignore[arg-type]


def _store(ingest: IngestService, ds: Dataset, collection: str = "local") -> None:
    request = StoreRequest(to_bytes(ds), "CT1", "GRIDPACS", ds.SOPClassUID, ds.SOPInstanceUID)
    ingest.store(request, collection=collection)


def test_only_instances_held_as_named_in_the_called_aes_collection_are_committed(
    archive: tuple[IngestService, SqlIndex, FilesystemBlobStore],
) -> None:
    ingest, index, store = archive
    spec = StudySpec(patient_id="P1")
    kept, rejected, mr = (make_dataset(spec, instance_number=n) for n in range(3))
    elsewhere = make_dataset(StudySpec(patient_id="P9"))
    for ds in (kept, rejected, mr):
        _store(ingest, ds)
    _store(ingest, elsewhere, collection="teaching")
    index.reject([RejectedInstance(rejected.SOPInstanceUID, "local", reason="113001")])
    service = _service(index, store)

    request = CommitmentRequest("CT1", "1.2.3", "GRIDPACS", (
        (CT, kept.SOPInstanceUID),
        (CT, rejected.SOPInstanceUID),
        (MRImageStorage, mr.SOPInstanceUID),  # held, but as CT
        (CT, elsewhere.SOPInstanceUID),  # held in another AE's collection
        (CT, "1.2.999"),
    ))  # fmt: skip
    report = service.evaluate(request)

    assert report.committed == ((CT, kept.SOPInstanceUID),)
    assert [(uid, reason) for _, uid, reason in report.failed] == [
        (rejected.SOPInstanceUID, FailureReason.NO_SUCH_OBJECT_INSTANCE),
        (mr.SOPInstanceUID, FailureReason.CLASS_INSTANCE_CONFLICT),
        (elsewhere.SOPInstanceUID, FailureReason.NO_SUCH_OBJECT_INSTANCE),
        ("1.2.999", FailureReason.NO_SUCH_OBJECT_INSTANCE),
    ]
    teaching = CommitmentRequest("CT1", "1.2.4", "TEACHING", ((CT, elsewhere.SOPInstanceUID),))
    assert service.evaluate(teaching).committed == ((CT, elsewhere.SOPInstanceUID),)


def test_damaged_bytes_are_not_committed_unless_verification_is_off(
    archive: tuple[IngestService, SqlIndex, FilesystemBlobStore],
) -> None:
    ingest, index, store = archive
    ds = make_dataset(StudySpec(patient_id="P2"), rows=32, columns=32)
    _store(ingest, ds)
    record = index.get_record(ds.SOPInstanceUID)
    assert record is not None
    path = Path(store._path(record.blob_key))
    damaged = bytearray(path.read_bytes())
    damaged[-100] ^= 0xFF  # one flipped byte in the pixels
    path.write_bytes(bytes(damaged))
    request = CommitmentRequest("CT1", "1.2.3", "GRIDPACS", ((CT, ds.SOPInstanceUID),))

    report = _service(index, store).evaluate(request)
    assert report.committed == ()
    assert report.failed == ((CT, ds.SOPInstanceUID, FailureReason.PROCESSING_FAILURE),)

    unverified = _service(index, store, verify_bytes=False).evaluate(request)
    assert unverified.committed == ((CT, ds.SOPInstanceUID),)
    # the reporter's look at whether copies arrived reads no bytes: the damage shows only
    # in the evaluation the report is made of
    glance = _service(index, store).evaluate(request, verify_bytes=False)
    assert glance.committed == ((CT, ds.SOPInstanceUID),)


@pytest.mark.parametrize(
    ("request_", "status", "message"),
    [
        (CommitmentRequest("CT1", "1.2", "GRID", ((CT, "1.3"),)), 0x0110, "stores nothing"),
        (CommitmentRequest("MR9", "1.2", "GRIDPACS", ((CT, "1.3"),)), 0x0110,
         "MR9 is not a configured destination"),
        (CommitmentRequest("CT1", "1.2", "GRIDPACS", tuple((CT, f"1.{n}") for n in range(11))),
         0x0213, "11 instances in one request; at most 10"),
    ],
)  # fmt: skip
def test_requests_no_report_could_honour_are_refused_and_not_recorded(
    archive: tuple[IngestService, SqlIndex, FilesystemBlobStore],
    request_: CommitmentRequest,
    status: int,
    message: str,
) -> None:
    _, index, store = archive
    woken: list[bool] = []
    service = _service(index, store, max_references=10, on_recorded=lambda: woken.append(True))
    with pytest.raises(CommitmentRefused, match=message) as refused:
        service.accept(request_)
    assert refused.value.status == status
    assert index.due_commitments() == [] and woken == []

    service.accept(CommitmentRequest("CT1", "1.2", "GRIDPACS", ((CT, "1.3"),)))
    assert len(index.due_commitments()) == 1 and woken == [True]


def test_the_reporter_retries_an_unreachable_sender_then_gives_up(
    archive: tuple[IngestService, SqlIndex, FilesystemBlobStore],
) -> None:
    from node.commitment_reporter import CommitmentReporter
    from node.config import Destination
    from node.dicom.commitment import deliverer
    from tests.integration.processes import free_port

    _, index, store = archive
    nobody = {"CT1": Destination(host="127.0.0.1", port=free_port())}  # nothing listens
    service = CommitmentService(index, store, ROUTER, nobody)
    patient = CommitmentReporter(index, service, deliverer(nobody, "GRIDPACS", 5.0),
                                 first_retry=60.0)  # fmt: skip
    service.accept(CommitmentRequest("CT1", "1.2", "GRIDPACS", ((CT, "1.3"),)))

    assert patient.run_once() == 0
    assert index.due_commitments() == []  # not due again for a minute
    due = index.next_commitment_due()
    assert due is not None and 50 < (due - datetime.now(UTC)).total_seconds() <= 60
    assert index.commitment_counts()["pending"] == 1

    service.accept(CommitmentRequest("CT1", "1.4", "GRIDPACS", ((CT, "1.3"),)))
    impatient = CommitmentReporter(index, service, deliverer(nobody, "GRIDPACS", 5.0),
                                   give_up_after=0.0)  # fmt: skip
    assert impatient.run_once() == 0
    assert index.commitment_counts() == {"pending": 1, "reported": 0, "abandoned": 1}


def test_with_copies_at_two_sites_only_instances_the_grid_counts_twice_are_committed(
    archive: tuple[IngestService, SqlIndex, FilesystemBlobStore], db_url: str
) -> None:
    """The count is the catalog planner's own (distinct live sites), over a real catalog
    database: two nodes of one hospital are one site."""
    from catalog.db import Repository, open_database
    from catalog.placement import PullPlanner, ReplicationPolicy
    from catalog.records import NodeInfo
    from catalog.service import CatalogService
    from tests.catalog.builders import Outbox, StudyBuilder

    ingest, index, store = archive
    catalog = CatalogService("replica", Repository(open_database(db_url)))
    for name in ("here", "same-hospital", "elsewhere"):
        catalog.register_node(NodeInfo(name=name, ae_title=name.upper(), peer_address="x:1"))
    records = StudyBuilder(collection="local").instances(3)
    for record in records:  # held here, as the node would have published them
        ds = make_dataset(StudySpec(patient_id="P5"), sop_uid=record.sop_instance_uid)
        _store(ingest, ds)
    catalog.apply_changes("here", Outbox("here").added(records))
    catalog.apply_changes("same-hospital", Outbox("same-hospital").added(records[:2]))
    catalog.apply_changes("elsewhere", Outbox("elsewhere").added(records[:1]))
    policy = ReplicationPolicy(sites={"here": "h", "same-hospital": "h"})
    planner = PullPlanner(catalog.repository, policy)
    refs = tuple((CT, r.sop_instance_uid) for r in records)
    request = CommitmentRequest("CT1", "1.2.3", "GRIDPACS", refs)

    service = _service(index, store, copies=2, count_copies=planner.copies_of)
    assert service.needs_other_sites and not _service(index, store).needs_other_sites
    report = service.evaluate(request)
    assert report.committed == refs[:1] and report.waiting == refs[1:] and report.failed == ()
    given_up = report.without_waiting()
    assert given_up.committed == refs[:1] and given_up.waiting == ()
    assert given_up.failed == tuple((c, u, FailureReason.PROCESSING_FAILURE) for c, u in refs[1:])

    def unreachable(collection: str, uids: list[str]) -> dict[str, int]:
        raise CatalogUnavailable("no catalog replica answered CountCopies")

    blind = _service(index, store, copies=2, count_copies=unreachable).evaluate(request)
    assert blind.committed == () and blind.waiting == refs  # waits; never commits blind
    assert _service(index, store).evaluate(request).committed == refs  # copies = 1
