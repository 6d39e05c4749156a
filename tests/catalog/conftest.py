"""Catalog fixtures: a real service over the ``db_url`` database (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from catalog.db import Repository, open_database
from catalog.records import QueryFilter
from catalog.service import CatalogService


@pytest.fixture
def service(db_url: str) -> Iterator[CatalogService]:
    engine = open_database(db_url)
    try:
        yield CatalogService("replica-a", Repository(engine))
    finally:
        engine.dispose()


def snapshot(service: CatalogService) -> dict[str, object]:
    """Everything a replica holds, in a comparable form (contents, log and watermarks)."""
    marks = service.repository.watermarks()
    log = {origin: list(service.pull_changes(origin, 0, 50_000)) for origin in sorted(marks)}
    instances = sorted(
        (m.sop_instance_uid, m.holders, sorted(m.attributes.items()))
        for m in service.query_instances(QueryFilter())
    )
    studies = sorted(
        (m.study_instance_uid, m.holders, m.number_of_series, m.number_of_instances)
        for m in service.query_studies(QueryFilter())
    )
    return {"marks": marks, "log": log, "instances": instances, "studies": studies}
