"""Batch peer fetch (``FetchInstances``) over real gRPC sockets, and the grid retrieve's
prefetch on top of it: order, per-instance refusals inside the stream, fail-over when a
holder goes away mid-stream, a stalled holder given up on, an abandoned plan cancelled."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from pydicom.dataset import Dataset

from catalog.records import Holder, InstanceLocation
from node.grid import GridRetrieveService
from node.index import open_index
from node.index.records import StoredInstance
from node.peer import PeerClient, PeerServer, PeerTransferError
from node.peer.server import MAX_BATCH, PeerServicer
from node.services.ingest import IngestService, StoreRequest
from node.v1 import peer_pb2, peer_pb2_grpc
from storage import Quarantine, open_store
from storage.interfaces import BlobStore
from tests.factories import StudySpec, make_dataset, to_bytes

pytestmark = pytest.mark.timeout(60)


class GatedStore:
    """The real store, but reads of ``gated`` keys wait until ``gate`` opens: a holder that
    stalls in the middle of a stream."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self.gate = threading.Event()
        self.gated: set[str] = set()

    def get(self, key: str) -> bytes:
        if key in self.gated:
            self.gate.wait(30)
        return self._store.get(key)


@dataclass
class Holding:
    """One node's index, store and peer server, holding ``uids`` (study order)."""

    server: PeerServer
    store: GatedStore
    uids: list[str]
    data: dict[str, bytes]
    keys: dict[str, str] = field(default_factory=dict)


def _holding(
    root: Path, datasets: list[Dataset], *, identified: frozenset[str] = frozenset()
) -> Holding:
    root.mkdir(parents=True, exist_ok=True)
    index = open_index(f"sqlite:///{root}/i.sqlite")
    store = open_store(root / "blobs")
    ingest = IngestService(store, index, Quarantine(root / "q"), max_instance_bytes=10**7)
    data: dict[str, bytes] = {}
    for ds in datasets:
        raw = to_bytes(ds)
        collection = "local" if ds.SOPInstanceUID in identified else "lung"
        ingest.store(StoreRequest(raw, "M", "A", ds.SOPClassUID, ds.SOPInstanceUID),
                     collection=collection)  # fmt: skip
        data[ds.SOPInstanceUID] = raw
    gated = GatedStore(store)
    servicer = PeerServicer(index, gated, servable=lambda collection: collection != "local")
    server = PeerServer(servicer, "127.0.0.1", 0, None)
    server.start()
    holding = Holding(server, gated, [ds.SOPInstanceUID for ds in datasets], data)
    for uid in holding.uids:
        record = index.get_record(uid)
        assert record is not None
        holding.keys[uid] = record.blob_key
    return holding


@pytest.fixture
def study() -> list[Dataset]:
    spec = StudySpec(patient_id="BATCH")
    return [make_dataset(spec, instance_number=n, rows=128, columns=128) for n in range(1, 13)]


@pytest.fixture
def client() -> Iterator[PeerClient]:
    peers = PeerClient(None, timeout=10)
    yield peers
    peers.close()


def test_batch_delivers_in_order_and_refuses_inside_the_stream(
    tmp_path: Path, study: list[Dataset], client: PeerClient
) -> None:
    home = make_dataset(StudySpec(patient_id="STAYS-HOME"))  # an identified collection
    identified = home.SOPInstanceUID
    holder = _holding(tmp_path, [*study, home], identified=frozenset({identified}))
    try:
        asked = [*holder.uids[:6], "1.2.3.4.unknown", *holder.uids[6:]]
        assert identified in asked
        got = list(client.fetch_many(holder.server.address, asked))
        assert [uid for uid, _ in got] == asked
        for uid, result in got:
            if uid in (identified, "1.2.3.4.unknown"):
                assert isinstance(result, PeerTransferError) and result.code == "NOT_FOUND"
            else:
                assert result == holder.data[uid]  # verified bytes, byte for byte
    finally:
        holder.server.stop()


def test_batch_is_for_grid_nodes_and_bounded(
    tmp_path: Path, study: list[Dataset], client: PeerClient
) -> None:
    holder = _holding(tmp_path, study[:1])
    try:
        with grpc.insecure_channel(holder.server.address) as channel:
            stub = peer_pb2_grpc.PeerServiceStub(channel)
            with_grant = stub.FetchInstances(
                peer_pb2.FetchInstancesRequest(sop_instance_uids=holder.uids),
                metadata=(("gridpacs-grant", "anything"),),
            )
            with pytest.raises(grpc.RpcError) as refused:
                list(with_grant)
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        too_many = [f"1.2.3.{n}" for n in range(MAX_BATCH + 1)]
        with pytest.raises(PeerTransferError) as bounded:
            list(client.fetch_many(holder.server.address, too_many))
        assert bounded.value.code == "INVALID_ARGUMENT"
    finally:
        holder.server.stop()


