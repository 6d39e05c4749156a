"""The thin gRPC face of :class:`~catalog.service.CatalogService`.

Each method converts the request to domain values, calls the service, and converts the
result back; errors are mapped by :mod:`catalog.server.status`. Streams are sent in pages
so a large answer never sits in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import grpc

from catalog.db.filters import Scope
from catalog.server import convert
from catalog.server.status import guarded, guarded_stream
from catalog.service import CatalogService
from catalog.v1 import catalog_pb2 as pb
from catalog.v1 import catalog_pb2_grpc as pb_grpc

PAGE = 200
T = TypeVar("T")
ScopeResolver = Callable[[grpc.ServicerContext], Scope]
"""Tells which collections the caller may see; supplied by the auth layer."""


def _everything(_context: grpc.ServicerContext) -> Scope:
    return Scope()


def _pages(items: Iterable[T], size: int = PAGE) -> Iterator[list[T]]:
    page: list[T] = []
    for item in items:
        page.append(item)
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page


class CatalogServicer(pb_grpc.CatalogServiceServicer):
    """Translates ``gridpacs.catalog.v1.CatalogService`` calls to the plain service."""

    def __init__(self, service: CatalogService, scope: ScopeResolver | None = None) -> None:
        self._service = service
        self._scope = scope or _everything

    def RegisterNode(
        self, request: pb.RegisterNodeRequest, context: grpc.ServicerContext
    ) -> pb.RegisterNodeResponse:
        node = convert.node_from_pb(request.node)
        mark = guarded("RegisterNode", context, lambda: self._service.register_node(node))
        return pb.RegisterNodeResponse(high_water_mark=mark)

    def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.HeartbeatResponse:
        mark = guarded("Heartbeat", context, lambda: self._service.heartbeat(request.node))
        return pb.HeartbeatResponse(high_water_mark=mark)

    def PublishChanges(
        self, request: pb.PublishChangesRequest, context: grpc.ServicerContext
    ) -> pb.PublishChangesResponse:
        def call() -> pb.PublishChangesResponse:
            changes = [convert.change_from_pb(c) for c in request.changes]
            result = self._service.apply_changes(request.origin, changes)
            return pb.PublishChangesResponse(
                high_water_mark=result.high_water_mark,
                applied=result.applied,
                skipped=result.skipped,
            )

        return guarded("PublishChanges", context, call)

    def GetWatermarks(
        self, request: pb.GetWatermarksRequest, context: grpc.ServicerContext
    ) -> pb.GetWatermarksResponse:
        marks = guarded("GetWatermarks", context, self._service.watermarks)
        response = pb.GetWatermarksResponse(replica=marks.replica)
        for origin, seq in sorted(marks.marks.items()):
            response.watermarks.add(origin=origin, seq=seq)
        for node in marks.nodes:
            convert.node_to_pb(node, response.nodes.add())
        return response

    def PullChanges(
        self, request: pb.PullChangesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.PullChangesResponse]:
        def produce() -> Iterator[pb.PullChangesResponse]:
            changes = self._service.pull_changes(request.origin, request.after_seq, request.limit)
            for page in _pages(changes, 1000):
                response = pb.PullChangesResponse(origin=request.origin)
                for change in page:
                    convert.change_to_pb(change, response.changes.add())
                yield response

        return guarded_stream("PullChanges", context, produce)

    def QueryStudies(
        self, request: pb.QueryStudiesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.QueryStudiesResponse]:
        def produce() -> Iterator[pb.QueryStudiesResponse]:
            query = convert.filter_from_pb(request.filter)
            for page in _pages(self._service.query_studies(query, self._scope(context))):
                response = pb.QueryStudiesResponse()
                for match in page:
                    convert.study_to_pb(match, response.matches.add())
                yield response

        return guarded_stream("QueryStudies", context, produce)

    def QuerySeries(
        self, request: pb.QuerySeriesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.QuerySeriesResponse]:
        def produce() -> Iterator[pb.QuerySeriesResponse]:
            query = convert.filter_from_pb(request.filter)
            for page in _pages(self._service.query_series(query, self._scope(context))):
                response = pb.QuerySeriesResponse()
                for match in page:
                    convert.series_to_pb(match, response.matches.add())
                yield response

        return guarded_stream("QuerySeries", context, produce)

    def QueryInstances(
        self, request: pb.QueryInstancesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.QueryInstancesResponse]:
        def produce() -> Iterator[pb.QueryInstancesResponse]:
            query = convert.filter_from_pb(request.filter)
            for page in _pages(self._service.query_instances(query, self._scope(context))):
                response = pb.QueryInstancesResponse()
                for match in page:
                    convert.instance_to_pb(match, response.matches.add())
                yield response

        return guarded_stream("QueryInstances", context, produce)

    def LocateInstances(
        self, request: pb.LocateInstancesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.LocateInstancesResponse]:
        def produce() -> Iterator[pb.LocateInstancesResponse]:
            query = convert.QueryFilter(
                study_instance_uids=tuple(request.study_instance_uids),
                series_instance_uids=tuple(request.series_instance_uids),
                sop_instance_uids=tuple(request.sop_instance_uids),
                collections=tuple(request.collections),
            )
            locations = self._service.locate_instances(query, self._scope(context))
            for page in _pages(locations):
                response = pb.LocateInstancesResponse()
                for location in page:
                    convert.location_to_pb(location, response.locations.add())
                yield response

        return guarded_stream("LocateInstances", context, produce)
