"""Storage Commitment Push Model against a real node process: DCMTK's storescu sends a
study, a pynetdicom modality asks for commitment and receives the N-EVENT-REPORT on an
association the node opens to it; the report owed survives a SIGKILL of the node while
the modality is switched off; malformed and unanswerable requests get clear statuses."""

from __future__ import annotations

import json
import queue
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
    Verification,
)

from tests.factories import StudySpec, make_dataset
from tests.integration.archive import dimse_statuses
from tests.integration.processes import (
    HOST,
    Node,
    NodeFactory,
    describe,
    free_port,
    gridpacs_cli,
    run_dcmtk,
)
from tests.integration.replication_grid import Grid, store_study

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(150)]

MODALITY = "CT1"


@dataclass
class Report:
    calling_ae: str
    event_type: int
    information: Dataset


@dataclass
class Modality:
    """A modality's Storage Commitment side: it asks (SCU) and takes reports (a listener
    on its own port, as the node's destination table names it)."""

    port: int
    reports: queue.Queue[Report] = field(default_factory=queue.Queue)
    server: Any = None
    ssl_context: ssl.SSLContext | None = None
    """Listen over DICOM TLS with this context."""

    def listen(self) -> Modality:
        ae = AE(ae_title=MODALITY)
        # the node proposes the SCP role for itself: this side accepts being the SCU
        ae.add_supported_context(StorageCommitmentPushModel, [ExplicitVRLittleEndian],
                                 scu_role=False, scp_role=True)  # fmt: skip

        def on_report(event: Any) -> tuple[int, None]:
            calling = event.assoc.requestor.ae_title
            self.reports.put(Report(str(calling).strip(), event.event_type,
                                    event.event_information))  # fmt: skip
            return 0x0000, None

        self.server = ae.start_server(
            (HOST, self.port),
            block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
            ssl_context=self.ssl_context,
        )
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def report(self, timeout: float = 20.0) -> Report:
        return self.reports.get(timeout=timeout)


@pytest.fixture
def modality() -> Iterator[Modality]:
    peer = Modality(free_port())
    yield peer
    peer.close()


def _node(node_factory: NodeFactory, modality: Modality) -> Node:
    return node_factory(args=["--destination", f"{MODALITY}={HOST}:{modality.port}"])


