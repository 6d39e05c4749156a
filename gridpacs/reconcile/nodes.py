"""A typed client of the nodes' ``InventoryService`` (one channel per node address)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc

from catalog.reconcile import Held, Period
from node.v1 import inventory_pb2 as pb
from node.v1 import inventory_pb2_grpc as pb_grpc

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BATCH = 1000
"""Instances per repair call (the node accepts up to 10,000)."""


class NodeUnreachable(Exception):
    """A node did not answer (or refused) an inventory call; the message says which."""


@dataclass(frozen=True, slots=True)
class Pulled:
    """One instance a node was asked to copy: from where, or why it could not."""

    sop_instance_uid: str
    ok: bool
    source: str
    error: str


def _held(item: pb.InventoryItem) -> Held:
    received = None
    if item.received_at_us:
        received = EPOCH + timedelta(microseconds=item.received_at_us)
    return Held(
        sop_instance_uid=item.sop_instance_uid,
        collection=item.collection,
        study_instance_uid=item.study_instance_uid,
        series_instance_uid=item.series_instance_uid,
        sop_class_uid=item.sop_class_uid,
        study_date=item.study_date,
        received_at=received,
    )


class InventoryClient:
    """Lists a node's holdings and asks it for repairs; gRPC errors become
    :class:`NodeUnreachable` naming the address and the status."""

    def __init__(
        self, credentials: grpc.ChannelCredentials | None, *, timeout: float = 300.0
    ) -> None:
        self._credentials = credentials
        self._timeout = timeout
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def _stub(self, address: str) -> pb_grpc.InventoryServiceStub:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                if self._credentials is None:
                    channel = grpc.insecure_channel(address)
                else:
                    channel = grpc.secure_channel(address, self._credentials)
                self._channels[address] = channel
        return pb_grpc.InventoryServiceStub(channel)

    def list_instances(
        self, address: str, period: Period, collections: Sequence[str] = ()
    ) -> list[Held]:
        request = pb.ListInstancesRequest(
            start_date=period.start_text, end_date=period.end_text, collections=collections
        )
        try:
            pages = self._stub(address).ListInstances(request, timeout=self._timeout)
            return [_held(item) for page in pages for item in page.items]
        except grpc.RpcError as exc:
            raise _unreachable(address, exc) from exc

    def republish(self, address: str, uids: Sequence[str]) -> tuple[int, list[str]]:
        """How many were re-enqueued, and the UIDs the node does not hold."""
        enqueued, missing = 0, []
        for start in range(0, len(uids), BATCH):
            request = pb.RepublishRequest(sop_instance_uids=uids[start : start + BATCH])
            try:
                response = self._stub(address).Republish(request, timeout=self._timeout)
            except grpc.RpcError as exc:
                raise _unreachable(address, exc) from exc
            enqueued += response.enqueued
            missing += list(response.not_found)
        return enqueued, missing

    def retract(self, address: str, items: Sequence[Held]) -> tuple[int, list[str]]:
        """How many deletions were enqueued, and the UIDs the node holds after all."""
        enqueued, held = 0, []
        for start in range(0, len(items), BATCH):
            request = pb.RetractRequest(
                instances=[
                    pb.InstanceRef(sop_instance_uid=h.sop_instance_uid, collection=h.collection)
                    for h in items[start : start + BATCH]
                ]
            )
            try:
                response = self._stub(address).Retract(request, timeout=self._timeout)
            except grpc.RpcError as exc:
                raise _unreachable(address, exc) from exc
            enqueued += response.enqueued
            held += list(response.still_held)
        return enqueued, held

    def pull(self, address: str, items: Sequence[tuple[Held, Sequence[str]]]) -> Iterator[Pulled]:
        """Ask the node at ``address`` to copy each instance from the given peer addresses;
        yields as each one is done."""
        for start in range(0, len(items), BATCH):
            request = pb.PullRequest(
                items=[
                    pb.PullItem(
                        sop_instance_uid=h.sop_instance_uid,
                        sop_class_uid=h.sop_class_uid,
                        collection=h.collection,
                        sources=list(sources),
                    )
                    for h, sources in items[start : start + BATCH]
                ]
            )
            try:
                for done in self._stub(address).Pull(request, timeout=self._timeout):
                    yield Pulled(done.sop_instance_uid, done.ok, done.source, done.error)
            except grpc.RpcError as exc:
                raise _unreachable(address, exc) from exc

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()

    def __enter__(self) -> InventoryClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _unreachable(address: str, exc: grpc.RpcError) -> NodeUnreachable:
    return NodeUnreachable(f"{address}: {exc.code().name} {exc.details()}")
