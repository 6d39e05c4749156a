"""The DICOM gateway in-process, driven by a real pynetdicom SCU over loopback.

Subprocess and DCMTK interop tests live in tests/integration; these pin the status codes
and counts quickly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from node.app import NodeApp
from node.config import load_config
from node.index.records import InstanceRecord
from tests.factories import StudySpec, make_dataset

pytestmark = pytest.mark.timeout(60)


class StoreCollector:
    """A pynetdicom storage SCP on a free port that keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[Dataset] = []
        self.lock = threading.Lock()
        self.ae = AE(ae_title="COLLECTOR")
        self.ae.supported_contexts = StoragePresentationContexts
        self.server = self.ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        self.port = self.server.server_address[1]

    def _on_store(self, event: evt.Event) -> int:
        with self.lock:
            self.received.append(event.dataset)
        return 0x0000

    def stop(self) -> None:
        self.ae.shutdown()


@pytest.fixture
def collector() -> Iterator[StoreCollector]:
    c = StoreCollector()
    yield c
    c.stop()


@pytest.fixture
def node(tmp_path: Path, collector: StoreCollector) -> Iterator[NodeApp]:
    cfg = load_config(
        None,
        {
            "data_dir": str(tmp_path / "node"),
            "dicom": {
                "port": 0,
                "destinations": {"COLLECTOR": {"host": "127.0.0.1", "port": collector.port}},
            },
        },
    )
    app = NodeApp(cfg)
    app.start()
    yield app
    app.stop()


def _assoc(node: NodeApp, called: str = "GRIDPACS", calling: str = "TESTSCU"):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(MRImageStorage)
    for cx in (
        PatientRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
        StudyRootQueryRetrieveInformationModelGet,
    ):
        ae.add_requested_context(cx)
    return ae.associate("127.0.0.1", node.dicom.port, ae_title=called)


def _store_study(node: NodeApp, spec: StudySpec, count: int) -> list[Dataset]:
    datasets = [make_dataset(spec, instance_number=n) for n in range(1, count + 1)]
    assoc = _assoc(node)
    assert assoc.is_established
    try:
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    return datasets


def _find(node: NodeApp, identifier: Dataset, model=StudyRootQueryRetrieveInformationModelFind):  # type: ignore[no-untyped-def]
    assoc = _assoc(node)
    try:
        responses = list(assoc.send_c_find(identifier, model))
    finally:
        assoc.release()
    final = responses[-1][0].Status
    return [ident for status, ident in responses if status.Status == 0xFF00], final


def test_echo_and_wrong_called_ae(node: NodeApp) -> None:
    assoc = _assoc(node)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    rejected = _assoc(node, called="NOT_ME")
    assert rejected.is_rejected


def test_store_find_study_and_patient_levels(node: NodeApp) -> None:
    _store_study(node, StudySpec(patient_id="P1", patient_name="DOE^JANE"), 3)
    _store_study(
        node, StudySpec(patient_id="P2", patient_name="ROE^RICH", study_date="20230101"), 2
    )
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = "P1"
    query.StudyInstanceUID = ""
    query.NumberOfStudyRelatedInstances = ""
    matches, final = _find(node, query)
    assert final == 0x0000
    assert len(matches) == 1
    assert matches[0].NumberOfStudyRelatedInstances == 3
    assert "PatientName" not in matches[0]  # only requested keys come back
    assert matches[0].RetrieveAETitle == "GRIDPACS"

    patients = Dataset()
    patients.QueryRetrieveLevel = "PATIENT"
    patients.PatientName = "*OE*"
    patients.PatientID = ""
    found, final = _find(node, patients, PatientRootQueryRetrieveInformationModelFind)
    assert final == 0x0000
    assert sorted(m.PatientID for m in found) == ["P1", "P2"]


def test_find_bad_level_is_refused(node: NodeApp) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"  # not part of Study Root
    query.PatientID = ""
    matches, final = _find(node, query)
    assert matches == [] and final == 0xA900


def test_move_to_known_and_unknown_destinations(node: NodeApp, collector: StoreCollector) -> None:
    sent = _store_study(node, StudySpec(patient_id="PM"), 4)
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = sent[0].StudyInstanceUID
    assoc = _assoc(node)
    responses = list(
        assoc.send_c_move(ident, "COLLECTOR", StudyRootQueryRetrieveInformationModelMove)
    )
    unknown = list(assoc.send_c_move(ident, "NOBODY", StudyRootQueryRetrieveInformationModelMove))
    assoc.release()
    final = responses[-1][0]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 4
    pending = [s.NumberOfRemainingSuboperations for s, _ in responses[:-1]]
    assert pending == sorted(pending, reverse=True)
    assert sorted(d.SOPInstanceUID for d in collector.received) == sorted(
        d.SOPInstanceUID for d in sent
    )
    assert collector.received[0].PixelData == sent[0].PixelData
    assert unknown[-1][0].Status == 0xA801


def test_get_returns_every_instance(node: NodeApp) -> None:
    sent = _store_study(node, StudySpec(patient_id="PG"), 3)
    got: list[Dataset] = []
    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    role = build_role(CTImageStorage, scp_role=True)

    def on_store(event: evt.Event) -> int:
        got.append(event.dataset)
        return 0x0000

    assoc = ae.associate(
        "127.0.0.1",
        node.dicom.port,
        ae_title="GRIDPACS",
        ext_neg=[role],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    ident = Dataset()
    ident.QueryRetrieveLevel = "SERIES"
    ident.SeriesInstanceUID = sent[0].SeriesInstanceUID
    responses = list(assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet))
    assoc.release()
    assert responses[-1][0].Status == 0x0000
    assert responses[-1][0].NumberOfCompletedSuboperations == 3
    assert sorted(d.SOPInstanceUID for d in got) == sorted(d.SOPInstanceUID for d in sent)


