"""pynetdicom as a modality/viewer: every DIMSE service the node offers, statuses and counts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, evt, sop_class
from pynetdicom.sop_class import Verification

from tests.factories import StudySpec, make_dataset
from tests.integration.archive import load
from tests.integration.corpus import Corpus, build_corpus, dataset_bytes
from tests.integration.processes import (
    HOST,
    Node,
    NodeFactory,
    describe,
    free_port,
    run_dcmtk,
)
from tests.integration.scu import (
    QR_CLASSES,
    STORAGE_CLASSES,
    Received,
    Response,
    assert_only_requested,
    association,
    find,
    get,
    make_ae,
    matches,
    move,
    query,
    store,
    values,
)

pytestmark = pytest.mark.timeout(120)

DEST_AE = "ITSTORE"
CT_ONLY_AE = "CTONLY"
DOWN_AE = "DOWNSTORE"


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return build_corpus("ITN")


def _storage_scp(ae_title: str, classes: tuple[str, ...]) -> tuple[Any, int, Received]:
    """An in-process pynetdicom storage SCP that records what it receives."""
    received = Received()
    ae = AE(ae_title=ae_title)
    for uid in classes:
        ae.add_supported_context(uid, [ExplicitVRLittleEndian])
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(
        (HOST, port), block=False, evt_handlers=[(evt.EVT_C_STORE, received.handler)]
    )
    assert server is not None
    return server, port, received


@pytest.fixture(scope="module")
def destination() -> Iterator[tuple[int, Received]]:
    """The move destination ``ITSTORE``: accepts CT and MR."""
    server, port, received = _storage_scp(DEST_AE, STORAGE_CLASSES)
    yield port, received
    server.shutdown()


@pytest.fixture(scope="module")
def ct_only() -> Iterator[tuple[int, Received]]:
    """The move destination ``CTONLY``: refuses MR, so MR sub-operations must fail."""
    server, port, received = _storage_scp(CT_ONLY_AE, (CTImageStorage,))
    yield port, received
    server.shutdown()


@pytest.fixture(scope="module")
def node(
    module_node_factory: NodeFactory,
    destination: tuple[int, Received],
    ct_only: tuple[int, Received],
    corpus: Corpus,
) -> Node:
    destinations = {
        DEST_AE: destination[0],
        CT_ONLY_AE: ct_only[0],
        DOWN_AE: free_port(),  # configured, but nothing listens there
    }
    args = []
    for aet, port in destinations.items():
        args += ["--destination", f"{aet}={HOST}:{port}"]
    started = module_node_factory(args=args)
    load(started, corpus.datasets)
    return started


@pytest.fixture
def arrivals(destination: tuple[int, Received]) -> Received:
    _, received = destination
    received.items.clear()
    return received


def _uids(datasets: list[Dataset]) -> list[str]:
    return sorted(str(ds.SOPInstanceUID) for ds in datasets)


def assert_suboperation_counts(responses: list[Response], total: int) -> None:
    """Pending responses count down, the final one says ``total`` completed and none failed."""
    assert responses, "no response"
    *pending, final = responses
    assert final.status == 0x0000, f"final status 0x{final.status:04X}, expected 0x0000"
    assert all(r.status == 0xFF00 for r in pending), [f"0x{r.status:04X}" for r in pending]
    assert pending, "no pending response with sub-operation counts"
    remaining: list[int] = []
    for r in pending:
        counts = r.counts
        assert None not in counts.values(), f"pending response lacks counts: {counts}"
        summed = sum(int(v) for v in counts.values() if v is not None)
        assert summed == total, f"remaining+completed+failed+warning = {summed} != {total}"
        remaining.append(int(counts["NumberOfRemainingSuboperations"] or 0))
    assert remaining == sorted(remaining, reverse=True) and len(set(remaining)) == len(remaining), (
        f"NumberOfRemainingSuboperations does not decrease: {remaining}"
    )
    assert final.counts["NumberOfCompletedSuboperations"] == total, final.counts
    assert final.counts["NumberOfFailedSuboperations"] in (0, None), final.counts
    assert final.counts["NumberOfRemainingSuboperations"] in (0, None), final.counts


# --------------------------------------------------------------------------------- echo/store


def test_c_echo(node: Node) -> None:
    with association(node) as assoc:
        rsp = assoc.send_c_echo()
    assert rsp.Status == 0x0000


def test_c_store_success_then_findable(node: Node) -> None:
    ds = make_dataset(
        StudySpec(patient_id="ITNSTORE", patient_name="STORE^SAM"), rows=16, columns=16
    )
    with association(node) as assoc:
        assert store(assoc, ds) == 0x0000
        found = matches(
            find(
                assoc,
                "S",
                query(
                    "IMAGE",
                    StudyInstanceUID=ds.StudyInstanceUID,
                    SeriesInstanceUID=ds.SeriesInstanceUID,
                    SOPInstanceUID=None,
                ),
            )
        )
    assert _uids(found) == [ds.SOPInstanceUID]


COMMON_STORAGE_CLASSES = (
    sop_class.BasicTextSRStorage,
    sop_class.ComprehensiveSRStorage,
    sop_class.KeyObjectSelectionDocumentStorage,
    sop_class.GrayscaleSoftcopyPresentationStateStorage,
    sop_class.EncapsulatedPDFStorage,
    sop_class.RTStructureSetStorage,
    sop_class.RTDoseStorage,
    sop_class.DigitalXRayImageStorageForPresentation,
    sop_class.DigitalMammographyXRayImageStorageForPresentation,
    sop_class.UltrasoundMultiFrameImageStorage,
    sop_class.SegmentationStorage,
    sop_class.EnhancedCTImageStorage,
    sop_class.PositronEmissionTomographyImageStorage,
    sop_class.NuclearMedicineImageStorage,
    sop_class.ComputedRadiographyImageStorage,
    sop_class.SecondaryCaptureImageStorage,
)


def test_many_storage_sop_classes_stored_found_and_retrieved(node: Node) -> None:
    """What a hospital sends besides CT/MR: SR, KOS, PR, PDF, RT, DX, MG, US, SEG, PET …"""
    spec = StudySpec(patient_id="ITNCLASSES")
    datasets = [
        make_dataset(spec, instance_number=n, rows=8, columns=8, sop_class_uid=uid)
        for n, uid in enumerate(COMMON_STORAGE_CLASSES, 1)
    ]
    with association(node, [Verification, *QR_CLASSES, *COMMON_STORAGE_CLASSES]) as assoc:
        statuses = {str(ds.SOPClassUID.name): store(assoc, ds) for ds in datasets}
        assert all(s == 0x0000 for s in statuses.values()), statuses
        found = matches(
            find(
                assoc,
                "S",
                query(
                    "IMAGE",
                    StudyInstanceUID=spec.study_uid,
                    SeriesInstanceUID=spec.series_uid,
                    SOPInstanceUID=None,
                    SOPClassUID=None,
                ),
            )
        )
    assert sorted((str(d.SOPInstanceUID), str(d.SOPClassUID)) for d in found) == sorted(
        (str(d.SOPInstanceUID), str(d.SOPClassUID)) for d in datasets
    )
    got = Received()
    with association(
        node,
        [Verification, *QR_CLASSES],
        scp_roles=COMMON_STORAGE_CLASSES,
        handlers=[(evt.EVT_C_STORE, got.handler)],
    ) as assoc:
        responses = get(assoc, "S", query("STUDY", StudyInstanceUID=spec.study_uid))
    assert_suboperation_counts(responses, len(datasets))
    for ds in datasets:
        assert got.items[ds.SOPInstanceUID] == dataset_bytes(ds), ds.SOPClassUID.name


# -------------------------------------------------------------------------------------- find


def _level_queries(corpus: Corpus) -> dict[tuple[str, str], tuple[Dataset, str, list[str]]]:
    """(model, level) -> (identifier, key to compare, expected values)."""
    a, b = corpus.studies["A"].study_uid, corpus.studies["B"].study_uid
    series_a1 = corpus.series["A1"]
    return {
        ("P", "PATIENT"): (
            query("PATIENT", PatientID="ITN00?", PatientName=None, PatientSex=None),
            "PatientID",
            ["ITN001", "ITN002"],
        ),
        ("P", "STUDY"): (
            query("STUDY", PatientID="ITN001", StudyInstanceUID=None, StudyDate=None),
            "StudyInstanceUID",
            sorted([a, b]),
        ),
        ("S", "STUDY"): (
            query("STUDY", PatientName="DOE^JANE", PatientID="ITN00*", StudyInstanceUID=None),
            "StudyInstanceUID",
            sorted([a, b]),
        ),
        ("P", "SERIES"): (
            query("SERIES", PatientID="ITN001", StudyInstanceUID=a, SeriesInstanceUID=None),
            "SeriesInstanceUID",
            sorted([corpus.series["A1"], corpus.series["A2"]]),
        ),
        ("S", "SERIES"): (
            query("SERIES", StudyInstanceUID=b, SeriesInstanceUID=None, Modality=None),
            "SeriesInstanceUID",
            [corpus.series["B1"]],
        ),
        ("P", "IMAGE"): (
            query(
                "IMAGE",
                PatientID="ITN001",
                StudyInstanceUID=a,
                SeriesInstanceUID=series_a1,
                SOPInstanceUID=None,
            ),
            "SOPInstanceUID",
            _uids(corpus.in_series("A1")),
        ),
        ("S", "IMAGE"): (
            query("IMAGE", StudyInstanceUID=a, SeriesInstanceUID=series_a1, SOPInstanceUID=None),
            "SOPInstanceUID",
            _uids(corpus.in_series("A1")),
        ),
    }


@pytest.mark.parametrize(
    ("model", "level"),
    [
        ("P", "PATIENT"),
        ("P", "STUDY"),
        ("S", "STUDY"),
        ("P", "SERIES"),
        ("S", "SERIES"),
        ("P", "IMAGE"),
        ("S", "IMAGE"),
    ],
)
def test_c_find_each_level_and_model(node: Node, corpus: Corpus, model: str, level: str) -> None:
    identifier, key, expected = _level_queries(corpus)[(model, level)]
    with association(node) as assoc:
        responses = find(assoc, model, identifier)
    found = matches(responses)  # pending 0xFF00/0xFF01 ..., then 0x0000
    assert len(responses) == len(expected) + 1
    assert values(found, key) == expected
    assert_only_requested(found, identifier)
    assert all(ds.QueryRetrieveLevel == level for ds in found)


def test_c_find_no_match_is_final_success_only(node: Node) -> None:
    with association(node) as assoc:
        responses = find(assoc, "S", query("STUDY", PatientID="NOBODY", StudyInstanceUID=None))
    assert [r.status for r in responses] == [0x0000]


def test_c_find_universal_matching_and_returned_values(node: Node, corpus: Corpus) -> None:
    identifier = query(
        "SERIES",
        StudyInstanceUID=corpus.studies["A"].study_uid,
        SeriesInstanceUID=None,
        Modality="",
        SeriesNumber=None,
        SeriesDescription=None,
    )
    with association(node) as assoc:
        found = matches(find(assoc, "S", identifier))
    assert values(found, "SeriesDescription") == ["AXIAL", "CORONAL"]
    assert values(found, "Modality") == ["CT", "CT"]
    assert values(found, "SeriesNumber") == ["1", "2"]


def test_c_find_study_time_range(node: Node, corpus: Corpus) -> None:
    with association(node) as assoc:
        inside = matches(
            find(
                assoc,
                "S",
                query(
                    "STUDY", PatientID="ITN001", StudyTime="100000-110000", StudyInstanceUID=None
                ),
            )
        )
        outside = matches(
            find(
                assoc,
                "S",
                query("STUDY", PatientID="ITN001", StudyTime="120000-", StudyInstanceUID=None),
            )
        )
    assert len(inside) == 2
    assert outside == []


def test_c_find_study_root_patient_attributes_at_study_level(node: Node, corpus: Corpus) -> None:
    identifier = query(
        "STUDY",
        StudyDate="20250301",
        PatientID=None,
        PatientName=None,
        PatientBirthDate=None,
        AccessionNumber=None,
        StudyInstanceUID=None,
    )
    with association(node) as assoc:
        found = matches(find(assoc, "S", identifier))
    mine = [ds for ds in found if str(ds.PatientID).startswith("ITN")]
    assert len(mine) == 1
    assert mine[0].PatientName == "SMITH^JOHN"
    assert mine[0].PatientBirthDate == "19800202"
    assert mine[0].AccessionNumber == "ITNC"


@pytest.mark.parametrize(
    ("stored", "asked", "patient_id", "name", "pattern"),
    [
        ("ISO_IR 192", "ISO_IR 192", "ITNUTF8", "Müller^Jürgen", "Mül*"),
        ("ISO_IR 100", "ISO_IR 192", "ITNLAT1", "Ødegård^Åse", "Ødeg*"),
        ("ISO_IR 192", "ISO_IR 100", "ITNUTF8B", "Gärtner^Björn", "Gärt*"),
    ],
)
def test_c_find_non_ascii_answers_in_utf8(
    node: Node, stored: str, asked: str, patient_id: str, name: str, pattern: str
) -> None:
    """Names stored in UTF-8 or Latin-1 match queries in either, answers come in UTF-8."""
    spec = StudySpec(patient_id=patient_id, patient_name=name)
    load(node, [make_dataset(spec, rows=16, columns=16, charset=stored)])
    with association(node) as assoc:
        by_id = matches(find(assoc, "P", query("PATIENT", PatientID=patient_id, PatientName=None)))
        q = query("PATIENT", PatientName=pattern, PatientID=None)
        q.SpecificCharacterSet = asked
        by_name = matches(find(assoc, "P", q))
    assert len(by_id) == 1
    assert str(by_id[0].PatientName) == name
    assert by_id[0].get("SpecificCharacterSet") == "ISO_IR 192"
    assert values(by_name, "PatientID") == [patient_id]


# -------------------------------------------------------------------------------------- move


@pytest.mark.parametrize("model", ["S", "P"])
def test_c_move_study_with_pending_counts(
    node: Node, corpus: Corpus, arrivals: Received, model: str
) -> None:
    keys = {"StudyInstanceUID": corpus.studies["A"].study_uid}
    if model == "P":
        keys["PatientID"] = "ITN001"
    with association(node) as assoc:
        responses = move(assoc, model, query("STUDY", **keys), DEST_AE)
    expected = corpus.in_study("A")
    assert_suboperation_counts(responses, len(expected))
    assert sorted(arrivals.items) == _uids(expected)
    for ds in expected:
        assert arrivals.items[ds.SOPInstanceUID] == dataset_bytes(ds), ds.SOPInstanceUID


def test_c_move_patient_level(node: Node, corpus: Corpus, arrivals: Received) -> None:
    with association(node) as assoc:
        responses = move(assoc, "P", query("PATIENT", PatientID="ITN002"), DEST_AE)
    expected = corpus.of_patient("ITN002")
    assert_suboperation_counts(responses, len(expected))
    assert sorted(arrivals.items) == _uids(expected)


def test_c_move_image_level_uid_list(node: Node, corpus: Corpus, arrivals: Received) -> None:
    series = corpus.in_series("A1")
    two = [str(series[0].SOPInstanceUID), str(series[1].SOPInstanceUID)]
    identifier = query(
        "IMAGE",
        StudyInstanceUID=corpus.studies["A"].study_uid,
        SeriesInstanceUID=corpus.series["A1"],
        SOPInstanceUID=two,
    )
    with association(node) as assoc:
        responses = move(assoc, "S", identifier, DEST_AE)
    assert responses[-1].status == 0x0000
    assert responses[-1].counts["NumberOfCompletedSuboperations"] == 2
    assert sorted(arrivals.items) == sorted(two)


def test_c_move_unknown_destination_a801(node: Node, corpus: Corpus, arrivals: Received) -> None:
    with association(node) as assoc:
        responses = move(
            assoc, "S", query("STUDY", StudyInstanceUID=corpus.studies["A"].study_uid), "NOWHERE"
        )
    assert responses[-1].status == 0xA801, f"got 0x{responses[-1].status:04X}"
    assert arrivals.items == {}


def test_c_move_with_some_failed_suboperations_is_b000(
    node: Node, corpus: Corpus, ct_only: tuple[int, Received]
) -> None:
    """Patient ITN001 has 5 CT and 2 MR instances; CTONLY takes only CT."""
    _, received = ct_only
    received.items.clear()
    with association(node) as assoc:
        responses = move(assoc, "P", query("PATIENT", PatientID="ITN001"), CT_ONLY_AE)
    final = responses[-1]
    assert final.status == 0xB000, f"final status 0x{final.status:04X}, expected 0xB000"
    assert final.counts["NumberOfCompletedSuboperations"] == 5, final.counts
    assert final.counts["NumberOfFailedSuboperations"] == 2, final.counts
    assert sorted(received.items) == _uids(corpus.in_study("A"))


def test_c_move_to_unreachable_destination_is_not_success(node: Node, corpus: Corpus) -> None:
    with association(node) as assoc:
        responses = move(
            assoc, "S", query("STUDY", StudyInstanceUID=corpus.studies["C"].study_uid), DOWN_AE
        )
        final = responses[-1]
        assert final.status != 0x0000, "C-MOVE to a destination that is down reported success"
        assert final.counts["NumberOfCompletedSuboperations"] in (0, None), final.counts
        assert assoc.send_c_echo().Status == 0x0000


# --------------------------------------------------------------------------------------- get


@pytest.mark.parametrize(("model", "level"), [("S", "STUDY"), ("P", "PATIENT"), ("S", "SERIES")])
def test_c_get_with_counts(node: Node, corpus: Corpus, model: str, level: str) -> None:
    if level == "STUDY":
        identifier, expected = (
            query("STUDY", StudyInstanceUID=corpus.studies["A"].study_uid),
            corpus.in_study("A"),
        )
    elif level == "PATIENT":
        identifier, expected = query("PATIENT", PatientID="ITN002"), corpus.of_patient("ITN002")
    else:
        identifier = query(
            "SERIES",
            StudyInstanceUID=corpus.studies["B"].study_uid,
            SeriesInstanceUID=corpus.series["B1"],
        )
        expected = corpus.in_series("B1")
    got = Received()
    with association(
        node, scp_roles=STORAGE_CLASSES, handlers=[(evt.EVT_C_STORE, got.handler)]
    ) as assoc:
        responses = get(assoc, model, identifier)
    assert_suboperation_counts(responses, len(expected))
    assert sorted(got.items) == _uids(expected)
    for ds in expected:
        assert got.items[ds.SOPInstanceUID] == dataset_bytes(ds), ds.SOPInstanceUID


def test_c_get_with_some_failed_suboperations_is_b000(node: Node, corpus: Corpus) -> None:
    """The SCU takes CT only, patient ITN001 has 5 CT and 2 MR instances."""
    got = Received()
    with association(
        node,
        (Verification, *QR_CLASSES, CTImageStorage),
        scp_roles=(CTImageStorage,),
        handlers=[(evt.EVT_C_STORE, got.handler)],
    ) as assoc:
        responses = get(assoc, "P", query("PATIENT", PatientID="ITN001"))
    final = responses[-1]
    assert final.status == 0xB000, f"final status 0x{final.status:04X}, expected 0xB000"
    assert final.counts["NumberOfCompletedSuboperations"] == 5, final.counts
    assert final.counts["NumberOfFailedSuboperations"] == 2, final.counts
    assert sorted(got.items) == _uids(corpus.in_study("A"))


# ------------------------------------------------------------------------- association policy


def test_calling_ae_outside_allowlist_is_rejected(node_factory: NodeFactory) -> None:
    guarded = node_factory(args=["--allow-ae", "TRUSTED1", "--allow-ae", "TRUSTED2"])
    for trusted in ("TRUSTED1", "TRUSTED2"):
        with association(guarded, [Verification], calling_ae=trusted) as assoc:
            assert assoc.send_c_echo().Status == 0x0000

    ae = make_ae("INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate(HOST, guarded.port, ae_title=guarded.called_ae)
    try:
        assert assoc.is_rejected, (
            f"INTRUDER not rejected (established={assoc.is_established}, "
            f"aborted={assoc.is_aborted})"
        )
        rj = assoc.acceptor.primitive
        assert rj is not None
        # rejected-permanent, by the service user, "calling AE title not recognised"
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03), (
            rj.result_str,
            rj.source_str,
            rj.reason_str,
        )
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()

    result = run_dcmtk(
        "echoscu", "-aet", "INTRUDER", "-aec", guarded.called_ae, HOST, str(guarded.port)
    )
    assert result.returncode != 0, describe(result)


def test_wrong_called_ae_is_rejected(node: Node) -> None:
    ae = make_ae("ITSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate(HOST, node.port, ae_title="NOTGRIDPACS")
    try:
        assert assoc.is_rejected, (
            f"association to called AE NOTGRIDPACS not rejected "
            f"(established={assoc.is_established}, aborted={assoc.is_aborted})"
        )
        rj = assoc.acceptor.primitive
        assert rj is not None
        # rejected-permanent, by the service user, "called AE title not recognised"
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x07), (
            rj.result_str,
            rj.source_str,
            rj.reason_str,
        )
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    # and the node still serves its own AE title
    with association(node, [Verification]) as ok:
        assert ok.send_c_echo().Status == 0x0000


# ------------------------------------------------------------------------------- TCP_NODELAY


def test_retrieve_is_not_held_back_by_nagle(node: Node, arrivals: Received) -> None:
    """C-GET of 60 small instances in well under 60 x 40 ms.

    The node sends each C-STORE sub-operation as a command and a dataset segment, then
    waits for the response; with Nagle's algorithm on its socket the dataset waits for the
    client's delayed ACK (~40 ms) every time. This is the observable side of "TCP_NODELAY on
    every socket the node owns" (measured here: ~50 ms per instance with Nagle on a
    pynetdicom sender, ~8 ms without).
    """
    spec = StudySpec(patient_id="ITNNAGLE", patient_name="NAGLE^JOHN")
    count = 60
    datasets = [
        make_dataset(spec, instance_number=i, rows=8, columns=8) for i in range(1, count + 1)
    ]
    load(node, datasets)
    identifier = query("STUDY", StudyInstanceUID=spec.study_uid)
    got = Received()
    with association(
        node, scp_roles=STORAGE_CLASSES, handlers=[(evt.EVT_C_STORE, got.handler)]
    ) as assoc:
        get(assoc, "S", identifier)  # warm-up: blobs in the page cache, code paths loaded
        started = time.perf_counter()
        responses = get(assoc, "S", identifier)
        elapsed = time.perf_counter() - started
    assert responses[-1].status == 0x0000
    assert len(got.items) == count
    assert elapsed < count * 0.040 * 0.75, f"C-GET of {count} instances took {elapsed:.2f} s"

    # the same through the node's outgoing C-MOVE association
    with association(node) as assoc:
        started = time.perf_counter()
        responses = move(assoc, "S", identifier, DEST_AE)
        elapsed = time.perf_counter() - started
    assert responses[-1].status == 0x0000
    assert elapsed < count * 0.040 * 0.75, f"C-MOVE of {count} instances took {elapsed:.2f} s"
