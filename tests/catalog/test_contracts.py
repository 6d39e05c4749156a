"""The generated code is current, and migrations build exactly the schema the models declare."""

from __future__ import annotations

import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData

from catalog.db import open_database
from catalog.db.models import Base
from catalog.security.models import SecurityBase
from catalog.v1 import catalog_pb2, catalog_pb2_grpc
from node.v1 import peer_pb2, peer_pb2_grpc
from tests.catalog.processes import REPO


def test_generated_code_matches_the_proto_sources() -> None:
    done = subprocess.run(
        [sys.executable, "proto/generate.py", "--check"],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def test_wire_names_are_versioned() -> None:
    service = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"]
    assert service.full_name == "gridpacs.catalog.v1.CatalogService"
    assert hasattr(catalog_pb2_grpc, "CatalogServiceStub")
    peer = peer_pb2.DESCRIPTOR.services_by_name["PeerService"]
    assert peer.full_name == "gridpacs.node.v1.PeerService"
    assert peer.methods_by_name["FetchInstance"].server_streaming
    chunk = peer_pb2.InstanceChunk(data=b"x", sha256="ab", size=1)
    assert chunk.size == 1 and hasattr(peer_pb2_grpc, "PeerServiceStub")


def _all_models() -> MetaData:
    """The catalog's tables and the security tables: migrations own both."""
    combined = MetaData()
    for metadata in (Base.metadata, SecurityBase.metadata):
        for table in metadata.tables.values():
            table.to_metadata(combined)
    return combined


def test_migrations_match_the_models(db_url: str) -> None:
    engine = open_database(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), _all_models())
    finally:
        engine.dispose()
    assert diff == []
