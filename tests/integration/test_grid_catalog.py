"""Nodes and a catalog replica as separate OS processes, through the CLIs a user runs.

- what one node stores becomes findable through another node's GRID AE title, with
  RetrieveAETitle naming the holder;
- the catalog killed (SIGKILL) during continuous ingest: every store still succeeds and
  everything is published once the catalog is back;
- without one trust domain, only de-identified collections leave the site.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind

from tests.catalog.processes import ReplicaProcess
from tests.factories import StudySpec, make_dataset
from tests.integration.processes import NodeFactory

pytestmark = pytest.mark.timeout(180)


def _store(port: int, called: str, datasets: list[Dataset]) -> list[int]:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _grid_find_soon(port: int, level: str, **keys: str) -> list[Dataset]:
    """Like _grid_find, but a failure status (catalog still coming back) means "not yet"."""
    try:
        return _grid_find(port, level, **keys)
    except AssertionError:
        return []


def _grid_find(port: int, level: str, **keys: str) -> list[Dataset]:
    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="GRID")
    assert assoc.is_established
    ident = Dataset()
    ident.QueryRetrieveLevel = level
    for key, value in keys.items():
        setattr(ident, key, value)
    try:
        responses = list(assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    assert responses[-1][0].Status == 0x0000, responses[-1][0]
    return [ds for status, ds in responses if status.Status == 0xFF00]


def _wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}", False)


@pytest.fixture
def replica(tmp_path: Path):  # type: ignore[no-untyped-def]
    rep = ReplicaProcess("c1", tmp_path)
    rep.start()
    yield rep
    rep.stop()


def _grid_args(replica: ReplicaProcess, *extra: str) -> list[str]:
    return ["--catalog", replica.address, "--insecure-catalog", *extra]


def test_study_stored_on_one_node_is_found_through_another(
    replica: ReplicaProcess, node_factory: NodeFactory
) -> None:
    node_a = node_factory(
        ae_title="SITEA", args=_grid_args(replica, "--publish-identified", "--name", "site-a")
    )
    node_b = node_factory(ae_title="SITEB", args=_grid_args(replica, "--name", "site-b"))
    spec = StudySpec(patient_id="GRID-P1", patient_name="GRID^PATIENT")
    assert _store(
        node_a.port, "SITEA", [make_dataset(spec, instance_number=n) for n in (1, 2, 3)]
    ) == [0, 0, 0]

    def whole_study() -> list[Dataset]:  # publishing may come in more than one batch
        found = _grid_find_soon(node_b.port, "STUDY", PatientID="GRID-P1", StudyInstanceUID="",
                                NumberOfStudyRelatedInstances="")  # fmt: skip
        return found if found and found[0].NumberOfStudyRelatedInstances == 3 else []

    found = _wait_for(whole_study, 30, "the study's 3 instances to appear in the grid")
    assert len(found) == 1
    assert found[0].StudyInstanceUID == spec.study_uid
    assert found[0].NumberOfStudyRelatedInstances == 3
    assert found[0].RetrieveAETitle == "SITEA"
    images = _grid_find(node_b.port, "IMAGE", StudyInstanceUID=spec.study_uid, SOPInstanceUID="")
    assert len(images) == 3


def test_catalog_killed_during_ingest_loses_nothing(
    replica: ReplicaProcess, node_factory: NodeFactory
) -> None:
    node = node_factory(
        ae_title="SITEA", args=_grid_args(replica, "--publish-identified", "--name", "site-a")
    )
    spec = StudySpec(patient_id="KILL-P1")
    datasets = [make_dataset(spec, instance_number=n, rows=16, columns=16) for n in range(1, 201)]
    statuses: list[int] = []
    sender = threading.Thread(target=lambda: statuses.extend(_store(node.port, "SITEA", datasets)))
    sender.start()
    time.sleep(0.5)
    replica.signal(signal.SIGKILL)
    sender.join(120)
    assert statuses == [0] * 200  # ingest never waits for the catalog
    replica.start()  # same database file: it comes back with what it had
    count = _wait_for(
        lambda: len(found := _grid_find_soon(node.port, "IMAGE", StudyInstanceUID=spec.study_uid,
                                        SOPInstanceUID="")) == 200 and found,
        60, "all 200 instances to be published after the catalog returned",
    )  # fmt: skip
    assert {ds.SOPInstanceUID for ds in count} == {ds.SOPInstanceUID for ds in datasets}


def test_identified_data_stays_home_without_one_trust_domain(
    replica: ReplicaProcess, node_factory: NodeFactory, tmp_path: Path
) -> None:
    config = tmp_path / "research.toml"
    config.write_text('[[routes]]\nae_title = "LUNG_STUDY"\ncollection = "lung"\n')
    node = node_factory(ae_title="SITEA", args=["--config", str(config), *_grid_args(replica)])
    identified = make_dataset(StudySpec(patient_id="HOME-ONLY", patient_name="PRIVATE^PAT"))
    research = make_dataset(StudySpec(patient_id="LEAVES-AS-PSEUDONYM"))
    assert _store(node.port, "SITEA", [identified]) == [0]
    assert _store(node.port, "LUNG_STUDY", [research]) == [0]
    studies = _wait_for(
        lambda: _grid_find_soon(
            node.port, "STUDY", StudyInstanceUID="", PatientID="", PatientName=""
        ),
        30, "the research study to be published",
    )  # fmt: skip
    # published in outbox order: had the identified study been published, it would be here
    assert len(studies) == 1
    assert studies[0].PatientID not in {"HOME-ONLY", "LEAVES-AS-PSEUDONYM"}
    assert "PRIVATE" not in str(studies[0].PatientName)


def test_node_publishing_to_a_dead_replica_fails_over(
    tmp_path: Path, node_factory: NodeFactory
) -> None:
    first, second = ReplicaProcess("c1", tmp_path), ReplicaProcess("c2", tmp_path)
    first.start()
    second.start()
    try:
        node = node_factory(
            ae_title="SITEA",
            args=["--catalog", first.address, "--catalog", second.address, "--insecure-catalog",
                  "--publish-identified", "--name", "site-a"],
        )  # fmt: skip
        first.signal(signal.SIGKILL)  # the preferred replica is gone for good
        spec = StudySpec(patient_id="FAILOVER-1")
        assert _store(
            node.port, "SITEA", [make_dataset(spec, instance_number=n) for n in (1, 2)]
        ) == [0, 0]
        from catalog import GrpcCatalogClient, QueryFilter

        client = GrpcCatalogClient([second.address], timeout=5)
        try:
            # both instances, not just the study: the publisher may send them in two batches
            studies = _wait_for(
                lambda: [s for s in client.query_studies(QueryFilter(patient_id="FAILOVER-1"))
                         if s.number_of_instances == 2],
                30, "publication to the surviving replica",
            )  # fmt: skip
        finally:
            client.close()
        assert studies[0].number_of_instances == 2
        assert [h.node for h in studies[0].holders] == ["site-a"]
    finally:
        second.stop()
        first.stop()
