"""Grid C-MOVE and C-GET on a node's GRID AE: the data lives on another node and travels
over the gRPC peer service (chunked, SHA-256 verified), all as separate processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.catalog.processes import ReplicaProcess
from tests.factories import StudySpec, make_dataset
from tests.integration.processes import NodeFactory, StoreSCP
from tests.integration.test_grid_catalog import (
    _grid_args,
    _grid_find_soon,
    _store,
    _wait_for,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def replica(tmp_path: Path):  # type: ignore[no-untyped-def]
    rep = ReplicaProcess("c1", tmp_path)
    rep.start()
    yield rep
    rep.stop()


def _grid_move(port: int, study_uid: str, destination: str) -> list[Dataset]:
    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", port, ae_title="GRID")
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = study_uid
    try:
        responses = assoc.send_c_move(
            ident, destination, StudyRootQueryRetrieveInformationModelMove
        )
        return [status for status, _ in responses]
    finally:
        assoc.release()


def test_grid_move_and_get_fetch_from_the_holding_node(
    replica: ReplicaProcess, node_factory: NodeFactory, storescp: StoreSCP, tmp_path: Path
) -> None:
    site_a = node_factory(
        ae_title="SITEA", args=_grid_args(replica, "--publish-identified", "--name", "site-a")
    )
    site_b = node_factory(
        ae_title="SITEB",
        args=_grid_args(replica, "--name", "site-b", "--destination",
                        f"{storescp.ae_title}=127.0.0.1:{storescp.port}"),
    )  # fmt: skip
    spec = StudySpec(patient_id="GRIDMOVE")
    sent = [make_dataset(spec, instance_number=n) for n in range(1, 6)]
    assert _store(site_a.port, "SITEA", sent) == [0] * 5
    _wait_for(lambda: _grid_find_soon(site_b.port, "STUDY", StudyInstanceUID=spec.study_uid),
              30, "publication")  # fmt: skip

    statuses = _grid_move(site_b.port, spec.study_uid, storescp.ae_title)
    final = statuses[-1]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 5
    received = {
        dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in storescp.received()
    }
    assert {ds.SOPInstanceUID for ds in sent} <= received

    got: list[Dataset] = []
    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(
        "127.0.0.1", site_b.port, ae_title="GRID",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, lambda e: got.append(e.dataset) or 0x0000)],
    )  # fmt: skip
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = spec.study_uid
    responses = list(assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet))
    assoc.release()
    assert responses[-1][0].Status == 0x0000
    assert sorted(d.SOPInstanceUID for d in got) == sorted(d.SOPInstanceUID for d in sent)
    assert got[0].PixelData in {d.PixelData for d in sent}

    # the only holder dies: the move fails, reported as such, and site B keeps serving
    site_a.kill()
    statuses = _grid_move(site_b.port, spec.study_uid, storescp.ae_title)
    assert statuses[-1].Status == 0xA702
    assert statuses[-1].NumberOfFailedSuboperations == 5
