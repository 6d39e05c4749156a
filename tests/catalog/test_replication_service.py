"""ReplicationService over gRPC through the composition root: the plan crosses the wire
intact, and only grid hosts may ask for one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from catalog.app import CatalogApp, build_app
from catalog.config import build_config
from catalog.errors import CatalogRejected, CatalogUnavailable
from catalog.placement.client import GrpcPlacementClient
from catalog.records import NodeInfo
from catalog.security import channel_credentials, init_ca, issue
from catalog.security.tokens import write_pepper
from tests.catalog.builders import Outbox, StudyBuilder
from tests.catalog.processes import free_port

pytestmark = pytest.mark.timeout(60)


def _app(sqlite_url: str, instances: int = 3, **extra: object) -> CatalogApp:
    config = build_config(
        {
            "name": "cat-repl",
            "port": 0,
            "db_url": sqlite_url,
            "insecure": True,
            "replication": {"collections": {"lung": 2}},
            **extra,
        }
    )
    app = build_app(config)
    for name in ("site-a", "site-b"):
        app.service.register_node(NodeInfo(name, name.upper(), peer_address=f"{name}:50061"))
    records = StudyBuilder("R1", collection="lung").instances(instances)
    app.service.apply_changes("site-a", Outbox("site-a").added(records))
    app.start()
    return app


@pytest.fixture
def app(sqlite_url: str) -> Iterator[CatalogApp]:
    app = _app(sqlite_url)
    try:
        yield app
    finally:
        app.stop(grace=0)


def test_plan_pulls_round_trip(app: CatalogApp) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with_failover = GrpcPlacementClient([dead, f"127.0.0.1:{app.port}"], timeout=5)
    try:
        pulls = with_failover.plan_pulls("site-b", refused_collections=["local"])
        assert len(pulls) == 3
        pull = pulls[0]
        assert pull.holding.collection == "lung"
        assert pull.holding.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
        assert pull.holding.study_instance_uid and pull.holding.series_instance_uid
        assert [(s.node, s.peer_address) for s in pull.sources] == [("site-a", "site-a:50061")]
        assert (pull.factor, pull.copies) == (2, 1)
        assert with_failover.plan_pulls("site-b", limit=1)[0].holding.sop_instance_uid
        assert with_failover.plan_pulls("site-a") == []
        assert with_failover.plan_pulls("site-b", refused_collections=["lung"]) == []
    finally:
        with_failover.close()
    nobody = GrpcPlacementClient([dead], timeout=2)
    with pytest.raises(CatalogUnavailable):
        nobody.plan_pulls("site-b")
    nobody.close()


def test_count_copies_counts_sites_with_a_copy_and_refuses_what_it_cannot_answer(
    app: CatalogApp,
) -> None:
    records = StudyBuilder("R3", collection="lung").instances(1200)
    app.service.register_node(NodeInfo("site-c", "SITE-C", peer_address="site-c:50061"))
    app.service.apply_changes("site-c", Outbox("site-c").added(records))
    app.service.apply_changes("site-b", Outbox("site-b").added(records[:1]))
    uids = [r.sop_instance_uid for r in records]
    client = GrpcPlacementClient([f"127.0.0.1:{app.port}"], timeout=5)
    try:
        counted = client.count_copies("lung", [*uids, "1.2.999"])  # two calls: 1,201 UIDs
        assert counted[uids[0]] == 2 and counted["1.2.999"] == 0
        assert set(counted[u] for u in uids[1:]) == {1}
        assert client.count_copies("clinical", uids[:3]) == dict.fromkeys(uids[:3], 0)
        stub = client._stub(f"127.0.0.1:{app.port}")
        from catalog.v1 import replication_pb2 as pb

        too_many = pb.CountCopiesRequest(collection="lung", sop_instance_uids=uids[:1001])
        for bad in (too_many, pb.CountCopiesRequest(sop_instance_uids=uids[:1])):
            with pytest.raises(grpc.RpcError) as refused:
                stub.CountCopies(bad, timeout=5)
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    finally:
        client.close()


def test_plan_pulls_needs_a_grid_host_certificate(tmp_path: Path, sqlite_url: str) -> None:
    pepper = write_pepper(tmp_path / "pepper")
    app = _app(sqlite_url, security={"pepper_file": str(pepper)})
    try:
        client = GrpcPlacementClient([f"127.0.0.1:{app.port}"], timeout=5)
        with pytest.raises(CatalogRejected) as refused:
            client.plan_pulls("site-b")
        assert refused.value.code == "UNAUTHENTICATED"
        with pytest.raises(CatalogRejected) as refused:
            client.count_copies("lung", ["1.2.3"])
        assert refused.value.code == "UNAUTHENTICATED"
        client.close()
    finally:
        app.stop(grace=0)


def test_refusals_reach_the_replicas_a_node_does_not_ask(tmp_path: Path) -> None:
    apps = [_app(f"sqlite:///{tmp_path}/{n}.sqlite", instances=40) for n in ("r1", "r2")]
    try:
        for app in apps:
            app.service.register_node(NodeInfo("private", "PRIVATE", peer_address="p:50061"))
        first, second = (f"127.0.0.1:{app.port}" for app in apps)
        private = GrpcPlacementClient([first, second], timeout=5)
        site_b = GrpcPlacementClient([second], timeout=5)
        try:
            # site-b asks r2, which has not heard of private's refusal yet: the 40 copies are
            # split between the two candidates
            assert 0 < len(site_b.plan_pulls("site-b")) < 40
            private.plan_pulls("private", refused_collections=["lung"])  # asks r1 only...
            # ...and announces its refusal to r2, which now places everything on site-b
            deadline = time.monotonic() + 10
            while len(site_b.plan_pulls("site-b")) != 40:
                assert time.monotonic() < deadline, "r2 never heard private's refusal"
                time.sleep(0.1)
        finally:
            private.close()
            site_b.close()
    finally:
        for app in apps:
            app.stop(grace=0)


def test_plan_pulls_over_mtls_takes_a_host_certificate_not_a_user_one(
    tmp_path: Path, sqlite_url: str
) -> None:
    init_ca(tmp_path / "ca", "testgrid")
    server = issue(tmp_path / "ca", tmp_path / "catalog", "127.0.0.1")
    pepper = write_pepper(tmp_path / "pepper")
    app = _app(
        sqlite_url,
        insecure=False,
        tls={"cert": str(server.cert), "key": str(server.key), "ca": str(server.ca_cert)},
        security={"pepper_file": str(pepper)},
    )
    address = [f"127.0.0.1:{app.port}"]
    try:
        node = issue(tmp_path / "ca", tmp_path / "site-b", "127.0.0.1")
        host = GrpcPlacementClient(
            address, credentials=channel_credentials(node.cert, node.key, node.ca_cert)
        )
        assert len(host.plan_pulls("site-b")) == 3
        host.close()
        user = issue(tmp_path / "ca", tmp_path / "alice", "alice", roles=("client",))
        researcher = GrpcPlacementClient(
            address, credentials=channel_credentials(user.cert, user.key, user.ca_cert)
        )
        with pytest.raises(CatalogRejected) as refused:
            researcher.plan_pulls("site-b")
        assert refused.value.code == "UNAUTHENTICATED"
        researcher.close()
    finally:
        app.stop(grace=0)
