"""The gRPC face: a real in-process server on port 0 and the typed client over it."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from catalog.client import GrpcCatalogClient
from catalog.db import Repository, open_database
from catalog.errors import CatalogRejected, CatalogUnavailable
from catalog.records import ChangeKind, NodeInfo, QueryFilter
from catalog.server.serve import SERVICE_NAME, CatalogServer, build_server
from catalog.service import CatalogService
from tests.catalog.builders import Outbox, StudyBuilder

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server(sqlite_url: str) -> Iterator[CatalogServer]:
    engine = open_database(sqlite_url)
    running = build_server(CatalogService("replica-a", Repository(engine)), port=0)
    running.start()
    try:
        yield running
    finally:
        running.stop(grace=0)
        engine.dispose()


def closed_port() -> int:
    """A port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def client(server: CatalogServer) -> Iterator[GrpcCatalogClient]:
    with GrpcCatalogClient([f"127.0.0.1:{server.port}"], timeout=5) as c:
        yield c


def test_health_reports_serving(server: CatalogServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE_NAME):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_publish_query_locate_roundtrip(client: GrpcCatalogClient) -> None:
    assert client.register_node(NodeInfo("site-a", "SITE_A", "127.0.0.1", 11112, "h:7")) == 0
    node = Outbox("site-a")
    study = StudyBuilder(patient_name="SMITH^J")
    records = study.instances(450)  # more than one streamed page
    result = client.publish_changes("site-a", node.added(records))
    assert (result.high_water_mark, result.applied) == (450, 450)
    assert client.publish_changes("site-a", node.added([])).high_water_mark == 450
    assert client.heartbeat("site-a") == 450

    [match] = client.query_studies(QueryFilter(patient_name="SMITH*"))
    assert match.number_of_instances == 450
    assert match.holders[0].ae_title == "SITE_A"
    instances = list(client.query_instances(QueryFilter(study_instance_uids=(study.study_uid,))))
    assert len(instances) == 450
    assert len(list(client.query_series(QueryFilter(modalities=("CT",))))) == 1
    located = list(client.locate_instances(sop_instance_uids=[records[0].sop_instance_uid]))
    assert located[0].peer_addresses == ("h:7",)

    pulled = list(client.pull_changes("site-a", 0, 10))
    assert [c.seq for c in pulled] == list(range(1, 11))
    assert pulled[0].record == records[0]  # attributes, None values and timestamps survive
    marks = client.get_watermarks()
    assert marks.replica == "replica-a" and marks.marks == {"site-a": 450}
    assert [n.name for n in marks.nodes] == ["site-a"]

    client.publish_changes("site-a", node.deleted(records))
    assert list(client.query_studies(QueryFilter())) == []
    [deleted] = client.pull_changes("site-a", 450, 1)
    assert deleted.kind is ChangeKind.INSTANCE_DELETED


def test_errors_map_to_status_codes(client: GrpcCatalogClient) -> None:
    with pytest.raises(CatalogRejected) as bad_filter:
        list(client.query_studies(QueryFilter(study_date="yesterday")))
    assert bad_filter.value.code == "INVALID_ARGUMENT"
    assert "study date" in str(bad_filter.value)
    changes = Outbox("site-a").added(StudyBuilder().instances(2))
    with pytest.raises(CatalogRejected) as bad_order:
        client.publish_changes("site-a", list(reversed(changes)))
    assert bad_order.value.code == "INVALID_ARGUMENT"
    with pytest.raises(CatalogRejected) as unknown:
        client.heartbeat("nobody")
    assert unknown.value.code == "FAILED_PRECONDITION"


def test_client_fails_over_to_the_next_replica(server: CatalogServer) -> None:
    dead = f"127.0.0.1:{closed_port()}"
    with GrpcCatalogClient([dead, f"127.0.0.1:{server.port}"], timeout=2) as client:
        result = client.publish_changes(
            "site-a", Outbox("site-a").added(StudyBuilder().instances(1))
        )
        assert result.high_water_mark == 1
        assert len(list(client.query_studies(QueryFilter()))) == 1


def test_unavailable_when_no_replica_answers() -> None:
    addresses = [f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"]
    with GrpcCatalogClient(addresses, timeout=1) as client:
        with pytest.raises(CatalogUnavailable, match="no catalog replica answered"):
            client.get_watermarks()
        with pytest.raises(CatalogUnavailable):
            list(client.query_studies(QueryFilter()))


def test_token_travels_as_bearer_metadata(sqlite_url: str) -> None:
    seen: list[str] = []

    class Capture(grpc.ServerInterceptor):
        def intercept_service(self, continuation, details):
            seen.extend(v for k, v in details.invocation_metadata if k == "authorization")
            return continuation(details)

    engine = open_database(sqlite_url)
    running = build_server(
        CatalogService("r", Repository(engine)), port=0, interceptors=[Capture()]
    )
    running.start()
    try:
        with GrpcCatalogClient([f"127.0.0.1:{running.port}"], token="tok_123") as client:
            list(client.query_studies(QueryFilter()))
    finally:
        running.stop(grace=0)
        engine.dispose()
    assert seen == ["Bearer tok_123"]
