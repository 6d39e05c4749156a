"""The composition root plugs catalog.security in: tokens, per-collection scope, audit."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from catalog.app import CatalogApp, build_app
from catalog.client import GrpcCatalogClient
from catalog.config import CatalogConfig, SecurityConfig
from catalog.errors import CatalogRejected
from catalog.records import QueryFilter
from catalog.security import AuditLog, TokenStore, load_pepper
from catalog.security.audit_export import AuditExportSettings, read_cursor
from catalog.security.tokens import write_pepper
from tests.catalog.builders import Outbox, StudyBuilder
from tests.catalog.security.collector import Collector

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def secured(tmp_path: Path, sqlite_url: str) -> Iterator[CatalogApp]:
    pepper = write_pepper(tmp_path / "pepper")
    config = CatalogConfig(
        name="cat-sec",
        port=0,
        db_url=sqlite_url,
        insecure=True,
        security=SecurityConfig(pepper_file=pepper),
    )
    app = build_app(config)
    node = Outbox("site-a")
    app.service.apply_changes("site-a", node.added(StudyBuilder("P1").instances(2)))
    lung = StudyBuilder("R1", collection="lung")
    app.service.apply_changes("site-a", node.added(lung.instances(2)))
    app.start()
    try:
        yield app
    finally:
        app.stop(grace=0)


def _token(app: CatalogApp, grants: dict[str, str]) -> str:
    assert app.config.security is not None
    store = TokenStore(app.engine, load_pepper(app.config.security.pepper_file))
    return store.create("alice", grants, None).plaintext


def test_queries_need_a_token_and_see_only_granted_collections(secured: CatalogApp) -> None:
    address = [f"127.0.0.1:{secured.port}"]
    with GrpcCatalogClient(address) as anonymous, pytest.raises(CatalogRejected) as refused:
        list(anonymous.query_studies(QueryFilter()))
    assert refused.value.code == "UNAUTHENTICATED"

    with GrpcCatalogClient(address, token=_token(secured, {"lung": "reader"})) as reader:
        studies = list(reader.query_studies(QueryFilter()))
        assert [s.attributes["PatientID"] for s in studies] == ["R1"]
        # publishing and replication need a grid host certificate, not a researcher token
        with pytest.raises(CatalogRejected) as not_a_host:
            reader.publish_changes("site-a", [])
        assert not_a_host.value.code == "UNAUTHENTICATED"

    with GrpcCatalogClient(address, token=_token(secured, {"*": "reader"})) as everyone:
        assert len(list(everyone.query_studies(QueryFilter()))) == 2

    actions = [r.action for r in AuditLog(secured.engine).query()]
    assert actions.count("/gridpacs.catalog.v1.CatalogService/QueryStudies") == 3


def test_the_audit_log_goes_to_the_sites_repository(tmp_path: Path, sqlite_url: str) -> None:
    """``[security.audit_export]``: each audited call reaches a syslog collector as a DICOM
    audit message naming the researcher, and a stopped replica leaves nothing owed."""
    collector = Collector().start()
    config = CatalogConfig(
        name="cat-arr",
        port=0,
        db_url=sqlite_url,
        insecure=True,
        security=SecurityConfig(
            pepper_file=write_pepper(tmp_path / "pepper"),
            audit_export=AuditExportSettings(
                url=f"tcp://127.0.0.1:{collector.port}", site_id="hospital-a", insecure=True
            ),
        ),
    )
    app = build_app(config)
    app.start()
    try:
        token = _token(app, {"*": "reader"})
        with GrpcCatalogClient([f"127.0.0.1:{app.port}"], token=token) as client:
            list(client.query_studies(QueryFilter(patient_id="P1")))
        collector.wait_for(1)
    finally:
        app.stop(grace=0)
    (doc,) = collector.documents()
    assert doc.find("EventIdentification/EventID").get("csd-code") == "110112"  # type: ignore[union-attr]
    user = doc.find("ActiveParticipant")
    assert user is not None and user.get("UserID") == "alice"
    assert user.get("NetworkAccessPointID") == "127.0.0.1"
    site = doc.find("AuditSourceIdentification")
    assert site is not None and site.get("AuditSourceID") == "cat-arr"
    assert site.get("AuditEnterpriseSiteID") == "hospital-a"
    engine = sa.create_engine(sqlite_url)
    assert read_cursor(engine, f"tcp://127.0.0.1:{collector.port}") == AuditLog(engine).head()[0]
    collector.stop()
    with pytest.raises(ValueError, match="needs the audit log"):
        SecurityConfig(pepper_file=tmp_path / "pepper", audit=False,
                       audit_export=AuditExportSettings(url="tcp://127.0.0.1:1",
                                                        insecure=True))  # fmt: skip


def test_a_replica_prunes_audit_rows_past_its_retention_period(
    tmp_path: Path, sqlite_url: str
) -> None:
    from catalog.security.audit import canonical, chain_hash
    from catalog.security.models import AuditEntry

    config = CatalogConfig(
        name="cat-keep", port=0, db_url=sqlite_url, insecure=True,
        security=SecurityConfig(pepper_file=write_pepper(tmp_path / "pepper"),
                                audit_keep_days=30),
    )  # fmt: skip
    app = build_app(config)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=90)
    prev = "0" * 64
    with app.engine.begin() as conn:  # two rows from three months ago
        for seq in (1, 2):
            row = ("alice", "/gridpacs.catalog.v1.CatalogService/QueryStudies", {}, "p", "OK")
            digest = chain_hash(prev, canonical(seq, old, *row))
            conn.execute(sa.insert(AuditEntry.__table__).values(  # type: ignore[arg-type]
                seq=seq, at=old, actor=row[0], action=row[1], target=row[2], peer=row[3],
                outcome=row[4], prev_hash=prev, row_hash=digest))  # fmt: skip
            prev = digest
    app.start()
    try:
        log = AuditLog(app.engine)
        deadline = time.monotonic() + 10
        while not log.query(action="audit.prune") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.anchor() == (2, prev)
        assert [(r.seq, r.action, r.actor) for r in log.query()] == [
            (3, "audit.prune", "catalog:cat-keep")
        ]
        assert log.verify() == []
    finally:
        app.stop(grace=0)
