"""A node process sends its audit trail to the site's Audit Record Repository, Debian's
rsyslog listening with mutual TLS: DCMTK's queries, stores and a refused association arrive
as DICOM audit messages; while the repository is down the node keeps serving, and after a
``kill -9`` of the node and the repository's return every row arrives, once, in order."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from pathlib import Path

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset

from catalog.security import pki
from tests.integration.archive import write_study
from tests.integration.arr import Rsyslog
from tests.integration.processes import (
    HOST,
    Node,
    NodeFactory,
    describe,
    free_port,
    gridpacs_cli,
    run_dcmtk,
)

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(150)]


def _find(node: Node, patient: str, calling: str = "WS1") -> None:
    result = run_dcmtk("findscu", "-S", "-aet", calling, "-aec", node.called_ae,
                       "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={patient}",
                       "-k", "StudyInstanceUID", HOST, str(node.port))  # fmt: skip
    assert result.returncode == 0, describe(result)


def _event_ids(arr: Rsyslog) -> list[str]:
    return [doc.find("EventIdentification/EventID").get("csd-code")  # type: ignore[union-attr]
            for _, doc in arr.documents()]  # fmt: skip


def test_the_node_audit_trail_reaches_the_repository_and_survives_its_outage_and_a_kill(
    tmp_path: Path, node_factory: NodeFactory
) -> None:
    root = tmp_path / "pki"
    pki.init_ca(root / "ca", "hospital CA")
    arr_cert = pki.issue(root / "ca", root / "arr", "arr.hospital", dns_names=["localhost"],
                         ip_addresses=[HOST])  # fmt: skip
    node_cert = pki.issue(root / "ca", root / "node", "node-a")
    arr = Rsyslog(name="rsyslog", log_path=tmp_path / "rsyslog.log", port=free_port(),
                  work_dir=tmp_path / "arr", ca=arr_cert.ca_cert, cert=arr_cert.cert,
                  key=arr_cert.key).start()  # fmt: skip

    port, data_dir = free_port(), tmp_path / "node-data"
    config = tmp_path / "node.toml"
    config.write_text(
        f'name = "site-a"\ndata_dir = "{data_dir}"\n'
        f'[dicom]\nae_title = "GRIDPACS"\nhost = "{HOST}"\nport = {port}\n'
        'allowed_calling_aes = ["WS1", "CT1"]\n'
        f'[audit.export]\nurl = "tls://localhost:{arr.port}"\nca_file = "{node_cert.ca_cert}"\n'
        f'cert_file = "{node_cert.cert}"\nkey_file = "{node_cert.key}"\nsite_id = "hospital-a"\n'
    )
    node = node_factory(config_file=config, port=port, data_dir=data_dir, ae_title="GRIDPACS")

    write_study(tmp_path / "study", "PAT-AUDIT", 2)
    sent = run_dcmtk("storescu", "-aet", "CT1", "-aec", "GRIDPACS", "+sd", HOST, str(port),
                     str(tmp_path / "study"))  # fmt: skip
    assert sent.returncode == 0, describe(sent)
    _find(node, "PAT-AUDIT")
    refused = run_dcmtk("echoscu", "-aet", "INTRUDER", "-aec", "GRIDPACS", HOST, str(port))
    assert refused.returncode != 0
    arr.wait_for('csd-code="110113"')  # the refused association, last of the three

    docs = dict(arr.documents())
    by_event = {doc.find("EventIdentification/EventID").get("csd-code"): doc  # type: ignore[union-attr]
                for doc in docs.values()}  # fmt: skip
    assert {"110100", "110104", "110112", "110113"} <= set(by_event)  # start, store, query, alert
    query = by_event["110112"]
    requestor = query.find("ActiveParticipant")
    assert requestor is not None and requestor.get("UserID") == "WS1"
    assert requestor.get("NetworkAccessPointID") == HOST
    encoded = query.findtext("ParticipantObjectIdentification/ParticipantObjectQuery") or ""
    buffer = DicomBytesIO(base64.b64decode(encoded))
    keys = read_dataset(buffer, is_implicit_VR=False, is_little_endian=True)
    assert keys.PatientID == "PAT-AUDIT" and keys.QueryRetrieveLevel == "STUDY"
    store = by_event["110104"]
    assert store.find("EventIdentification").get("EventActionCode") == "C"  # type: ignore[union-attr]
    studies = [o.get("ParticipantObjectID") for o in store.iter("ParticipantObjectIdentification")]
    assert len(studies) == 1 and studies[0].startswith("1.")  # type: ignore[union-attr]
    source = query.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditEnterpriseSiteID") == "hospital-a"
    alert = by_event["110113"]
    assert alert.find("EventIdentification").get("EventOutcomeIndicator") == "4"  # type: ignore[union-attr]

    # The repository goes away: the node keeps answering, and owes the rows.
    arr.kill()
    for n in range(5):
        _find(node, f"PAT-DOWN-{n}")
    node.wait_for_log("event=audit_export_failed", timeout=20)
    node.kill()  # SIGKILL: nothing flushed, no stop row
    arr.start()
    node.start()  # the cursor is in the audit database: it sends what is owed first
    with sqlite3.connect(data_dir / "audit.sqlite") as db:
        (head,) = db.execute("SELECT max(seq) FROM security_audit_log").fetchone()
    owed = set(range(1, head + 1))  # every row up to the restart's own start row
    deadline = time.monotonic() + 30
    while not owed <= {seq for seq, _ in arr.documents()} and time.monotonic() < deadline:
        time.sleep(0.2)
    seqs = [seq for seq, _ in arr.documents()]
    assert owed <= set(seqs), f"missing: {sorted(owed - set(seqs))}"
    assert seqs == sorted(seqs), "rows arrive in chain order"
    assert len(seqs) == len(set(seqs)), "the restarted node sent nothing twice"
    assert _event_ids(arr).count("110112") >= 6  # the first query and the five while down
    deadline = time.monotonic() + 15  # the cursor is written once the exporter is idle
    while True:
        status = gridpacs_cli("node", "status", "--config", str(config), "--json")
        assert status.returncode == 0, describe(status)
        report = json.loads(status.stdout)
        assert report["audit_export"] == f"tls://localhost:{arr.port}"
        if report["audit_export_behind"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert report["audit_export_behind"] == 0
