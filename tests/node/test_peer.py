"""Peer transfer over a real gRPC socket: verified copies, and identified data stays home."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from node.app import NodeApp
from node.config import load_config
from node.index import open_index
from node.peer import PeerClient, PeerServer, PeerTransferError
from node.peer.server import PeerServicer
from node.services.ingest import IngestService, StoreRequest
from storage import Quarantine, open_store
from tests.factories import StudySpec, make_dataset, to_bytes

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[tuple[PeerClient, str, dict[str, bytes]]]:
    index = open_index(f"sqlite:///{tmp_path}/i.sqlite")
    store = open_store(tmp_path / "blobs")
    ingest = IngestService(store, index, Quarantine(tmp_path / "q"), max_instance_bytes=10**7)
    held: dict[str, bytes] = {}
    for collection in ("local", "lung"):
        ds = make_dataset(StudySpec(patient_id=f"P-{collection}"), rows=512, columns=512)
        data = to_bytes(ds)
        ingest.store(StoreRequest(data, "M", "A", ds.SOPClassUID, ds.SOPInstanceUID),
                     collection=collection)  # fmt: skip
        held[collection] = ds.SOPInstanceUID
        held[ds.SOPInstanceUID] = data
    servicer = PeerServicer(index, store, servable=lambda collection: collection != "local")
    server = PeerServer(servicer, "127.0.0.1", 0, None)
    server.start()
    client = PeerClient(None, timeout=10)
    yield client, server.address, held  # type: ignore[misc]
    client.close()
    server.stop()
    index.close()


def test_research_copy_arrives_verified_in_chunks(peer) -> None:  # type: ignore[no-untyped-def]
    client, address, held = peer
    uid = held["lung"]
    data = client.fetch(address, uid)
    assert data == held[uid] and len(data) > 256 * 1024  # more than one chunk


def test_identified_instance_is_not_served_to_peers(peer) -> None:  # type: ignore[no-untyped-def]
    client, address, held = peer
    with pytest.raises(PeerTransferError, match="NOT_FOUND"):
        client.fetch(address, held["local"])
    with pytest.raises(PeerTransferError, match="NOT_FOUND"):
        client.fetch(address, "1.2.3.4.5.unknown")


def test_store_to_the_grid_ae_is_refused_and_quarantined(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        {"data_dir": str(tmp_path / "n"), "dicom": {"port": 0},
         "catalog": {"addresses": ["127.0.0.1:1"], "insecure": True}},
    )  # fmt: skip
    node = NodeApp(cfg)
    node.start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", node.dicom.port, ae_title="GRID")
        status = assoc.send_c_store(make_dataset())
        assoc.release()
        assert status.Status == 0x0124
        [entry] = node.quarantine.list()
        assert "grid" in entry.reason and entry.context["called_ae"] == "GRID"
        assert node.index.stats()["instances"] == 0
    finally:
        node.stop()
