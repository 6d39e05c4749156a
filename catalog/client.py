"""Typed client of the catalog with failover between replicas.

One channel per replica address per client; every call has a deadline; a call that fails
with UNAVAILABLE or DEADLINE_EXCEEDED moves on to the next replica — only for RPCs that
are safe to repeat (all of ours are: publishing is idempotent by (origin, seq)). A stream
fails over only before its first page arrived, so a caller never sees duplicates.
gRPC errors become :class:`CatalogUnavailable` / :class:`CatalogRejected` here and nowhere
else.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Self, TypeVar

import grpc

from catalog.errors import CatalogRejected, CatalogUnavailable
from catalog.reconcile import Held, Period
from catalog.records import (
    Change,
    InstanceLocation,
    InstanceMatch,
    NodeInfo,
    PublishResult,
    QueryFilter,
    SeriesMatch,
    StudyMatch,
    Watermarks,
)
from catalog.server import convert
from catalog.server.holdings_convert import held_from_pb
from catalog.v1 import catalog_pb2 as pb
from catalog.v1 import catalog_pb2_grpc as pb_grpc
from catalog.v1 import holdings_pb2, holdings_pb2_grpc

log = logging.getLogger("catalog.client")
T = TypeVar("T")

FAILOVER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# Whether a method may be sent again to another replica after an unknown outcome.
IDEMPOTENT: dict[str, bool] = {
    "RegisterNode": True,
    "Heartbeat": True,
    "PublishChanges": True,
    "GetWatermarks": True,
    "PullChanges": True,
    "QueryStudies": True,
    "QuerySeries": True,
    "QueryInstances": True,
    "LocateInstances": True,
    "ListHoldings": True,
}
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # reconnect quickly to a replica that comes back instead of backing off for minutes
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]


def _rejected(exc: grpc.RpcError) -> CatalogRejected:
    code = exc.code()
    return CatalogRejected(f"{code.name}: {exc.details()}", code=code.name)


def open_channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    """A channel to a catalog replica: mTLS when credentials are given, plaintext otherwise
    (local development only, as the configuration says)."""
    if credentials is None:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)


class FailoverClient:
    """Channels to every replica and the failover of unary and streaming calls.

    Subclasses name their stub (``stub_type``) and which methods are safe to send again to
    another replica after an unknown outcome (``idempotent``).

    Parameters
    ----------
    addresses
        ``host:port`` of the replicas, in order of preference.
    timeout
        Deadline in seconds of each unary call (and of each replica attempt).
    stream_timeout
        Deadline in seconds of a whole streaming call (queries, pulls).
    credentials
        Channel credentials (mTLS); ``None`` means plaintext.
    token
        Researcher token, sent as ``authorization: Bearer <token>`` metadata.
    """

    stub_type: Callable[[grpc.Channel], Any] = pb_grpc.CatalogServiceStub
    idempotent: dict[str, bool] = IDEMPOTENT

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        timeout: float = 5.0,
        stream_timeout: float = 300.0,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("at least one catalog address is required")
        self.addresses = tuple(addresses)
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        self._credentials = credentials
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, Any] = {}
        self._other_stubs: dict[tuple[str, Any], Any] = {}
        self._preferred = 0
        self._lock = threading.Lock()

    # -- plumbing ------------------------------------------------------------------------------

    def _stub(self, address: str) -> Any:
        with self._lock:
            stub = self._stubs.get(address)
            if stub is None:
                channel = self._channels[address] = open_channel(address, self._credentials)
                stub = self._stubs[address] = type(self).stub_type(channel)
            return stub

    def _stub_of(self, address: str, stub_type: Callable[[grpc.Channel], Any]) -> Any:
        """A stub of another service on the same channel to ``address``."""
        self._stub(address)  # opens the channel
        with self._lock:
            stub = self._other_stubs.get((address, stub_type))
            if stub is None:
                stub = self._other_stubs[(address, stub_type)] = stub_type(self._channels[address])
            return stub

    def _order(self) -> list[int]:
        start = self._preferred
        return [(start + i) % len(self.addresses) for i in range(len(self.addresses))]

    def _unary(
        self,
        method: str,
        request: Any,
        timeout: float | None = None,
        idempotent: bool | None = None,
    ) -> Any:
        """One unary call with failover; ``idempotent`` overrides the per-method table."""
        errors: list[str] = []
        for index in self._order():
            address = self.addresses[index]
            call: Callable[..., Any] = getattr(self._stub(address), method)
            try:
                response = call(request, timeout=timeout or self.timeout, metadata=self._metadata)
            except grpc.RpcError as exc:
                if exc.code() not in FAILOVER_CODES:
                    raise _rejected(exc) from exc
                errors.append(f"{address}: {exc.code().name}")
                log.debug(
                    "event=catalog_failover method=%s replica=%s code=%s",
                    method,
                    address,
                    exc.code().name,
                )
                repeatable = self.idempotent[method] if idempotent is None else idempotent
                if not repeatable and exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                    break
                continue
            self._preferred = index
            return response
        raise CatalogUnavailable(f"no catalog replica answered {method}: {'; '.join(errors)}")

    def _stream(
        self, method: str, request: Any, stub: Callable[[str], Any] | None = None
    ) -> Iterator[Any]:
        errors: list[str] = []
        for index in self._order():
            address = self.addresses[index]
            call: Callable[..., Any] = getattr((stub or self._stub)(address), method)
            responses = call(request, timeout=self.stream_timeout, metadata=self._metadata)
            started = False
            try:
                for response in responses:
                    if not started:
                        started = True
                        self._preferred = index
                    yield response
                return
            except grpc.RpcError as exc:
                if exc.code() not in FAILOVER_CODES:
                    raise _rejected(exc) from exc
                if started:
                    raise CatalogUnavailable(
                        f"{method} from {address} broke off: {exc.code().name}"
                    ) from exc
                errors.append(f"{address}: {exc.code().name}")
            finally:
                responses.cancel()
        raise CatalogUnavailable(f"no catalog replica answered {method}: {'; '.join(errors)}")

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
            self._stubs.clear()
            self._other_stubs.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class GrpcCatalogClient(FailoverClient):
    """:class:`catalog.interfaces.CatalogClient` over gRPC, failing over between replicas."""

    # -- API -----------------------------------------------------------------------------------

    def register_node(self, node: NodeInfo) -> int:
        request = pb.RegisterNodeRequest()
        convert.node_to_pb(node, request.node)
        return int(self._unary("RegisterNode", request).high_water_mark)

    def heartbeat(self, name: str) -> int:
        return int(self._unary("Heartbeat", pb.HeartbeatRequest(node=name)).high_water_mark)

    def publish_changes(self, origin: str, changes: Sequence[Change]) -> PublishResult:
        request = pb.PublishChangesRequest(origin=origin)
        for change in changes:
            convert.change_to_pb(change, request.changes.add())
        response = self._unary("PublishChanges", request)
        return PublishResult(
            high_water_mark=response.high_water_mark,
            applied=response.applied,
            skipped=response.skipped,
        )

    def get_watermarks(self) -> Watermarks:
        response = self._unary("GetWatermarks", pb.GetWatermarksRequest())
        return Watermarks(
            replica=response.replica,
            marks={w.origin: w.seq for w in response.watermarks},
            nodes=tuple(convert.node_from_pb(n) for n in response.nodes),
        )

    def pull_changes(self, origin: str, after_seq: int, limit: int = 0) -> Iterator[Change]:
        request = pb.PullChangesRequest(origin=origin, after_seq=after_seq, limit=limit)
        for page in self._stream("PullChanges", request):
            for change in page.changes:
                yield convert.change_from_pb(change)

    def query_studies(self, query: QueryFilter) -> Iterator[StudyMatch]:
        request = pb.QueryStudiesRequest()
        convert.filter_to_pb(query, request.filter)
        for page in self._stream("QueryStudies", request):
            yield from (convert.study_from_pb(m) for m in page.matches)

    def query_series(self, query: QueryFilter) -> Iterator[SeriesMatch]:
        request = pb.QuerySeriesRequest()
        convert.filter_to_pb(query, request.filter)
        for page in self._stream("QuerySeries", request):
            yield from (convert.series_from_pb(m) for m in page.matches)

    def query_instances(self, query: QueryFilter) -> Iterator[InstanceMatch]:
        request = pb.QueryInstancesRequest()
        convert.filter_to_pb(query, request.filter)
        for page in self._stream("QueryInstances", request):
            yield from (convert.instance_from_pb(m) for m in page.matches)

    def locate_instances(
        self,
        *,
        study_instance_uids: Sequence[str] = (),
        series_instance_uids: Sequence[str] = (),
        sop_instance_uids: Sequence[str] = (),
        collections: Sequence[str] = (),
    ) -> Iterator[InstanceLocation]:
        request = pb.LocateInstancesRequest(
            study_instance_uids=list(study_instance_uids),
            series_instance_uids=list(series_instance_uids),
            sop_instance_uids=list(sop_instance_uids),
            collections=list(collections),
        )
        for page in self._stream("LocateInstances", request):
            yield from (convert.location_from_pb(loc) for loc in page.locations)

    def _holdings_stub(self, address: str) -> holdings_pb2_grpc.HoldingsServiceStub:
        stub: holdings_pb2_grpc.HoldingsServiceStub = self._stub_of(
            address, holdings_pb2_grpc.HoldingsServiceStub
        )
        return stub

    def list_holdings(
        self, period: Period, *, node: str = "", collections: Sequence[str] = ()
    ) -> Iterator[tuple[str, Held]]:
        """(node, instance) the catalog believes are held in ``period``."""
        request = holdings_pb2.ListHoldingsRequest(
            start_date=period.start_text,
            end_date=period.end_text,
            node=node,
            collections=list(collections),
        )
        for page in self._stream("ListHoldings", request, self._holdings_stub):
            yield from (held_from_pb(h) for h in page.holdings)