def test_store_failures_get_statuses_and_the_server_keeps_serving(node: NodeApp) -> None:
    assoc = _assoc(node)
    ds = make_dataset()
    del ds.StudyInstanceUID
    assert assoc.send_c_store(ds).Status == 0xC001
    mismatched = make_dataset()
    mismatched.SOPClassUID = MRImageStorage  # dataset says MR, sent on a CT context below
    status = assoc.send_c_store(mismatched)
    assoc.release()
    # pynetdicom picks the context from the dataset's SOP class, so this one is MR: stored
    assert status.Status == 0x0000
    assert len(node.quarantine.list()) == 1
    assoc = _assoc(node)
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_c_cancel_stops_a_find_with_cancel_status(node: NodeApp) -> None:
    # 5,000 study matches, indexed in bulk (the fixture, not what is tested); the cancel is
    # sent right after the first response. The node writes responses faster than its DUL
    # sends them, and holds at most find_scp.MAX_QUEUED unsent, so the DUL reads the cancel
    # while the answer is still streaming (~20 responses later on an idle machine)
    records = [
        InstanceRecord(
            sop_instance_uid=f"1.2.826.0.1.{n}.1",
            sop_class_uid=CTImageStorage,
            study_instance_uid=f"1.2.826.0.1.{n}",
            series_instance_uid=f"1.2.826.0.1.{n}.2",
            patient_id=f"CANCEL{n:04d}",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            blob_key="0" * 64,
            size=1,
            collection="local",
            attributes={"Modality": "CT"},
        )
        for n in range(5000)
    ]
    node.index.add_instances(records)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = "CANCEL*"
    assoc = _assoc(node)
    try:
        responses = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind, msg_id=7)
        first_status, _ = next(responses)
        assert first_status.Status == 0xFF00
        cx_id = next(
            cx.context_id
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == StudyRootQueryRetrieveInformationModelFind
        )
        assoc.send_c_cancel(7, cx_id)
        rest = [status.Status for status, _ in responses]
    finally:
        assoc.release()
    assert rest[-1] == 0xFE00  # Matching terminated due to Cancel
    assert len(rest) - 1 < 4999  # not every remaining match was sent


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_find_answers_on_both_backends_and_syntaxes(
    tmp_path: Path, db_url: str, syntax: str
) -> None:
    """The encoded-identifier path end to end: values, charset, only the requested keys,
    literal LIKE characters, and an answer too large for one PDU (the fallback)."""
    cfg = load_config(None, {"data_dir": str(tmp_path / "node"), "db_url": db_url,
                             "dicom": {"port": 0}})  # fmt: skip
    app = NodeApp(cfg)
    app.start()
    try:
        _store_study(app, StudySpec(patient_id="P1", patient_name="SMITH^ANN"), 2)
        _store_study(app, StudySpec(patient_id="P2", patient_name="SMÖRG^ÅSA"), 1)
        _store_study(app, StudySpec(patient_id="P3", patient_name="SM_%TH^X"), 1)
        _store_study(app, StudySpec(patient_id="P4", patient_name="SMXXTH^Y",
                                    study_description="D" * 64), 1)  # fmt: skip
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind, [syntax])

        def find(name: str, max_pdu: int = 16382) -> list[Dataset]:
            assoc = ae.associate("127.0.0.1", app.dicom.port, ae_title="GRIDPACS", max_pdu=max_pdu)
            assert assoc.is_established
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.PatientName = name
            query.PatientID = ""
            query.NumberOfStudyRelatedInstances = ""
            query.StudyDescription = ""
            try:
                responses = list(
                    assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
                )
            finally:
                assoc.release()
            assert [s.Status for s, _ in responses[:-1]] == [0xFF00] * (len(responses) - 1)
            assert responses[-1][0].Status == 0x0000 and responses[-1][1] is None
            return [ident for _, ident in responses[:-1]]

        found = {str(ds.PatientID): ds for ds in find("SM*")}
        assert sorted(found) == ["P1", "P2", "P3", "P4"]
        assert found["P1"].NumberOfStudyRelatedInstances == 2
        assert "SpecificCharacterSet" not in found["P1"]
        assert found["P2"].SpecificCharacterSet == "ISO_IR 192"
        assert str(found["P2"].PatientName) == "SMÖRG^ÅSA"
        assert sorted(found["P1"].dir()) == [
            "NumberOfStudyRelatedInstances", "PatientID", "PatientName", "QueryRetrieveLevel",
            "RetrieveAETitle", "StudyDescription",
        ]  # fmt: skip
        assert [str(ds.PatientID) for ds in find("SM_%*")] == ["P3"]  # literal _ and %
        assert [str(ds.PatientID) for ds in find("sm?rg*")] == ["P2"]  # PN: any case
        # a peer that takes 200-byte PDUs: P1's answer fits one PDU with its command set
        # (184 bytes in implicit VR), P4's with the 64-character description (238) goes
        # out the pynetdicom way, command and identifier fragments in separate PDUs
        small = {str(ds.PatientID): ds for ds in find("SM*", max_pdu=200)}
        assert small["P4"].StudyDescription == "D" * 64
        assert sorted(small) == sorted(found)
    finally:
        app.stop()
