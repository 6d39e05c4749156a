"""The node's InventoryService over real gRPC with mutual TLS: listing by period, only
collections that leave the site, and the repairs (republish, pull, retract) needing a host
certificate."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from catalog.reconcile import Held, Period
from catalog.security import channel_credentials, pki, server_credentials
from gridpacs.reconcile.nodes import InventoryClient, NodeUnreachable
from node.index import ChangeKind, SqlIndex, open_index
from node.peer import PeerClient, PeerServer
from node.peer.inventory import InventoryServicer
from node.peer.server import PeerServicer
from node.services.ingest import IngestService, StoreRequest
from storage import Quarantine, open_store
from tests.factories import StudySpec, make_dataset, to_bytes

pytestmark = pytest.mark.timeout(60)
JUNE = Period.parse("2024-06")


def _leaves_site(collection: str) -> bool:
    return collection != "local"


@dataclass
class Site:
    index: SqlIndex
    server: PeerServer
    peers: PeerClient

    @property
    def address(self) -> str:
        return self.server.address


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pki.CertFiles]:
    root = tmp_path_factory.mktemp("pki")
    pki.init_ca(root / "ca", "testgrid")
    made = {name: pki.issue(root / "ca", root / name, name, ip_addresses=["127.0.0.1"])
            for name in ("site-a", "site-b", "ops")}  # fmt: skip
    made["alice"] = pki.issue(root / "ca", root / "alice", "alice", roles=("client",))
    return made


def _site(tmp: Path, name: str, files: pki.CertFiles) -> Site:
    index = open_index(f"sqlite:///{tmp}/{name}.sqlite")
    store = open_store(tmp / f"{name}-blobs")
    ingest = IngestService(store, index, Quarantine(tmp / f"{name}-q"), max_instance_bytes=10**7)
    client_creds = channel_credentials(files.cert, files.key, files.ca_cert)
    peers = PeerClient(client_creds, timeout=10)
    inventory = InventoryServicer(index, publishable=_leaves_site, ingest=ingest, peers=peers,
                                  ae_title=name.upper().replace("-", ""))  # fmt: skip
    server = PeerServer(PeerServicer(index, store, servable=_leaves_site), "127.0.0.1", 0,
                        server_credentials(files.cert, files.key, files.ca_cert),
                        inventory=inventory)  # fmt: skip
    server.start()
    site = Site(index, server, peers)
    site.ingest = ingest  # type: ignore[attr-defined]
    return site


def _store(site: Site, spec: StudySpec, collection: str, n: int = 1) -> list[str]:
    uids = []
    for i in range(n):
        ds = make_dataset(spec, instance_number=i + 1)
        site.ingest.store(  # type: ignore[attr-defined]
            StoreRequest(to_bytes(ds), "MODALITY", "SITE", ds.SOPClassUID, ds.SOPInstanceUID),
            collection=collection,
        )
        uids.append(str(ds.SOPInstanceUID))
    return uids


@pytest.fixture
def sites(tmp_path: Path, certs: dict[str, pki.CertFiles]) -> Iterator[tuple[Site, Site]]:
    a = _site(tmp_path, "site-a", certs["site-a"])
    b = _site(tmp_path, "site-b", certs["site-b"])
    yield a, b
    for site in (a, b):
        site.server.stop(0)
        site.peers.close()
        site.index.close()


def _client(files: pki.CertFiles) -> InventoryClient:
    return InventoryClient(channel_credentials(files.cert, files.key, files.ca_cert), timeout=20)


def test_listing_by_period_shows_only_what_leaves_the_site(
    sites: tuple[Site, Site], certs: dict[str, pki.CertFiles]
) -> None:
    a, _ = sites
    june = _store(a, StudySpec(study_date="20240612"), "lung", 3)
    _store(a, StudySpec(study_date="20240705", patient_id="P2"), "lung", 1)
    _store(a, StudySpec(study_date="20240613", patient_id="P3"), "local", 1)
    with _client(certs["alice"]) as client:  # any grid certificate may list
        listed = client.list_instances(a.address, JUNE)
        assert {h.sop_instance_uid for h in listed} == set(june)
        assert {h.collection for h in listed} == {"lung"}
        assert all(h.study_date == "20240612" and h.received_at for h in listed)
        assert client.list_instances(a.address, JUNE, ["local"]) == []
        # everything was received today: listed by date received for today's month
        today = Period.months_back(listed[0].received_at.date(), 1)[0]  # type: ignore[union-attr]
        assert len(client.list_instances(a.address, today)) == 4  # 4 lung (2 by date too)


def test_repairs_republish_pull_and_retract(
    sites: tuple[Site, Site], certs: dict[str, pki.CertFiles]
) -> None:
    a, b = sites
    [lung] = _store(a, StudySpec(study_date="20240612"), "lung")
    [local] = _store(a, StudySpec(study_date="20240612", patient_id="P3"), "local")
    last = a.index.last_change_seq()
    with _client(certs["ops"]) as client:
        enqueued, missing = client.republish(a.address, [lung, local, "1.2.3.999"])
        assert (enqueued, sorted(missing)) == (1, sorted([local, "1.2.3.999"]))
        [change] = a.index.changes_since(last)
        assert (change.kind, change.record.sop_instance_uid) == (ChangeKind.INSTANCE_ADDED, lung)

        held = Held(lung, "lung", sop_class_uid=a.index.get_record(lung).sop_class_uid)  # type: ignore[union-attr]
        pulled = list(client.pull(b.address, [(held, ["127.0.0.1:1", a.address])]))
        assert [(p.ok, p.source) for p in pulled] == [(True, a.address)]
        copy = b.index.get_record(lung)
        assert copy is not None and copy.collection == "lung" and copy.calling_ae == "GRIDPULL"
        again = list(client.pull(b.address, [(held, [a.address])]))
        assert [(p.ok, p.source) for p in again] == [(True, "local")]
        identified = Held(local, "local", sop_class_uid=held.sop_class_uid)
        [refused] = list(client.pull(b.address, [(identified, [a.address])]))
        assert not refused.ok and "may not be held" in refused.error
        nobody = Held("1.2.3.998", "lung", sop_class_uid=held.sop_class_uid)
        [failed] = list(client.pull(b.address, [(nobody, [a.address])]))
        assert not failed.ok and "NOT_FOUND" in failed.error

        last = a.index.last_change_seq()
        enqueued, still = client.retract(a.address, [held, Held("1.2.3.997", "lung")])
        assert (enqueued, still) == (1, [lung])
        [gone] = a.index.changes_since(last)
        assert gone.kind is ChangeKind.INSTANCE_DELETED
        assert (gone.record.sop_instance_uid, gone.record.collection) == ("1.2.3.997", "lung")

    with _client(certs["alice"]) as client, pytest.raises(NodeUnreachable, match="PERMISSION"):
        client.republish(a.address, [lung])
    with _client(certs["alice"]) as client, pytest.raises(NodeUnreachable, match="PERMISSION"):
        list(client.pull(b.address, [(held, [a.address])]))