def test_a_stalled_holder_is_given_up_on(tmp_path: Path, study: list[Dataset]) -> None:
    holder = _holding(tmp_path, study[:3])
    holder.store.gated.add(holder.keys[holder.uids[1]])  # the second instance never comes
    peers = PeerClient(None, timeout=1.0)
    try:
        results = []
        started = time.monotonic()
        with pytest.raises(PeerTransferError) as stalled:
            for item in peers.fetch_many(holder.server.address, holder.uids):
                results.append(item)
        assert stalled.value.code == "DEADLINE_EXCEEDED"
        assert 0.9 < time.monotonic() - started < 10
        assert [uid for uid, _ in results] == holder.uids[:1]  # what came before is kept
    finally:
        holder.store.gate.set()
        peers.close()
        holder.server.stop()


class _NothingHere:
    def get_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        return None

    def get_records(self, sop_instance_uids: Sequence[str]) -> dict[str, object]:
        return {}


def _never_read(_inst: StoredInstance) -> Dataset:
    raise AssertionError("nothing is held here")


def _locations(first: Holding, second: Holding, study: list[Dataset]) -> list[InstanceLocation]:
    holders = (Holder("a", "A", "lung"), Holder("b", "B", "lung"))
    return [
        InstanceLocation(
            study_instance_uid=ds.StudyInstanceUID,
            series_instance_uid=ds.SeriesInstanceUID,
            sop_instance_uid=ds.SOPInstanceUID,
            sop_class_uid=ds.SOPClassUID,
            transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
            size=0,
            holders=holders,
            peer_addresses=(first.server.address, second.server.address),
        )
        for ds in study
    ]


def test_grid_prefetch_fails_over_when_the_holder_goes_away_mid_stream(
    tmp_path: Path, study: list[Dataset], client: PeerClient, caplog: pytest.LogCaptureFixture
) -> None:
    first = _holding(tmp_path / "a", study)
    second = _holding(tmp_path / "b", study)
    first.store.gated.add(first.keys[first.uids[5]])  # the stream waits before the 6th …
    grid = GridRetrieveService(None, _NothingHere(), _never_read, client,  # type: ignore[arg-type]
                               prefetch=2, batch=32)  # fmt: skip
    try:
        planned = grid.plan_locations(_locations(first, second, study))
        moved = [grid.load(planned[i]).SOPInstanceUID for i in range(3)]
        first.server.stop(grace=0)  # … and the first holder goes away in the middle of it
        started = time.monotonic()
        moved += [grid.load(item).SOPInstanceUID for item in planned[3:]]
        assert moved == [ds.SOPInstanceUID for ds in study]  # all of them, in plan order
        assert time.monotonic() - started < 20  # not by waiting for the stalled read
        failovers = [r.getMessage() for r in caplog.records if "peer_failover" in r.getMessage()]
        assert failovers and all(first.server.address in line for line in failovers)
    finally:
        first.store.gate.set()
        second.server.stop()


def test_an_abandoned_plan_stops_fetching(
    tmp_path: Path, study: list[Dataset], client: PeerClient
) -> None:
    holder = _holding(tmp_path, study)
    grid = GridRetrieveService(None, _NothingHere(), _never_read, client,  # type: ignore[arg-type]
                               prefetch=2, batch=32)  # fmt: skip
    try:
        planned = grid.plan_locations(_locations(holder, holder, study))
        assert grid.load(planned[0]).SOPInstanceUID == study[0].SOPInstanceUID
        del planned  # a cancelled C-MOVE drops its plan
        gc.collect()
        deadline = time.monotonic() + 10
        while any(t.name == "grid-prefetch" for t in threading.enumerate()):
            assert time.monotonic() < deadline, "the prefetch thread outlived its plan"
            time.sleep(0.05)
    finally:
        holder.server.stop()


class _SomeHere:
    """Every other instance of the study is also held here."""

    def __init__(self, study: list[Dataset]) -> None:
        self.local = {ds.SOPInstanceUID: ds for ds in study[::2]}
        self.read: list[str] = []

    def get_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        if sop_instance_uid not in self.local:
            return None
        return StoredInstance(sop_instance_uid, "", "", "", 0, "", "")  # only the UID is read

    def get_records(self, sop_instance_uids: Sequence[str]) -> dict[str, object]:
        return {uid: self.local[uid] for uid in sop_instance_uids if uid in self.local}

    def read_local(self, inst: StoredInstance) -> Dataset:
        self.read.append(inst.sop_instance_uid)
        return self.local[inst.sop_instance_uid]


def test_local_and_remote_copies_interleave_without_waiting(
    tmp_path: Path, study: list[Dataset], client: PeerClient
) -> None:
    holder = _holding(tmp_path, study)
    here = _SomeHere(study)
    grid = GridRetrieveService(None, here, here.read_local, client,  # type: ignore[arg-type]
                               prefetch=1, batch=32)  # fmt: skip
    try:
        planned = grid.plan_locations(_locations(holder, holder, study))
        started = time.monotonic()
        moved = [grid.load(item).SOPInstanceUID for item in planned]
        assert moved == [ds.SOPInstanceUID for ds in study]
        assert here.read == [ds.SOPInstanceUID for ds in study[::2]]  # local ones read here
        assert time.monotonic() - started < 10
    finally:
        holder.server.stop()
