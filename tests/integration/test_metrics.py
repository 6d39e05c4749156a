"""Prometheus metrics of a real node process: DCMTK stores, finds and sends a refused
instance; ``/metrics`` counts each event with its status, times them, and shows what the
node holds (index counts, quarantine) and its process figures."""

from __future__ import annotations

import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.factories import StudySpec, make_dataset
from tests.integration.archive import dcmtk_findscu, dimse_statuses
from tests.integration.processes import HOST, Node, NodeFactory, run_dcmtk

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(90)]


def _scrape(node: Node) -> str:
    node.wait_for_log("event=metrics_serving")
    port = re.search(r"event=metrics_serving host=\S+ port=(\d+)", node.log_text())
    assert port is not None
    with urllib.request.urlopen(f"http://{HOST}:{port.group(1)}/metrics", timeout=10) as reply:
        assert reply.status == 200
        return str(reply.read().decode())


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample (labels in any order); fails when it is absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if head.split("{")[0] == name and found == labels:
            return float(value)
    raise AssertionError(f"no sample {name}{labels} in:\n{text[:3000]}")


def test_metrics_count_events_time_them_and_show_what_the_node_holds(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory(args=["--metrics-port", "0"])
    spec = StudySpec(patient_id="METRICS-1")
    good = [make_dataset(spec, instance_number=n, rows=8, columns=8) for n in range(3)]
    bad = make_dataset(spec, instance_number=9, rows=8, columns=8)
    del bad.StudyInstanceUID  # refused and quarantined
    paths = []
    for n, ds in enumerate([*good, bad]):
        path = tmp_path / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(str(path))
    result = run_dcmtk("storescu", "-d", "-aec", node.called_ae, HOST, str(node.port), *paths)
    statuses = dimse_statuses(result.stdout + result.stderr)
    assert statuses[:3] == [0, 0, 0] and statuses[3] != 0
    refused = f"0x{statuses[3]:04X}"
    dcmtk_findscu(node, "S", ["QueryRetrieveLevel=STUDY", "PatientID=METRICS-1",
                              "StudyInstanceUID"], tmp_path / "found")  # fmt: skip

    text = _scrape(node)
    assert _sample(text, "gridpacs_node_events_total", event="c_store", status="0x0000") == 3
    assert _sample(text, "gridpacs_node_events_total", event="c_store", status=refused) == 1
    assert _sample(text, "gridpacs_node_events_total", event="c_find", status="0x0000") == 1
    assert _sample(text, "gridpacs_node_event_duration_seconds_count", event="c_store") == 4
    assert _sample(text, "gridpacs_node_event_duration_seconds_sum", event="c_store") > 0
    assert _sample(text, "gridpacs_node_instances") == 3
    assert _sample(text, "gridpacs_node_studies") == 1
    assert _sample(text, "gridpacs_node_quarantined") == 1
    assert _sample(text, "gridpacs_node_commitment_reports_owed") == 0
    assert _sample(text, "gridpacs_node_index_up") == 1
    assert _sample(text, "process_resident_memory_bytes") > 10 * 2**20


def test_metrics_are_off_unless_asked_for(node_factory: NodeFactory) -> None:
    node = node_factory()
    assert "event=metrics_serving" not in node.log_text()
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True)
    ports = {int(line.split()[3].rpartition(":")[2])
             for line in listening.stdout.splitlines() if f"pid={node.pid}," in line}  # fmt: skip
    assert ports == {node.port}  # DICOM only: no HTTP endpoint
