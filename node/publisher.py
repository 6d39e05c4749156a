"""Drains the index outbox to the catalog: what this node holds becomes findable grid-wide.

Ingest never waits for the catalog. Changes are already durable in the outbox (same
transaction as the index row), so a catalog that is down only delays publication; the
publisher retries with backoff and resumes from what the answering replica acknowledged.

Privacy: only de-identified (research) collections leave the site, unless the node's
configuration declares the grid one trust domain (``publish_identified``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from catalog import CatalogError, CatalogRejected, NodeInfo, PublishResult
from catalog import Change as CatalogChange
from catalog import ChangeKind as CatalogChangeKind
from catalog import InstanceRecord as CatalogRecord
from node.index.records import Change, ChangeKind
from node.structlog import log_event

LOG = logging.getLogger("gridpacs.node.publisher")

_KINDS = {
    ChangeKind.INSTANCE_ADDED: CatalogChangeKind.INSTANCE_ADDED,
    ChangeKind.INSTANCE_DELETED: CatalogChangeKind.INSTANCE_DELETED,
    ChangeKind.STORE_RESET: CatalogChangeKind.STORE_RESET,
    ChangeKind.INSTANCE_REJECTED: CatalogChangeKind.INSTANCE_REJECTED,
}


class Outbox(Protocol):
    def changes_since(self, after_seq: int, limit: int) -> list[Change]: ...

    def last_change_seq(self) -> int: ...

    def rebase_outbox(self, above_seq: int) -> int: ...


class PublishTarget(Protocol):
    def register_node(self, node: NodeInfo) -> int: ...

    def heartbeat(self, name: str) -> int: ...

    def publish_changes(self, origin: str, changes: Sequence[CatalogChange]) -> PublishResult: ...


def to_catalog_change(change: Change) -> CatalogChange:
    """The node's outbox row as the catalog's wire-level value."""
    if change.kind is ChangeKind.STORE_RESET:
        return CatalogChange(seq=change.seq, kind=CatalogChangeKind.STORE_RESET, record=None)
    record = CatalogRecord(**{f.name: getattr(change.record, f.name) for f in
                              dataclasses.fields(change.record)})  # fmt: skip
    return CatalogChange(
        seq=change.seq, kind=_KINDS[change.kind], record=record, reason=change.reason
    )


class Publisher:
    """Background loop: outbox → catalog, resuming from the replica's high-water mark.

    Two cursors keep it correct across fail-over without rescanning forever: ``_mark`` is
    what the answering replica has of this origin, ``_scanned`` the last outbox row looked
    at. Between them there are only rows this node does not publish. If a replica answers
    with a lower mark (fail-over to one that lagged), scanning restarts from its mark.
    """

    def __init__(
        self,
        outbox: Outbox,
        target: PublishTarget,
        node: NodeInfo,
        *,
        publishable: Callable[[str], bool],
        batch_size: int = 500,
        interval: float = 0.5,
        max_backoff: float = 10.0,
    ) -> None:
        self._outbox = outbox
        self._target = target
        self._node = node
        self._publishable = publishable
        self._batch = batch_size
        self._interval = interval
        self._max_backoff = max_backoff
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._registered = False
        self._mark = -1
        self._scanned = 0
        self.published = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def sent_up_to(self) -> int:
        """Every outbox row up to this seq was acknowledged by a replica or is unpublishable
        (anti-entropy republishes only below it, so it never races the publisher)."""
        return self._scanned if self._mark >= 0 else -1

    def nudge(self) -> None:
        """Publish soon (called after ingest) instead of waiting for the interval."""
        self._wake.set()

    def _run(self) -> None:
        backoff = self._interval
        while not self._stop.is_set():
            try:
                busy = self.publish_once()
                backoff = self._interval
            except CatalogError as exc:
                if isinstance(exc, CatalogRejected):
                    self._registered = False  # e.g. a fresh replica that does not know us
                log_event(LOG, "publish_deferred", level=logging.WARNING, reason=str(exc),
                          retry_in_s=round(backoff, 2))  # fmt: skip
                busy = False
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            except Exception:
                LOG.exception("event=publisher_error")
                busy = False
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            if not busy:
                self._wake.wait(self._interval)
                self._wake.clear()

    def publish_once(self) -> bool:
        """Publish one batch; returns True when more may be waiting."""
        mark = self._sync_mark()
        changes = self._outbox.changes_since(self._scanned, self._batch)
        if not changes:
            return False
        wanted = [to_catalog_change(c) for c in changes if self._publishes(c)]
        if wanted:
            result = self._target.publish_changes(self._node.name, wanted)
            self._mark = max(mark, result.high_water_mark)
            self.published += result.applied
            log_event(LOG, "published", changes=len(wanted), applied=result.applied,
                      high_water_mark=result.high_water_mark)  # fmt: skip
        self._scanned = changes[-1].seq
        return len(changes) == self._batch

    def _publishes(self, change: Change) -> bool:
        return change.kind is ChangeKind.STORE_RESET or self._publishable(change.record.collection)

    def _sync_mark(self) -> int:
        if not self._registered:
            mark = self._target.register_node(self._node)
            self._registered = True
        else:
            mark = self._target.heartbeat(self._node.name)
        if mark > self._outbox.last_change_seq():
            # the catalog has changes of ours this store never made: our disk was emptied
            # (or restored from an older copy); restart its view of us from what is here
            reset = self._outbox.rebase_outbox(mark)
            log_event(LOG, "store_reset", level=logging.WARNING, catalog_mark=mark,
                      reset_seq=reset)  # fmt: skip
            self._scanned = mark
        if mark < self._mark or self._mark < 0:
            # first contact, or a replica that has less of us than we thought: resume there
            self._scanned = mark
        self._mark = mark
        return mark
