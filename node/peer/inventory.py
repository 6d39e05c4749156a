"""``gridpacs.node.v1.InventoryService``: this node's side of reconciliation.

Served on the peer gRPC server (same port, same mTLS). It answers only for collections
that may leave the site (the publisher's policy): a node's identified local data is not
part of the grid's expected counts and is never listed, republished or pulled. The
repairs (Republish, Retract, Pull) need a grid *host* certificate; on an explicitly
insecure grid there are no certificates to check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

import grpc

from catalog.security.pki import UNIT_HOST
from catalog.security.tls import peer_identity
from node.errors import NodeError
from node.index.errors import IndexUnavailable
from node.index.inventory import InventoryEntry, Requeued
from node.index.records import InstanceRecord
from node.services.ingest import StoreRequest, StoreResult
from node.structlog import log_event
from node.v1 import inventory_pb2 as pb
from node.v1 import inventory_pb2_grpc as pb_grpc

LOG = logging.getLogger("gridpacs.node.inventory")
PAGE = 1000
MAX_ITEMS = 10_000
MAX_DAYS = 366
PULL_CALLING_AE = "GRIDPULL"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RETRACT_REFUSED = "every instance needs a UID and a collection that leaves the site"
PULL_REFUSED = "this collection may not be held for the grid here"


class Inventory(Protocol):
    def inventory(
        self,
        start_date: str,
        end_date: str,
        received_from: datetime,
        received_until: datetime,
        collections: Sequence[str] | None = None,
    ) -> Iterator[InventoryEntry]: ...

    def republish(
        self, sop_instance_uids: Sequence[str], allowed: Callable[[str], bool]
    ) -> Requeued: ...

    def retract(self, instances: Sequence[tuple[str, str]]) -> Requeued: ...

    def get_record(self, sop_instance_uid: str) -> InstanceRecord | None: ...


class Fetcher(Protocol):
    def fetch(self, address: str, sop_instance_uid: str) -> bytes: ...


class Storer(Protocol):
    def store(self, request: StoreRequest, *, collection: str) -> StoreResult: ...


def micros(moment: datetime | None) -> int:
    if moment is None:
        return 0
    delta = moment.astimezone(UTC) - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _day(text: str) -> datetime:
    return datetime.strptime(text, "%Y%m%d").replace(tzinfo=UTC)


class InventoryServicer(pb_grpc.InventoryServiceServicer):
    """Lists and repairs this node's grid-visible holdings."""

    def __init__(
        self,
        index: Inventory,
        *,
        publishable: Callable[[str], bool],
        ingest: Storer,
        peers: Fetcher,
        ae_title: str,
        changed: Callable[[], None] = lambda: None,
        require_host: bool = True,
    ) -> None:
        self._index = index
        self._publishable = publishable
        self._ingest = ingest
        self._peers = peers
        self._ae_title = ae_title
        self._changed = changed
        self._require_host = require_host

    # -- reads -------------------------------------------------------------------------------

    def ListInstances(
        self, request: pb.ListInstancesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ListInstancesResponse]:
        try:
            start, end = _day(request.start_date), _day(request.end_date)
        except ValueError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "dates are YYYYMMDD")
        if end < start or (end - start).days > MAX_DAYS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"end_date must follow start_date, at most {MAX_DAYS} days")  # fmt: skip
        wanted = [c for c in request.collections if self._publishable(c)] or None
        if request.collections and wanted is None:
            return  # only collections that may not leave the site were asked for
        entries = self._index.inventory(request.start_date, request.end_date, start,
                                        end + timedelta(days=1), wanted)  # fmt: skip
        page = pb.ListInstancesResponse()
        try:
            for entry in entries:
                if not self._publishable(entry.collection):
                    continue
                page.items.add(
                    sop_instance_uid=entry.sop_instance_uid,
                    study_instance_uid=entry.study_instance_uid,
                    series_instance_uid=entry.series_instance_uid,
                    sop_class_uid=entry.sop_class_uid,
                    collection=entry.collection,
                    study_date=entry.study_date,
                    received_at_us=micros(entry.received_at),
                )
                if len(page.items) >= PAGE:
                    yield page
                    page = pb.ListInstancesResponse()
        except IndexUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if page.items:
            yield page

    # -- repairs -----------------------------------------------------------------------------

    def Republish(
        self, request: pb.RepublishRequest, context: grpc.ServicerContext
    ) -> pb.RepublishResponse:
        self._check_host(context, "Republish", len(request.sop_instance_uids))
        try:
            done = self._index.republish(list(request.sop_instance_uids), self._publishable)
        except IndexUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        self._changed()
        log_event(LOG, "republished", enqueued=len(done.enqueued), not_found=len(done.skipped),
                  caller=_caller(context))  # fmt: skip
        return pb.RepublishResponse(enqueued=len(done.enqueued), not_found=list(done.skipped))

    def Retract(
        self, request: pb.RetractRequest, context: grpc.ServicerContext
    ) -> pb.RetractResponse:
        self._check_host(context, "Retract", len(request.instances))
        refs = [(i.sop_instance_uid, i.collection) for i in request.instances]
        if any(not uid or not self._publishable(coll) for uid, coll in refs):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, RETRACT_REFUSED)
        try:
            done = self._index.retract(refs)
        except IndexUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        self._changed()
        log_event(LOG, "retracted", enqueued=len(done.enqueued), still_held=len(done.skipped),
                  caller=_caller(context))  # fmt: skip
        return pb.RetractResponse(enqueued=len(done.enqueued), still_held=list(done.skipped))

    def Pull(
        self, request: pb.PullRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.PullProgress]:
        self._check_host(context, "Pull", len(request.items))
        copied = failed = 0
        for item in request.items:
            progress = self._pull_one(item)
            copied += progress.ok
            failed += not progress.ok
            yield progress
        if copied:
            self._changed()
        log_event(LOG, "pulled", copied=copied, failed=failed, caller=_caller(context))

    def _pull_one(self, item: pb.PullItem) -> pb.PullProgress:
        uid = item.sop_instance_uid
        if not uid or not self._publishable(item.collection):
            return pb.PullProgress(sop_instance_uid=uid, ok=False, error=PULL_REFUSED)
        try:
            if self._index.get_record(uid) is not None:
                return pb.PullProgress(sop_instance_uid=uid, ok=True, source="local")
        except IndexUnavailable as exc:
            return pb.PullProgress(sop_instance_uid=uid, ok=False, error=str(exc))
        errors = []
        for source in item.sources:
            try:
                data = self._peers.fetch(source, uid)
                self._ingest.store(
                    StoreRequest(data=data, calling_ae=PULL_CALLING_AE, called_ae=self._ae_title,
                                 affected_sop_class_uid=item.sop_class_uid,
                                 affected_sop_instance_uid=uid),
                    collection=item.collection,
                )  # fmt: skip
            except NodeError as exc:
                errors.append(f"{source}: {exc}")
                continue
            log_event(LOG, "instance_pulled", sop_instance_uid=uid, source=source,
                      collection=item.collection)  # fmt: skip
            return pb.PullProgress(sop_instance_uid=uid, ok=True, source=source)
        error = "; ".join(errors) or "no source given"
        log_event(LOG, "pull_failed", level=logging.WARNING, sop_instance_uid=uid, error=error)
        return pb.PullProgress(sop_instance_uid=uid, ok=False, error=error)

    def _check_host(self, context: grpc.ServicerContext, method: str, size: int) -> None:
        if size > MAX_ITEMS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_ITEMS} per call")
        if not self._require_host:
            return
        identity = peer_identity(context)
        if identity is None or identity.organizational_unit != UNIT_HOST:
            log_event(LOG, "inventory_refused", level=logging.WARNING, method=method,
                      caller=_caller(context))  # fmt: skip
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          "repairs need a grid host certificate")  # fmt: skip


def _caller(context: grpc.ServicerContext) -> str:
    identity = peer_identity(context)
    return identity.label if identity is not None else context.peer()
