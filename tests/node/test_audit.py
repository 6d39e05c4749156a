"""The node's audit trail fails closed: a query or retrieve whose row cannot be written is
refused before anything is sent; a store goes on (the sender is owed its answer) and the
lost row is logged. What each request writes: tests/integration/test_permissions.py."""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from catalog.security.audit_export import write_cursor
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


def _backdated(url: str, days: int, count: int) -> None:
    """``count`` rows written ``days`` ago, chained as the node writes them."""
    from catalog.security.audit import canonical, chain_hash
    from catalog.security.models import AuditEntry

    log = open_audit(url)
    seq, prev = log.head()
    at = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    with log.engine.begin() as conn:
        for _ in range(count):
            seq += 1
            target = {"called_ae": "GRIDPACS", "level": "STUDY", "keys": {"PatientID": "OLD"}}
            row = ("WS1", "dicom.find", target, "10.0.0.1:1", "served")
            digest = chain_hash(prev, canonical(seq, at, *row))
            conn.execute(sa.insert(AuditEntry.__table__).values(  # type: ignore[arg-type]
                seq=seq, at=at, actor=row[0], action=row[1], target=target, peer=row[3],
                outcome=row[4], prev_hash=prev, row_hash=digest))  # fmt: skip
            prev = digest


def test_rows_past_the_retention_period_are_pruned_but_not_those_owed_to_the_repository(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    _backdated(url, days=400, count=5)
    write_cursor(open_audit(url).engine, "tcp://127.0.0.1:9", 3)  # sent 1-3 before it went
    config = load_config(None, {"data_dir": str(tmp_path), "dicom": {"port": 0},
                                "audit": {"keep_days": 365,
                                          "export": {"url": "tcp://127.0.0.1:9",
                                                     "insecure": True}}})  # fmt: skip
    app = NodeApp(config)
    app.start()
    try:
        log = open_audit(url)
        deadline = time.monotonic() + 10
        while not log.query(action="audit.prune") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.anchor()[0] == 3  # 4 and 5 are old too, but the repository is owed them
        actions = [(r.seq, r.action) for r in log.query()]
        assert actions[:2] == [(4, "dicom.find"), (5, "dicom.find")]
        assert (6, "application.start") in actions and any(a == "audit.prune" for _, a in actions)
        assert log.verify() == []
    finally:
        app.stop()
