"""The catalog's holdings listing, on SQLite and PostgreSQL and over gRPC: by StudyDate or
by date received, per node, per collection, within the caller's scope."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import grpc
import pytest

from catalog.client import GrpcCatalogClient
from catalog.db.filters import Scope
from catalog.errors import CatalogRejected, InvalidFilter
from catalog.reconcile import Period
from catalog.server.serve import build_server
from catalog.service import CatalogService
from tests.catalog.builders import Outbox, StudyBuilder

JUNE = Period.parse("2024-06")


def _load(service: CatalogService) -> dict[str, list[str]]:
    june = StudyBuilder(study_date="20240610").instances(3)
    july = StudyBuilder(study_date="20240705").instances(2)
    # studied in May but received in June: counted by date received only
    late = [replace(r, received_at=datetime(2024, 6, 30, 23, 0, tzinfo=UTC))
            for r in StudyBuilder(study_date="20240501").instances(1)]  # fmt: skip
    # received on July 1st 00:00 UTC: outside June by both dates
    july_received = [replace(r, received_at=datetime(2024, 7, 1, tzinfo=UTC))
                     for r in july]  # fmt: skip
    other = StudyBuilder(study_date="20240611", collection="other").instances(1)
    service.apply_changes("a", Outbox("a").added(june + late + july_received + other))
    service.apply_changes("b", Outbox("b").added(june[:1]))
    return {
        "june": [r.sop_instance_uid for r in june],
        "late": [r.sop_instance_uid for r in late],
        "other": [r.sop_instance_uid for r in other],
    }


def test_holdings_by_study_date_or_received(service: CatalogService) -> None:
    uids = _load(service)
    got = list(service.list_holdings(JUNE))
    by_node: dict[str, set[str]] = {}
    for node, held in got:
        by_node.setdefault(node, set()).add(held.sop_instance_uid)
    assert by_node["a"] == {*uids["june"], *uids["late"], *uids["other"]}
    assert by_node["b"] == {uids["june"][0]}
    [late] = [h for _, h in got if h.sop_instance_uid == uids["late"][0]]
    assert late.study_date == "20240501" and late.received_at == datetime(
        2024, 6, 30, 23, 0, tzinfo=UTC)  # fmt: skip
    assert late.study_instance_uid and late.series_instance_uid and late.sop_class_uid
    only_b = {h.sop_instance_uid for _, h in service.list_holdings(JUNE, node="b")}
    assert only_b == {uids["june"][0]}
    clinical = {h.collection for _, h in service.list_holdings(JUNE, collections=["clinical"])}
    assert clinical == {"clinical"}
    scoped = {
        h.collection for _, h in service.list_holdings(JUNE, scope=Scope(frozenset({"other"})))
    }
    assert scoped == {"other"}
    with pytest.raises(InvalidFilter):
        list(service.list_holdings(Period.parse("2023-01-01..2024-06-30")))


def test_holdings_over_grpc(service: CatalogService) -> None:
    uids = _load(service)
    server = build_server(service, port=0)
    server.start()
    try:
        with GrpcCatalogClient([f"127.0.0.1:{server.port}"]) as client:
            got = {(n, h.sop_instance_uid) for n, h in client.list_holdings(JUNE, node="a")}
            assert {u for _, u in got} == {*uids["june"], *uids["late"], *uids["other"]}
            stub_channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
            from catalog.v1 import holdings_pb2, holdings_pb2_grpc

            stub = holdings_pb2_grpc.HoldingsServiceStub(stub_channel)
            with pytest.raises(grpc.RpcError) as info:
                list(stub.ListHoldings(holdings_pb2.ListHoldingsRequest(start_date="2024",
                                                                        end_date="x")))  # fmt: skip
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            stub_channel.close()
            with pytest.raises(CatalogRejected):
                list(client.list_holdings(Period.parse("2022-01-01..2024-06-30")))
    finally:
        server.stop(0)
