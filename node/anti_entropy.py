"""Periodic anti-entropy: the node compares its grid-visible holdings with the catalog's
view of it and republishes what the catalog lost.

The month-end count comparison an administrator used to do by hand (query both sides for
the month, find the missing, copy them) runs here continuously for recent months. Only the
node's own side is repaired automatically: an instance the catalog lacks is re-enqueued to
the outbox. Instances the catalog attributes to this node but it no longer holds are only
counted in the log line: copying them back needs another holder, which is what
``gridpacs reconcile --repair`` arranges grid-wide.

To avoid republishing what the publisher simply has not sent yet, a pass republishes only
when the publisher had already sent everything up to the outbox position read before the
listings were taken.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime
from typing import Protocol

from catalog import CatalogError
from catalog.reconcile import Held, NodeReport, Period, compare_node
from node.index.errors import IndexUnavailable
from node.index.inventory import InventoryEntry, Requeued
from node.structlog import log_event

LOG = logging.getLogger("gridpacs.node.anti_entropy")


class OwnInventory(Protocol):
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

    def last_change_seq(self) -> int: ...


class CatalogView(Protocol):
    def list_holdings(
        self, period: Period, *, node: str = "", collections: Sequence[str] = ()
    ) -> Iterator[tuple[str, Held]]: ...


def held_of(entry: InventoryEntry) -> Held:
    return Held(
        sop_instance_uid=entry.sop_instance_uid,
        collection=entry.collection,
        study_instance_uid=entry.study_instance_uid,
        series_instance_uid=entry.series_instance_uid,
        sop_class_uid=entry.sop_class_uid,
        study_date=entry.study_date,
        received_at=entry.received_at,
    )


class AntiEntropy:
    """Background loop; :meth:`run_pass` is one pass (tests call it directly)."""

    def __init__(
        self,
        node: str,
        index: OwnInventory,
        catalog: CatalogView,
        *,
        publishable: Callable[[str], bool],
        published_up_to: Callable[[], int],
        nudge: Callable[[], None],
        interval: float,
        months: int = 2,
    ) -> None:
        self._node = node
        self._index = index
        self._catalog = catalog
        self._publishable = publishable
        self._published_up_to = published_up_to
        self._nudge = nudge
        self._interval = interval
        self._months = months
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0

    def start(self) -> None:
        if self._interval <= 0:
            return
        self._thread = threading.Thread(target=self._run, name="anti-entropy", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.run_pass()
            except (CatalogError, IndexUnavailable) as exc:
                log_event(LOG, "anti_entropy_deferred", level=logging.WARNING, node=self._node,
                          reason=str(exc))  # fmt: skip
            except Exception:
                LOG.exception("event=anti_entropy_error node=%s", self._node)

    def run_pass(self, today: date | None = None) -> list[NodeReport]:
        """Compare recent months and republish what the catalog lacks; one log line."""
        started = time.perf_counter()
        periods = Period.months_back(today or datetime.now(UTC).date(), self._months)
        reports: list[NodeReport] = []
        republished = 0
        for period in periods:
            outbox_mark = self._index.last_change_seq()
            mine = [
                held_of(e)
                for e in self._index.inventory(period.start_text, period.end_text,
                                               period.received_from, period.received_until)
                if self._publishable(e.collection)
            ]  # fmt: skip
            believed = [h for _, h in self._catalog.list_holdings(period, node=self._node)]
            report = compare_node(self._node, period, mine, believed)
            reports.append(report)
            if report.unpublished and self._published_up_to() >= outbox_mark:
                uids = [h.sop_instance_uid for h in report.unpublished]
                republished += len(self._index.republish(uids, self._publishable).enqueued)
        if republished:
            self._nudge()
        self.passes += 1
        log_event(
            LOG,
            "anti_entropy",
            node=self._node,
            periods=",".join(p.label for p in periods),
            node_by_study_date=sum(r.held.by_study_date for r in reports if r.held),
            catalog_by_study_date=sum(r.catalog.by_study_date for r in reports),
            node_by_received=sum(r.held.by_received for r in reports if r.held),
            catalog_by_received=sum(r.catalog.by_received for r in reports),
            unpublished=sum(len(r.unpublished) for r in reports),
            lost=sum(len(r.lost) for r in reports),
            republished=republished,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return reports
