"""A grid C-MOVE survives losing a holder: three nodes and two catalog replicas, each its own
OS process. The same study is stored (DCMTK storescu) to two nodes; the first holder is
killed with SIGKILL, and so is the replica the nodes prefer; DCMTK movescu on the GRID AE
of the third node still completes every sub-operation from the surviving copy."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog.client import GrpcCatalogClient
from catalog.records import QueryFilter
from tests.catalog.processes import ReplicaProcess
from tests.factories import StudySpec, make_dataset
from tests.integration.archive import assert_files_match, dimse_statuses
from tests.integration.processes import HOST, NodeFactory, StoreSCP, describe, run_dcmtk
from tests.integration.test_grid_catalog import _wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[ReplicaProcess, ReplicaProcess]]:
    first, second = ReplicaProcess("c1", tmp_path), ReplicaProcess("c2", tmp_path)
    first.peers = {"c2": second.address}
    second.peers = {"c1": first.address}
    first.start(wait=False)
    second.start(wait=False)
    try:
        first.wait_serving()
        second.wait_serving()
        yield first, second
    finally:
        second.stop()
        first.stop()


def _copies(address: str, study_uid: str) -> int:
    """How many instances of the study the replica knows on both site-a and site-b."""
    with GrpcCatalogClient([address], timeout=2) as client:
        found = client.query_instances(QueryFilter(study_instance_uids=(study_uid,)))
        return sum({h.node for h in m.holders} == {"site-a", "site-b"} for m in found)


def test_grid_move_completes_from_the_other_copy_after_kill_9(
    replicas: tuple[ReplicaProcess, ReplicaProcess],
    node_factory: NodeFactory,
    storescp: StoreSCP,
    tmp_path: Path,
) -> None:
    c1, c2 = replicas
    catalogs = ["--catalog", c1.address, "--catalog", c2.address, "--insecure-catalog"]
    site_a = node_factory(ae_title="SITEA", args=[*catalogs, "--publish-identified",
                                                  "--name", "site-a"])  # fmt: skip
    site_b = node_factory(ae_title="SITEB", args=[*catalogs, "--publish-identified",
                                                  "--name", "site-b"])  # fmt: skip
    front = [*catalogs, "--name", "site-c", "--destination", storescp.destination]
    site_c = node_factory(ae_title="SITEC", args=front)
    spec = StudySpec(patient_id="TWO-COPIES")
    sent = [make_dataset(spec, instance_number=n, rows=64, columns=64) for n in range(1, 11)]
    folder = tmp_path / "study"
    folder.mkdir()
    for n, ds in enumerate(sent):
        ds.save_as(folder / f"{n:03d}.dcm", enforce_file_format=True)
    for node in (site_a, site_b):
        stored = run_dcmtk("storescu", "-aec", node.called_ae, "+sd", HOST, str(node.port),
                           str(folder))  # fmt: skip
        assert stored.returncode == 0, describe(stored)
    # both copies known to both replicas (c2 learns them by replication or directly)
    for replica in (c1, c2):
        _wait_for(lambda r=replica: _copies(r.address, spec.study_uid) == len(sent),
                  30, f"both copies of every instance in {replica.name}")  # fmt: skip

    site_a.kill()  # SIGKILL: the first holder in the catalog's order
    c1.signal(signal.SIGKILL)  # and the replica every node asks first
    storescp.clear()
    moved = run_dcmtk(
        "movescu", "-d", "-S", "-aet", "WORKSTATION", "-aec", "GRID",
        "-aem", storescp.ae_title, "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"StudyInstanceUID={spec.study_uid}", HOST, str(site_c.port),
    )  # fmt: skip
    assert moved.returncode == 0, describe(moved)
    statuses = dimse_statuses(moved.stdout + moved.stderr)
    assert statuses and statuses[-1] == 0x0000, describe(moved)
    assert_files_match(storescp.received(), sent)
    assert "peer_failover" in site_c.log_text()
