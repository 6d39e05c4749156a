"""Per-AE permissions (``[dicom.permissions]``) and the audit trail against a real node
process, with DCMTK's storescu, findscu, movescu and getscu and a pynetdicom Storage
Commitment SCU: a modality may store and ask for commitment but not query or retrieve; a
workstation may query and retrieve but not store; any other AE title may only C-ECHO.
Each refusal is 0x0124 (Not Authorized) with a log line, nothing refused is kept or sent,
and the node goes on serving the others. Every request, served or refused, is a row of
the node's audit log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.factories import StudySpec, make_dataset
from tests.integration.archive import dimse_statuses, node_status, status_counts, write_study
from tests.integration.processes import (
    HOST,
    Node,
    NodeFactory,
    StoreSCP,
    describe,
    free_port,
    gridpacs_cli,
    run_dcmtk,
)
from tests.integration.test_storage_commitment import _ask, _information

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(120)]


def _node(node_factory: NodeFactory, directory: Path, storescp: StoreSCP) -> Node:
    port, data_dir = free_port(), directory / "node-data"
    config = directory / "node.toml"
    config.write_text(
        f'data_dir = "{data_dir}"\n[dicom]\nae_title = "GRIDPACS"\nhost = "{HOST}"\n'
        f"port = {port}\n"
        '[dicom.permissions]\nCT1 = ["store", "commit"]\n'
        'WS1 = ["find", "move", "get"]\n"*" = []\n'
        f'[dicom.destinations.{storescp.ae_title}]\nhost = "{HOST}"\nport = {storescp.port}\n'
        f'[dicom.destinations.CT1]\nhost = "{HOST}"\nport = {free_port()}\n'
    )
    return node_factory(config_file=config, port=port, data_dir=data_dir, ae_title="GRIDPACS")


def _statuses(tool: str, node: Node, calling_ae: str, *args: str) -> list[int]:
    result = run_dcmtk(tool, "-d", "-aet", calling_ae, "-aec", node.called_ae, *args)
    statuses = dimse_statuses(result.stdout + result.stderr)
    assert statuses, describe(result)
    return statuses


def _study_query(study_uid: str) -> list[str]:
    return ["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]


def test_each_calling_ae_gets_only_the_services_it_is_granted(
    node_factory: NodeFactory, storescp: StoreSCP, tmp_path: Path
) -> None:
    node = _node(node_factory, tmp_path, storescp)
    address = [HOST, str(node.port)]
    study_uid, paths = write_study(tmp_path / "ct1", "PERM-1", 2)
    _, foreign = write_study(tmp_path / "ws1", "PERM-2", 2)

    # the modality stores; the workstation and an unlisted AE may not, and nothing is kept
    assert _statuses("storescu", node, "CT1", *address, *map(str, paths)) == [0, 0]
    refusal = _statuses("storescu", node, "WS1", "-nh", *address, *map(str, foreign))
    assert refusal == [0x0124] * 2
    assert _statuses("storescu", node, "OTHER", *address, str(foreign[0])) == [0x0124]
    assert status_counts(node_status(node.data_dir))["instances"] == 2
    assert "event=c_store calling_ae=WS1" in node.log_text()
    refused = [x for x in node.log_text().splitlines() if "calling_ae=WS1" in x]
    assert all("status=0x0124" in line for line in refused), refused

    # the workstation queries and retrieves; the modality may not
    found = _statuses("findscu", node, "WS1", *_study_query(study_uid), *address)
    assert found == [0xFF00, 0x0000]
    assert _statuses("findscu", node, "CT1", *_study_query(study_uid), *address) == [0x0124]

    storescp.clear()
    move = ["-aem", storescp.ae_title, *_study_query(study_uid), *address]
    assert _statuses("movescu", node, "CT1", *move)[-1] == 0x0124
    assert storescp.received() == []
    assert _statuses("movescu", node, "WS1", *move)[-1] == 0x0000
    assert len(storescp.received()) == 2
    storescp.clear()

    get_dir = tmp_path / "got"
    get_dir.mkdir()
    get = ["-od", str(get_dir), *_study_query(study_uid), *address]
    assert _statuses("getscu", node, "CT1", *get)[-1] == 0x0124
    assert list(get_dir.iterdir()) == []
    assert _statuses("getscu", node, "WS1", *get)[-1] == 0x0000
    assert len(list(get_dir.iterdir())) == 2

    # Storage Commitment: the modality may ask, the workstation may not
    refs = [(str(make_dataset(StudySpec()).SOPClassUID), p.stem) for p in paths]
    denied = _ask(node, _information(generate_uid(), refs), calling_ae="WS1")
    assert int(denied.Status) == 0x0124 and "WS1 may not commit" in denied.ErrorComment
    assert int(_ask(node, _information(generate_uid(), refs), calling_ae="CT1").Status) == 0

    # verification stays open to everyone the allowlist lets in
    echo = run_dcmtk("echoscu", "-aet", "OTHER", "-aec", node.called_ae, *address)
    assert echo.returncode == 0, describe(echo)
    log = node.log_text()
    assert "event=c_find calling_ae=CT1 matches=0 status=0x0124" in log
    assert "event=retrieve_refused calling_ae=CT1" in log
    assert "event=n_action calling_ae=WS1" in log

    # every request above is in the node's audit trail, in order, and the chain verifies
    audit_db = node_status(node.data_dir)["audit"]  # where an admin finds it
    assert audit_db == f"sqlite:///{(node.data_dir / 'audit.sqlite').resolve()}"
    listed = gridpacs_cli("audit", "--db-url", audit_db, "--json", "--limit", "50")
    assert listed.returncode == 0, describe(listed)
    rows = [(r["actor"], r["action"], r["outcome"]) for r in json.loads(listed.stdout)]
    assert rows == [
        ("GRIDPACS", "application.start", "started"),  # ATNA: when recording began
        ("CT1", "dicom.store", "released"),
        ("WS1", "dicom.store", "released"),
        ("OTHER", "dicom.store", "released"),
        ("WS1", "dicom.find", "served"),
        ("CT1", "dicom.find", "0x0124"),
        ("CT1", "dicom.move", "0x0124"),
        ("WS1", "dicom.move", "served"),
        ("CT1", "dicom.get", "0x0124"),
        ("WS1", "dicom.get", "served"),
        ("WS1", "dicom.commit", "0x0124"),
        ("CT1", "dicom.commit", "0x0000"),
    ]
    entries = json.loads(listed.stdout)[1:]  # after the start row
    assert entries[0]["target"]["studies"] == {study_uid: 2}
    assert entries[1]["target"] == {"called_ae": "GRIDPACS", "instances": 0, "refused": 2,
                                    "studies": {}}  # fmt: skip
    assert entries[3]["target"]["keys"] == {"StudyInstanceUID": study_uid}
    assert entries[6]["target"]["studies"] == [study_uid]
    assert entries[6]["target"]["destination"] == storescp.ae_title
    assert entries[6]["target"]["keys"] == {"StudyInstanceUID": study_uid}  # what was asked
    assert all(e["peer"].startswith(f"{HOST}:") for e in entries)
    verified = gridpacs_cli("audit", "verify", "--db-url", audit_db)
    assert verified.returncode == 0 and "chain intact" in verified.stdout, describe(verified)