def _send(node: Node, datasets: list[Dataset], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(str(path))
    result = run_dcmtk("storescu", "-d", "-aet", MODALITY, "-aec", node.called_ae, HOST,
                       str(node.port), *paths)  # fmt: skip
    assert dimse_statuses(result.stdout + result.stderr) == [0] * len(paths), describe(result)


def _information(tx: str, refs: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = tx
    items = []
    for sop_class, uid in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = uid
        items.append(item)
    ds.ReferencedSOPSequence = DicomSequence(items)
    return ds


def _ask(
    node: Node,
    information: Dataset | None,
    *,
    calling_ae: str = MODALITY,
    action_type: int = 1,
    instance: str = StorageCommitmentPushModelInstance,
) -> Dataset:
    """Send one N-ACTION; the response's status data set."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(StorageCommitmentPushModel, [ExplicitVRLittleEndian])
    assoc = ae.associate(HOST, node.port, ae_title=node.called_ae)
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_action(information, action_type,  # type: ignore[arg-type]
                                        StorageCommitmentPushModel, instance)  # fmt: skip
    finally:
        assoc.release()
    assert status is not None and "Status" in status
    return status


def _echo(node: Node) -> int:
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(Verification)
    assoc = ae.associate(HOST, node.port, ae_title=node.called_ae)
    assert assoc.is_established
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def _uids(sequence: Any) -> list[str]:
    return [str(item.ReferencedSOPInstanceUID) for item in sequence or []]


def test_the_modality_gets_a_report_on_an_association_of_the_nodes(
    node_factory: NodeFactory, modality: Modality, tmp_path: Path
) -> None:
    modality.listen()
    node = _node(node_factory, modality)
    study = [make_dataset(StudySpec(patient_id="SC-1"), instance_number=n) for n in range(3)]
    _send(node, study, tmp_path / "study")
    committed = [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in study]
    missing = (str(study[0].SOPClassUID), generate_uid())  # never sent
    wrong_class = (MRImageStorage, str(study[0].SOPInstanceUID))
    tx = generate_uid()

    status = _ask(node, _information(tx, [*committed, missing]))
    assert int(status.Status) == 0x0000

    report = modality.report()
    assert report.calling_ae == node.called_ae  # sent as the AE title it was asked
    assert report.event_type == 2  # failures exist
    assert report.information.TransactionUID == tx
    assert _uids(report.information.ReferencedSOPSequence) == [uid for _, uid in committed]
    assert report.information.RetrieveAETitle == node.called_ae
    (failed,) = report.information.FailedSOPSequence
    assert (failed.ReferencedSOPInstanceUID, failed.FailureReason) == (missing[1], 0x0112)

    # all present: event type 1; a conflicting SOP class fails alone with 0x0119
    assert int(_ask(node, _information(generate_uid(), committed)).Status) == 0
    report = modality.report()
    assert report.event_type == 1 and "FailedSOPSequence" not in report.information
    assert int(_ask(node, _information(generate_uid(), [wrong_class])).Status) == 0
    report = modality.report()
    assert report.event_type == 2 and "ReferencedSOPSequence" not in report.information
    assert report.information.FailedSOPSequence[0].FailureReason == 0x0119
    # the modality has the report before the node logs it (after the modality's answer)
    reported = f"event=storage_commitment_reported calling_ae={MODALITY} transaction_uid={tx}"
    node.wait_for_log(reported)


def test_an_owed_report_survives_a_kill_and_a_modality_switched_off(
    node_factory: NodeFactory, modality: Modality, tmp_path: Path
) -> None:
    node = _node(node_factory, modality)  # the modality is not listening yet
    study = [make_dataset(StudySpec(patient_id="SC-2"), instance_number=n) for n in range(2)]
    _send(node, study, tmp_path / "study")
    refs = [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in study]
    tx = generate_uid()

    assert int(_ask(node, _information(tx, refs)).Status) == 0x0000
    node.wait_for_log("event=storage_commitment_not_delivered", timeout=10)
    node.kill()  # SIGKILL with the report owed
    assert _status(node)["commitment_reports_owed"] == 1
    (owed,) = _commitments(node)
    assert (owed["transaction_uid"], owed["state"], owed["instances"]) == (tx, "pending", 2)
    assert owed["attempts"] >= 1 and "CT1" in owed["last_error"]  # why it is late

    modality.listen()
    node.restart()
    report = modality.report(timeout=30)  # the first retry is 5 s after the failed try
    assert report.information.TransactionUID == tx and report.event_type == 1
    assert _uids(report.information.ReferencedSOPSequence) == [uid for _, uid in refs]
    with pytest.raises(queue.Empty):  # settled: sent once, not again
        modality.report(timeout=2)
    node.terminate()
    status = _status(node)
    assert (status["commitment_reports_owed"], status["commitment_reports_abandoned"]) == (0, 0)
    (done,) = _commitments(node, "--state", "reported")
    assert (done["committed"], done["failed"], done["last_error"]) == (2, 0, None)
    assert _commitments(node, "--state", "pending") == []
    table = gridpacs_cli("node", "commitments", "--data-dir", str(node.data_dir))
    assert table.returncode == 0 and tx in table.stdout and "2 committed" in table.stdout


def _commitments(node: Node, *options: str) -> list[dict[str, Any]]:
    done = gridpacs_cli("node", "commitments", "--data-dir", str(node.data_dir), "--json",
                        *options)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def _status(node: Node) -> dict[str, Any]:
    done = gridpacs_cli("node", "status", "--data-dir", str(node.data_dir), "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_requests_the_node_cannot_honour_get_clear_statuses(
    node_factory: NodeFactory, modality: Modality
) -> None:
    modality.listen()
    node = _node(node_factory, modality)
    ct = "1.2.840.10008.5.1.4.1.1.2"
    no_tx = _information("1.2.3", [(ct, "1.2.4")])
    del no_tx.TransactionUID

    cases = [
        (no_tx, {}, 0x0115, "Transaction UID is missing"),
        (_information("1.2.3", [(ct, "1.2.bad")]), {}, 0x0115, "is not a UID"),
        (_information("1.2.3", [(ct, "1.2.4")]), {"action_type": 7}, 0x0123, "action type 7"),
        (_information("1.2.3", [(ct, "1.2.4")]), {"calling_ae": "STRANGER"}, 0x0110,
         "STRANGER is not a configured destination"),
    ]  # fmt: skip
    for information, options, code, comment in cases:
        status = _ask(node, information, **options)  # type: ignore[arg-type]
        assert int(status.Status) == code, (comment, status)
        assert comment in str(status.get("ErrorComment", "")), status
    assert _echo(node) == 0x0000  # still serving
    with pytest.raises(queue.Empty):  # nothing was recorded, nothing is reported
        modality.report(timeout=1)
    assert node.log_text().count("event=n_action") == len(cases)


GRID_POLICY = """
[replication]
interval_s = 0.2
lost_after_seconds = 60
[replication.collections]
local = 2
"""


def test_with_copies_at_two_sites_the_report_waits_for_the_grid(
    modality: Modality, tmp_path: Path
) -> None:
    """``copies = 2``: an instance is committed only once the catalog counts a live copy
    at a second site; what does not get there within ``copies_wait`` is reported failed,
    so the modality keeps it."""
    modality.listen()
    grid = Grid(tmp_path, GRID_POLICY)
    grid.start_catalog()
    try:
        destination = f'{MODALITY} = {{ host = "{HOST}", port = {modality.port} }}'
        extra = f"[dicom.destinations]\n{destination}\n[dicom.commitment]\ncopies = 2\n"
        extra += "copies_wait = 8.0\n"
        a = grid.add_node("a", dicom_extra=extra)
        acked = store_study(a, tmp_path / "s1", 3, "SC-GRID-1")
        ct = str(make_dataset().SOPClassUID)
        tx = generate_uid()
        assert int(_ask(a, _information(tx, [(ct, uid) for uid in acked])).Status) == 0
        a.wait_for_log("event=storage_commitment_waiting_for_copies")  # b is not up yet
        with pytest.raises(queue.Empty):
            modality.report(timeout=1)

        b = grid.add_node("b")  # b pulls its copies; the report follows
        report = modality.report(timeout=30)
        assert report.information.TransactionUID == tx and report.event_type == 1
        assert sorted(_uids(report.information.ReferencedSOPSequence)) == sorted(acked)
        holders = grid.holders("SC-GRID-1")
        assert all(holders[uid] == {"a", "b"} for uid in acked), holders

        b.terminate()  # new instances cannot reach a second site now
        lonely = store_study(a, tmp_path / "s2", 2, "SC-GRID-2")
        started = time.monotonic()
        assert int(_ask(a, _information(generate_uid(), [(ct, u) for u in lonely])).Status) == 0
        report = modality.report(timeout=30)
        assert time.monotonic() - started >= 7  # it waited for copies_wait
        assert report.event_type == 2 and "ReferencedSOPSequence" not in report.information
        failed = report.information.FailedSOPSequence
        assert sorted(_uids(failed)) == sorted(lonely)
        assert {item.FailureReason for item in failed} == {0x0110}
        assert "event=storage_commitment_copies_missing" in a.log_text()
    finally:
        grid.stop()
