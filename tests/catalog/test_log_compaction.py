"""Pruning the catalog's change log (SQLite and PostgreSQL): superseded adds always, delete
entries once every peer has applied them, rejections and each origin's newest entry never;
and whoever pulls the pruned log, from scratch or from behind, ends where the source is."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from catalog.client import GrpcCatalogClient
from catalog.db import Repository, open_database
from catalog.log_compaction import LogCompactor
from catalog.records import ChangeKind, InstanceRecord, QueryFilter
from catalog.replication import Peer, Replicator
from catalog.server.serve import build_server
from catalog.service import CatalogService
from tests.catalog.builders import Outbox, StudyBuilder

pytestmark = pytest.mark.timeout(60)
SITE = "site-a"


def _held(service: CatalogService) -> list[tuple[str, str]]:
    return sorted(
        (m.sop_instance_uid, str(m.attributes.get("InstanceNumber")))
        for m in service.query_instances(QueryFilter())
    )


def _log(service: CatalogService) -> list[tuple[int, ChangeKind]]:
    return [(c.seq, c.kind) for c in service.pull_changes(SITE, 0, 1000)]


def _history(service: CatalogService) -> list[InstanceRecord]:
    """Seqs 1-6 add six instances; 7-8 re-add two, renumbered; 9-10 delete two;
    11 rejects one; 12 deletes the last: six stale adds, three deletes, one rejection."""
    node = Outbox(SITE)
    records = StudyBuilder().instances(6)
    service.apply_changes(SITE, node.added(records))
    renamed = [replace(r, attributes={**r.attributes, "InstanceNumber": 100 + n})
               for n, r in enumerate(records[:2])]  # fmt: skip
    service.apply_changes(SITE, node.added(renamed))
    service.apply_changes(SITE, node.deleted(records[2:4]))
    service.apply_changes(SITE, node.rejected(records[4:5]))
    service.apply_changes(SITE, node.deleted(records[5:6]))
    return records


@pytest.fixture
def fresh(tmp_path: object) -> Iterator[CatalogService]:
    """An empty replica on SQLite, to pull a pruned log into."""
    engine = open_database(f"sqlite:///{tmp_path}/fresh.sqlite")
    try:
        yield CatalogService("replica-fresh", Repository(engine))
    finally:
        engine.dispose()


def test_a_lone_replica_prunes_stale_adds_and_deletes_and_keeps_the_state(
    service: CatalogService, fresh: CatalogService
) -> None:
    records = _history(service)
    held = _held(service)
    assert held == sorted((r.sop_instance_uid, str(100 + n)) for n, r in enumerate(records[:2]))
    assert len(_log(service)) == 12

    pruned = service.repository.compact_change_log(None)  # no peers: no one needs deletes

    assert (pruned[SITE].superseded, pruned[SITE].deleted) == (6, 2)
    A, R, D = ChangeKind.INSTANCE_ADDED, ChangeKind.INSTANCE_REJECTED, ChangeKind.INSTANCE_DELETED
    assert _log(service) == [(7, A), (8, A), (11, R), (12, D)]  # 12: the newest, kept
    assert service.repository.change_log_size() == {SITE: 4}
    assert _held(service) == held and service.high_water_mark(SITE) == 12
    again = service.repository.compact_change_log(None)
    assert again[SITE].total == 0

    # an empty replica built from the pruned log holds exactly what the source holds
    fresh.apply_changes(SITE, list(service.pull_changes(SITE, 0, 1000)))
    assert _held(fresh) == held and fresh.high_water_mark(SITE) == 12
    assert [c.reason for c in fresh.pull_changes(SITE, 0) if c.kind is R] == ["113001"]


def test_delete_entries_go_only_up_to_what_every_peer_applied(service: CatalogService) -> None:
    _history(service)

    assert service.repository.compact_change_log({})[SITE].deleted == 0  # a peer not heard
    assert service.repository.compact_change_log({SITE: 9})[SITE].deleted == 1
    kinds = dict(_log(service))
    assert 9 not in kinds and kinds[10] is ChangeKind.INSTANCE_DELETED
    assert service.repository.compact_change_log({SITE: 100})[SITE].deleted == 1  # 10; 12 kept
    assert sorted(dict(_log(service))) == [7, 8, 11, 12]


def test_a_peer_behind_catches_up_from_a_pruned_log(
    service: CatalogService, fresh: CatalogService
) -> None:
    """The peer has applied the six adds; the source prunes with the peer's mark, so the
    deletes the peer still needs stay and it converges."""
    node = Outbox(SITE)
    records = StudyBuilder().instances(6)
    service.apply_changes(SITE, node.added(records))
    fresh.apply_changes(SITE, list(service.pull_changes(SITE, 0)))
    service.apply_changes(SITE, node.deleted(records[:3]))
    service.apply_changes(SITE, node.added(records[:1]))  # one comes back

    pruned = service.repository.compact_change_log({SITE: fresh.high_water_mark(SITE)})

    assert (pruned[SITE].superseded, pruned[SITE].deleted) == (3, 0)
    fresh.apply_changes(SITE, list(service.pull_changes(SITE, fresh.high_water_mark(SITE))))
    assert _held(fresh) == _held(service) and len(_held(fresh)) == 4


def test_the_replicator_tells_what_every_peer_applied_over_grpc(
    db_url: str, tmp_path: object
) -> None:
    """Marks come from the peers' own GetWatermarks answers, on real sockets."""
    engines = [open_database(db_url), open_database(f"sqlite:///{tmp_path}/b.sqlite")]
    a, b = (CatalogService(n, Repository(e)) for n, e in zip("ab", engines, strict=True))
    server = build_server(b, port=0)
    server.start()
    try:
        puller = Replicator(a, [Peer("b", f"127.0.0.1:{server.port}")],
                            lambda address: GrpcCatalogClient([address], timeout=5))  # fmt: skip
        assert puller.applied_by_every_peer() == {}  # not heard from b yet: nothing
        node = Outbox(SITE)
        records = StudyBuilder().instances(4)
        b.apply_changes(SITE, node.added(records))
        b.apply_changes(SITE, node.deleted(records[:2]))
        assert puller.run_once() == 6
        assert puller.applied_by_every_peer() == {SITE: 6}
        lone = Replicator(a, [], lambda address: GrpcCatalogClient([address]))
        assert lone.applied_by_every_peer() is None  # no peers: no one needs a delete
        compactor = LogCompactor(a.repository, puller.applied_by_every_peer, interval=0.05)
        compactor.start()
        try:
            deadline = time.monotonic() + 10
            while a.repository.change_log_size() != {SITE: 3} and time.monotonic() < deadline:
                time.sleep(0.05)  # adds 1-2 stale, delete 5 applied by b, 6 the newest
        finally:
            compactor.stop()
        assert sorted(dict(_log(a))) == [3, 4, 6]
        puller.stop()
    finally:
        server.stop(grace=0)
        for engine in engines:
            engine.dispose()


def test_the_compactor_logs_one_line_per_origin(
    service: CatalogService, caplog: pytest.LogCaptureFixture
) -> None:
    _history(service)
    with caplog.at_level(logging.INFO, logger="catalog.compaction"):
        LogCompactor(service.repository, lambda: None, interval=0).run_once()
    assert [r.getMessage() for r in caplog.records] == [
        f"event=change_log_compacted origin={SITE} superseded=6 deleted=2 left=4"
    ]
