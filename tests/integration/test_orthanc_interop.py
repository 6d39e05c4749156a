"""Storage Commitment with Orthanc (Debian's) as the modality: Orthanc stores a study
into a real node process with C-STORE, asks the node for commitment through its REST API
(it is then the Storage Commitment SCU), and receives the node's report on an
association the node opens to it. A second implementation of the standard, not ours,
reads our N-EVENT-REPORT: committed instances, and the one it never sent as failed with
reason 0x0112."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.factories import StudySpec, make_dataset
from tests.integration.processes import HOST, Node, NodeFactory, free_port

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(90)]

ORTHANC = "/usr/sbin/Orthanc"


class Orthanc:
    """Debian's Orthanc on free ports, the node declared as a modality, REST on loopback."""

    def __init__(self, workdir: Path, dicom_port: int, node: Node) -> None:
        self.dicom_port, self.http_port = dicom_port, free_port()
        config = {
            "Name": "interop", "StorageDirectory": str(workdir / "orthanc"),
            "IndexDirectory": str(workdir / "orthanc"), "DicomAet": "ORTHANC",
            "DicomPort": dicom_port, "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "Plugins": [],
            "DicomModalities": {"pacs": [node.called_ae, HOST, node.port]},
        }  # fmt: skip
        path = workdir / "orthanc.json"
        path.write_text(json.dumps(config))
        self.log = workdir / "orthanc.log"
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen([ORTHANC, str(path)], stdout=sink,
                                         stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                self.rest("GET", "/system")
                return
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()[-2000:]
                assert time.monotonic() < deadline, "Orthanc did not answer its REST API"
                time.sleep(0.1)

    def rest(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://{HOST}:{self.http_port}{path}", data=data,
                                         method=method)  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.load(reply)

    def rest_bytes(self, path: str, data: bytes) -> Any:
        request = urllib.request.Request(f"http://{HOST}:{self.http_port}{path}", data=data,
                                         method="POST")  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.load(reply)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture
def orthanc_and_node(node_factory: NodeFactory, tmp_path: Path) -> Iterator[tuple[Orthanc, Node]]:
    if shutil.which(ORTHANC) is None:  # never skipped: scripts/bootstrap --test installs it
        pytest.fail(f"{ORTHANC} is missing: run scripts/bootstrap --test (Debian orthanc)")
    orthanc_port = free_port()
    node = node_factory(args=["--destination", f"ORTHANC={HOST}:{orthanc_port}"])
    orthanc = Orthanc(tmp_path, orthanc_port, node)
    try:
        yield orthanc, node
    finally:
        orthanc.stop()


def test_orthanc_asks_for_commitment_and_reads_the_nodes_report(
    orthanc_and_node: tuple[Orthanc, Node], tmp_path: Path
) -> None:
    orthanc, node = orthanc_and_node
    study = [make_dataset(StudySpec(patient_id="ORTHANC-SC"), instance_number=n, rows=8,
                          columns=8) for n in range(3)]  # fmt: skip
    uploaded = []
    for ds in study:  # into Orthanc over REST, then Orthanc C-STOREs them to the node
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        uploaded.append(orthanc.rest_bytes("/instances", path.read_bytes())["ID"])
    stored = orthanc.rest("POST", "/modalities/pacs/store", {"Resources": uploaded})
    assert stored.get("FailedInstancesCount", 0) == 0, stored
    refs = [{"SOPClassUID": str(ds.SOPClassUID), "SOPInstanceUID": str(ds.SOPInstanceUID)}
            for ds in study]  # fmt: skip
    never_sent = {"SOPClassUID": str(study[0].SOPClassUID), "SOPInstanceUID": "1.2.826.0.1.9"}

    job = orthanc.rest("POST", "/modalities/pacs/storage-commitment",
                       {"DicomInstances": [*refs, never_sent]})  # fmt: skip
    report: dict[str, Any] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        report = orthanc.rest("GET", job["Path"])
        if report.get("Status") != "Pending":
            break
        time.sleep(0.1)

    assert report["Status"] == "Failure", report  # one instance was never sent
    assert report["RemoteAET"] == node.called_ae
    committed = sorted(item["SOPInstanceUID"] for item in report["Success"])
    assert committed == sorted(r["SOPInstanceUID"] for r in refs)
    [failed] = report["Failures"]
    assert (failed["SOPInstanceUID"], failed["FailureReason"]) == ("1.2.826.0.1.9", 0x0112)
    assert "event=n_action calling_ae=ORTHANC" in node.log_text()
    # Orthanc shows the report as it arrives; the node logs it once Orthanc has answered
    node.wait_for_log("event=storage_commitment_reported calling_ae=ORTHANC")
