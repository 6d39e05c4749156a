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
)

from node.app import NodeApp
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
