"""The gRPC face of the catalog's holdings listing (``gridpacs.catalog.v1.HoldingsService``),
served beside ``CatalogService`` on the same server."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from catalog.errors import InvalidFilter
from catalog.reconcile import Period
from catalog.server.holdings_convert import SERVICE_NAME, held_to_pb
from catalog.server.servicer import ScopeResolver, _everything, _pages
from catalog.server.status import guarded_stream
from catalog.service import CatalogService
from catalog.v1 import holdings_pb2 as pb
from catalog.v1 import holdings_pb2_grpc as pb_grpc

PAGE = 1000
__all__ = ["SERVICE_NAME", "HoldingsServicer", "period_from"]


def period_from(start_date: str, end_date: str) -> Period:
    """The request's period; a bad one is ``INVALID_ARGUMENT``."""
    try:
        return Period.parse(f"{start_date}-{end_date}")
    except ValueError as exc:
        raise InvalidFilter(str(exc)) from exc


class HoldingsServicer(pb_grpc.HoldingsServiceServicer):
    """ListHoldings: pages of (node, instance) the catalog believes are held in a period."""

    def __init__(self, service: CatalogService, scope: ScopeResolver | None = None) -> None:
        self._service = service
        self._scope = scope or _everything

    def ListHoldings(
        self, request: pb.ListHoldingsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ListHoldingsResponse]:
        def produce() -> Iterator[pb.ListHoldingsResponse]:
            period = period_from(request.start_date, request.end_date)
            holdings = self._service.list_holdings(
                period,
                node=request.node,
                collections=tuple(request.collections),
                scope=self._scope(context),
            )
            for page in _pages(holdings, PAGE):
                response = pb.ListHoldingsResponse()
                for node, held in page:
                    held_to_pb(node, held, response.holdings.add())
                yield response

        return guarded_stream("ListHoldings", context, produce)
