"""The node's client of ``ReplicationService``, failing over between catalog replicas.

PlanPulls is read-only, so any replica may answer and a failed call is simply sent to the
next one; gRPC errors become :class:`CatalogUnavailable` / :class:`CatalogRejected` here.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from typing import Any

import grpc

from catalog.client import FAILOVER_CODES, open_channel
from catalog.errors import CatalogRejected, CatalogUnavailable
from catalog.placement.policy import Holding, PlannedPull, PlannedRemoval, PullSource
from catalog.v1 import replication_pb2 as pb
from catalog.v1 import replication_pb2_grpc as pb_grpc


def pull_from_pb(message: pb.PlannedPull) -> PlannedPull:
    return PlannedPull(
        holding=Holding(
            collection=message.collection,
            sop_instance_uid=message.sop_instance_uid,
            holders=tuple(s.node for s in message.sources),
            sop_class_uid=message.sop_class_uid,
            study_instance_uid=message.study_instance_uid,
            series_instance_uid=message.series_instance_uid,
            size=message.size,
        ),
        sources=tuple(PullSource(s.node, s.peer_address) for s in message.sources),
        factor=message.factor,
        copies=message.copies,
    )


class GrpcPlacementClient:
    """``plan_pulls`` against the first replica that answers (preferring the last good one)."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        timeout: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("at least one catalog address is required")
        self.addresses = tuple(addresses)
        self._timeout = timeout
        self._credentials = credentials
        self._channels: dict[str, grpc.Channel] = {}
        self._preferred = 0
        self._lock = threading.Lock()
        self._announcements: list[grpc.Future] = []

    def _stub(self, address: str) -> pb_grpc.ReplicationServiceStub:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = open_channel(address, self._credentials)
        return pb_grpc.ReplicationServiceStub(channel)

    def plan_pulls(
        self, node: str, *, refused_collections: Collection[str] = (), limit: int = 0
    ) -> list[PlannedPull]:
        request = pb.PlanPullsRequest(
            node=node, refused_collections=sorted(refused_collections), limit=limit
        )
        address, response = self._first_answer("PlanPulls", request)
        self._announce(request, skip=address)
        return [pull_from_pb(p) for p in response.pulls]

    def plan_removals(self, node: str, *, limit: int = 0) -> list[PlannedRemoval]:
        """The copies ``node`` must remove (rejected grid-wide), from the first replica that
        answers."""
        _address, response = self._first_answer(
            "PlanRemovals", pb.PlanRemovalsRequest(node=node, limit=limit)
        )
        return [
            PlannedRemoval(
                sop_instance_uid=r.sop_instance_uid,
                collection=r.collection,
                study_instance_uid=r.study_instance_uid,
                series_instance_uid=r.series_instance_uid,
                reason=r.reason,
                rejected_by=r.rejected_by,
            )
            for r in response.removals
        ]

    def count_copies(self, collection: str, sop_instance_uids: Sequence[str]) -> dict[str, int]:
        """Distinct sites holding a live copy of each instance (1,000 UIDs per call)."""
        counted: dict[str, int] = {}
        uids = list(sop_instance_uids)
        for start in range(0, len(uids), 1000):
            request = pb.CountCopiesRequest(
                collection=collection, sop_instance_uids=uids[start : start + 1000]
            )
            _address, response = self._first_answer("CountCopies", request)
            counted.update((i.sop_instance_uid, i.copies) for i in response.instances)
        return counted

    def _first_answer(self, method: str, request: Any) -> tuple[str, Any]:
        """``method`` on the first replica that answers, preferring the last good one;
        that replica's address and its response."""
        errors: list[str] = []
        count = len(self.addresses)
        for step in range(count):
            index = (self._preferred + step) % count
            address = self.addresses[index]
            try:
                call = getattr(self._stub(address), method)
                response = call(request, timeout=self._timeout)
            except grpc.RpcError as exc:
                if exc.code() not in FAILOVER_CODES:
                    raise CatalogRejected(
                        f"{exc.code().name}: {exc.details()}", code=exc.code().name
                    ) from exc
                errors.append(f"{address}: {exc.code().name}")
                continue
            self._preferred = index
            return address, response
        raise CatalogUnavailable(f"no catalog replica answered {method}: {'; '.join(errors)}")

    def _announce(self, request: pb.PlanPullsRequest, *, skip: str) -> None:
        """Tell the other replicas our refusals, without waiting (errors are ignored: the
        next round tries again)."""
        note = pb.PlanPullsRequest(
            node=request.node, refused_collections=request.refused_collections, announce_only=True
        )
        self._announcements = [
            self._stub(address).PlanPulls.future(note, timeout=min(self._timeout, 2.0))
            for address in self.addresses
            if address != skip
        ]

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
