"""Replication between real replicas over gRPC (in-process servers on port 0)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine

from catalog.client import GrpcCatalogClient
from catalog.db import Repository, open_database
from catalog.records import NodeInfo, QueryFilter
from catalog.replication import Peer, Replicator
from catalog.server.serve import CatalogServer, build_server
from catalog.service import CatalogService
from tests.catalog.builders import Outbox, StudyBuilder
from tests.catalog.conftest import snapshot

pytestmark = pytest.mark.timeout(60)


@dataclass
class Replica:
    service: CatalogService
    server: CatalogServer
    engine: Engine

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


def _start(name: str, url: str) -> Replica:
    engine = open_database(url)
    service = CatalogService(name, Repository(engine))
    server = build_server(service, port=0)
    server.start()
    return Replica(service, server, engine)


@pytest.fixture
def replicas(sqlite_url: str, db_url: str) -> Iterator[tuple[Replica, Replica]]:
    """Replica a on SQLite, replica b on ``db_url`` (SQLite or PostgreSQL)."""
    a = _start("a", sqlite_url.replace("index.sqlite", "a.sqlite"))
    b = _start("b", db_url)
    try:
        yield a, b
    finally:
        for r in (a, b):
            r.server.stop(grace=0)
            r.engine.dispose()


def _replicator(into: Replica, source: Replica, batch: int = 2000) -> Replicator:
    return Replicator(
        into.service,
        [Peer("src", source.address)],
        lambda address: GrpcCatalogClient([address], timeout=5),
        batch_size=batch,
    )


def test_new_empty_replica_bootstraps_and_follows(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    a.service.register_node(NodeInfo("site-a", "SITE_A", "127.0.0.1", 104, "p:1"))
    node = Outbox("site-a")
    records = StudyBuilder().instances(120) + StudyBuilder(patient_id="P2").instances(30)
    a.service.apply_changes("site-a", node.added(records))
    a.service.apply_changes("site-a", node.deleted(records[:10]))
    a.service.apply_changes("site-a", node.added(records[20:25]))  # re-adds

    pull = _replicator(b, a, batch=40)  # several pages and batches
    try:
        assert pull.run_once() == 165
        assert snapshot(b.service) == snapshot(a.service)
        assert b.service.nodes()[0].ae_title == "SITE_A"

        a.service.apply_changes("site-a", node.deleted(records[100:]))
        assert pull.run_once() == 50
        assert pull.run_once() == 0
        assert snapshot(b.service) == snapshot(a.service)
        [only] = b.service.query_studies(QueryFilter())
        assert only.number_of_instances == 90
    finally:
        pull.stop()


def test_two_way_replication_converges_without_conflicts(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    site_a, site_b = Outbox("site-a"), Outbox("site-b")
    a.service.apply_changes("site-a", site_a.added(StudyBuilder().instances(20)))
    b.service.apply_changes("site-b", site_b.added(StudyBuilder().instances(15)))
    shared = site_a.added(StudyBuilder().instances(5))
    a.service.apply_changes("site-a", shared)
    ab, ba = _replicator(a, b), _replicator(b, a)
    try:
        ab.run_once()
        ba.run_once()
        assert ab.run_once() == 0 and ba.run_once() == 0
        assert snapshot(a.service) == snapshot(b.service)
        assert a.service.repository.watermarks() == {"site-a": 25, "site-b": 15}
    finally:
        ab.stop()
        ba.stop()


def test_background_loop_catches_up_after_peer_outage(sqlite_url: str) -> None:
    a = _start("a", sqlite_url.replace("index.sqlite", "a.sqlite"))
    b = _start("b", sqlite_url.replace("index.sqlite", "b.sqlite"))
    loop = Replicator(
        b.service,
        [Peer("a", a.address)],
        lambda addr: GrpcCatalogClient([addr], timeout=1),
        interval=0.05,
    )
    loop.start()
    try:
        node = Outbox("site-a")
        a.service.apply_changes("site-a", node.added(StudyBuilder().instances(10)))
        _wait_for(lambda: b.service.high_water_mark("site-a") == 10)
        a.server.stop(grace=0)  # peer down: the loop logs and keeps going
        restarted = build_server(a.service, port=a.server.port)
        a.service.apply_changes("site-a", node.added(StudyBuilder().instances(5)))
        restarted.start()
        _wait_for(lambda: b.service.high_water_mark("site-a") == 15)
        assert snapshot(b.service) == snapshot(a.service)
        restarted.stop(grace=0)
    finally:
        loop.stop()
        for r in (a, b):
            r.server.stop(grace=0)
            r.engine.dispose()


def _wait_for(condition: object, timeout: float = 15.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")
