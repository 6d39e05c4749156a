"""A replica whose database goes away answers UNAVAILABLE, and clients fail over past it."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from catalog.client import GrpcCatalogClient
from catalog.db import Repository, open_database
from catalog.errors import CatalogUnavailable
from catalog.records import QueryFilter
from catalog.server.serve import build_server
from catalog.service import CatalogService
from tests.catalog.builders import Outbox, StudyBuilder
from tests.catalog.processes import free_port
from tests.conftest import PG_ADMIN_URL

pytestmark = [pytest.mark.timeout(60), pytest.mark.postgres]


def test_unreachable_database_is_catalog_unavailable() -> None:
    with pytest.raises(CatalogUnavailable, match="unreachable"):
        open_database(f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/nothing")


def test_database_outage_maps_to_unavailable_and_clients_fail_over(
    pg_url: str, sqlite_url: str
) -> None:
    doomed_engine, healthy_engine = open_database(pg_url), open_database(sqlite_url)
    doomed = build_server(CatalogService("doomed", Repository(doomed_engine)), port=0)
    healthy = build_server(CatalogService("healthy", Repository(healthy_engine)), port=0)
    doomed.start()
    healthy.start()
    changes = Outbox("site-a").added(StudyBuilder().instances(3))
    addresses = [f"127.0.0.1:{doomed.port}", f"127.0.0.1:{healthy.port}"]
    try:
        for address in addresses:
            with GrpcCatalogClient([address]) as one:
                one.publish_changes("site-a", changes)
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            name = pg_url.rsplit("/", 1)[1]
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()

        only_doomed = GrpcCatalogClient(addresses[:1])
        with only_doomed, pytest.raises(CatalogUnavailable, match="UNAVAILABLE"):
            list(only_doomed.query_studies(QueryFilter()))
        with GrpcCatalogClient(addresses) as client:
            [study] = client.query_studies(QueryFilter())
            assert study.number_of_instances == 3
            assert client.publish_changes("site-a", changes).high_water_mark == 3
    finally:
        doomed.stop(grace=0)
        healthy.stop(grace=0)
        doomed_engine.dispose()
        healthy_engine.dispose()
