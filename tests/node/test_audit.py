"""The node's audit trail fails closed: a query or retrieve whose row cannot be written is
refused before anything is sent; a store goes on (the sender is owed its answer) and the
lost row is logged. What each request writes: tests/integration/test_permissions.py."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from node.app import NodeApp
from node.audit import open_audit
from node.config import load_config
from tests.factories import StudySpec, make_dataset

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeApp]:
    app = NodeApp(load_config(None, {"data_dir": str(tmp_path), "dicom": {"port": 0}}))
    app.start()
    yield app
    app.stop()


def _associate(node: NodeApp) -> object:
    ae = AE(ae_title="WS1")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", node.dicom.port, ae_title="GRIDPACS")
    assert assoc.is_established
    return assoc


def _study_identifier(uid: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = uid
    return identifier


def test_reads_are_refused_when_their_audit_row_cannot_be_written(
    node: NodeApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = make_dataset(StudySpec(patient_id="AUDIT-1"))
    assoc = _associate(node)
    assert int(assoc.send_c_store(ds).Status) == 0  # type: ignore[attr-defined]
    found = [
        int(s.Status)
        for s, _ in assoc.send_c_find(  # type: ignore[attr-defined]
            _study_identifier(ds.StudyInstanceUID), StudyRootQueryRetrieveInformationModelFind
        )
    ]
    assert found == [0xFF00, 0x0000]  # served and recorded

    with sqlite3.connect(tmp_path / "audit.sqlite") as db:  # the audit log goes away
        db.execute("DROP TABLE security_audit_log")
    with caplog.at_level(logging.ERROR, logger="gridpacs"):
        responses = list(
            assoc.send_c_find(  # type: ignore[attr-defined]
                _study_identifier(ds.StudyInstanceUID), StudyRootQueryRetrieveInformationModelFind
            )
        )
        ((status, identifier),) = responses  # no match was sent
        assert int(status.Status) == 0xC000 and identifier is None
        assert "audit log cannot be written" in status.ErrorComment
        got = [
            s
            for s, _ in assoc.send_c_get(  # type: ignore[attr-defined]
                _study_identifier(ds.StudyInstanceUID), StudyRootQueryRetrieveInformationModelGet
            )
        ]
        assert int(got[-1].Status) == 0xC000 and "audit log" in got[-1].ErrorComment
        assert all(int(s.Status) != 0xFF00 for s in got)  # no sub-operation ran
        # a store is still answered: the modality is owed it, the index is the record
        second = make_dataset(StudySpec(patient_id="AUDIT-2"))
        assert int(assoc.send_c_store(second).Status) == 0  # type: ignore[attr-defined]
        assoc.release()  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5  # the association's end is handled on its thread
        while "event=audit_write_failed action=dicom.store" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
    assert node.index.get_instance(str(second.SOPInstanceUID)) is not None


def test_refused_associations_and_unknown_destinations_are_audited(tmp_path: Path) -> None:
    config = {"data_dir": str(tmp_path), "dicom": {"port": 0, "allowed_calling_aes": ["WS1"]}}
    app = NodeApp(load_config(None, config))
    app.start()
    try:
        intruder = AE(ae_title="INTRUDER")
        intruder.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        refused = intruder.associate("127.0.0.1", app.dicom.port, ae_title="GRIDPACS")
        assert refused.is_rejected
        ws = AE(ae_title="WS1")
        ws.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ws.associate("127.0.0.1", app.dicom.port, ae_title="GRIDPACS")
        assert assoc.is_established
        ((reply, _),) = list(
            assoc.send_c_move(
                _study_identifier("1.2.3"), "NOWHERE", StudyRootQueryRetrieveInformationModelMove
            )
        )
        assert int(reply.Status) == 0xA801
        assoc.release()
    finally:
        app.stop()
    log = open_audit(app.config.audit_url)
    rows = [(r.actor, r.action, r.outcome, dict(r.target)) for r in log.query()]
    assert rows == [
        ("GRIDPACS", "application.start", "started", {"name": "node"}),
        (
            "INTRUDER",
            "dicom.association_rejected",
            "calling AE title not allowed",
            {"called_ae": "GRIDPACS"},
        ),
        (
            "WS1",
            "dicom.move",
            "0xA801",
            {
                "called_ae": "GRIDPACS",
                "destination": "NOWHERE",
                "reason": "unknown move destination",
            },
        ),
        ("GRIDPACS", "application.stop", "stopped", {"name": "node"}),
    ]
