"""Copies to this node what the catalog's replication plan assigns to it.

The catalog decides (per-collection factors, distinct sites, lost nodes: see
:mod:`catalog.placement.policy`); this loop only executes: ask ``PlanPulls`` for this node's
share, fetch each instance from the first holder that delivers a verified copy (PeerService,
SHA-256 checked), and store it through the normal ingest path — durable, indexed, and
published, which is how the catalog learns the new copy and stops planning it.

Privacy: collections this node may not publish (its identified default collection without
one trust domain) are declared refused in every request and never stored from a peer.
Failures never stop the loop: the catalog being unreachable backs the whole loop off, an
instance that no holder delivers is retried later with its own doubling backoff.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from catalog import CatalogError
from catalog.placement import PlannedPull, PlannedRemoval
from node.config import NodeConfig
from node.errors import NodeError
from node.index.records import InstanceRecord, RejectedInstance
from node.peer.client import PeerTransferError
from node.services.ingest import StoreRequest, StoreResult
from node.structlog import log_event

LOG = logging.getLogger("gridpacs.node.replicator")
CALLING_AE = "GRIDREPLICA"
"""Recorded as the calling AE title of copies made by replication."""
COPIED, HELD, FAILED = "copied", "held", "failed"
"""Outcomes of one planned pull (held: a copy is already here, not yet published)."""


def replication_status_file(config: NodeConfig) -> Path:
    """Where a node's replicator leaves its progress for ``gridpacs node status``."""
    return config.data_dir / "replication-status.json"


def read_replication_status(path: Path) -> dict[str, Any] | None:
    """The last progress written by the replicator, or None (never ran, unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class PlanSource(Protocol):
    def plan_pulls(
        self, node: str, *, refused_collections: Collection[str] = (), limit: int = 0
    ) -> list[PlannedPull]: ...

    def plan_removals(self, node: str, *, limit: int = 0) -> list[PlannedRemoval]: ...


class PeerFetcher(Protocol):
    def fetch(self, address: str, sop_instance_uid: str) -> bytes: ...


class LocalIndex(Protocol):
    def get_record(self, sop_instance_uid: str) -> InstanceRecord | None: ...


class Ingest(Protocol):
    def store(self, request: StoreRequest, *, collection: str) -> StoreResult: ...


@dataclass
class ReplicationStats:
    """Counters since start (read by tests and logged every round)."""

    rounds: int = 0
    planned: int = 0
    copied: int = 0
    copied_bytes: int = 0
    failed: int = 0
    refused: int = 0
    removed: int = 0
    """Copies removed because the grid rejected them (PlanRemovals)."""


class Replicator:
    """Background loop: PlanPulls → fetch from a holder → ingest, with bounded concurrency."""

    def __init__(
        self,
        node: str,
        ae_title: str,
        plans: PlanSource,
        peers: PeerFetcher,
        ingest: Ingest,
        local: LocalIndex,
        *,
        publishable: Callable[[str], bool],
        refused_collections: Collection[str] = (),
        interval: float = 10.0,
        concurrency: int = 4,
        batch_size: int = 200,
        max_backoff: float = 60.0,
        on_stored: Callable[[], None] = lambda: None,
        status_file: Path | None = None,
        reject: Callable[[list[RejectedInstance]], object] | None = None,
    ) -> None:
        self._node = node
        self._ae_title = ae_title
        self._plans = plans
        self._peers = peers
        self._ingest = ingest
        self._local = local
        self._publishable = publishable
        self._refused = tuple(sorted(refused_collections))
        self._interval = interval
        self._batch = batch_size
        self._max_backoff = max_backoff
        self._on_stored = on_stored
        self._status_file = status_file
        self._reject = reject
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="replica")
        self._retry_at: dict[str, tuple[float, float]] = {}  # uid -> (monotonic due, delay)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.stats = ReplicationStats()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="replicator", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        backoff = self._interval
        while not self._stop.is_set():
            try:
                busy = self.run_once()
                backoff = self._interval
            except CatalogError as exc:
                log_event(LOG, "replication_deferred", level=logging.WARNING, reason=str(exc),
                          retry_in_s=round(backoff, 2))  # fmt: skip
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            except Exception:
                LOG.exception("event=replicator_error")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            if not busy:
                self._stop.wait(self._interval)

    def run_once(self) -> bool:
        """One round; True when something was copied or removed (more may be waiting)."""
        removed = self.remove_rejected()
        return self._pull() or removed > 0

    def remove_rejected(self) -> int:
        """Remove (and record as rejected) the copies the grid rejected; how many."""
        if self._reject is None:
            return 0
        removals = self._plans.plan_removals(self._node, limit=self._batch)
        if not removals:
            return 0
        self._reject(
            [
                RejectedInstance(
                    sop_instance_uid=r.sop_instance_uid,
                    collection=r.collection,
                    study_instance_uid=r.study_instance_uid,
                    series_instance_uid=r.series_instance_uid,
                    reason=r.reason,
                    rejected_by=f"grid:{r.rejected_by}",
                )
                for r in removals
            ]
        )
        with self._lock:
            self.stats.removed += len(removals)
        self._on_stored()  # publish the removals
        return len(removals)

    def _pull(self) -> bool:
        pulls = self._plans.plan_pulls(
            self._node, refused_collections=self._refused, limit=self._batch
        )
        now = time.monotonic()
        due = [p for p in pulls if self._retry_at.get(p.holding.sop_instance_uid, (0.0,))[0] <= now]
        if not due:
            return False
        started = time.perf_counter()
        outcomes = list(self._pool.map(self._copy, due))
        copied = outcomes.count(COPIED)
        with self._lock:
            self.stats.rounds += 1
            self.stats.planned += len(due)
        log_event(LOG, "replication_round", planned=len(pulls), attempted=len(due), copied=copied,
                  held=outcomes.count(HELD), failed=outcomes.count(FAILED),
                  ms=round((time.perf_counter() - started) * 1000, 1),
                  **{f"total_{k}": v for k, v in asdict(self.stats).items()})  # fmt: skip
        self._write_status({"planned": len(pulls), "attempted": len(due), "copied": copied})
        return copied > 0

    def _write_status(self, last_round: dict[str, int]) -> None:
        """Progress for ``gridpacs node status`` (a separate process): replaced atomically."""
        if self._status_file is None:
            return
        with self._lock:
            report: dict[str, Any] = {
                **asdict(self.stats),
                "waiting_retry": len(self._retry_at),
                "last_round": last_round,
                "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        partial = self._status_file.with_suffix(".tmp")
        try:
            partial.write_text(json.dumps(report))
            os.replace(partial, self._status_file)
        except OSError as exc:
            log_event(LOG, "replication_status_unwritable", level=logging.WARNING, reason=str(exc))

    def _copy(self, pull: PlannedPull) -> str:
        holding = pull.holding
        uid = holding.sop_instance_uid
        if not self._publishable(holding.collection):
            # never take data this site may not publish: it would stay here unannounced
            with self._lock:
                self.stats.refused += 1
            log_event(LOG, "replica_refused", level=logging.WARNING, sop_instance_uid=uid,
                      collection=holding.collection, reason="not publishable here")  # fmt: skip
            self._failed(uid)
            return FAILED
        if self._local.get_record(uid) is not None:
            return HELD  # copied already; the catalog learns it when the publisher runs
        errors: list[str] = []
        for source in pull.sources:
            try:
                data = self._peers.fetch(source.peer_address, uid)
            except PeerTransferError as exc:
                errors.append(str(exc))
                continue
            request = StoreRequest(
                data=data,
                calling_ae=CALLING_AE,
                called_ae=self._ae_title,
                affected_sop_class_uid=holding.sop_class_uid,
                affected_sop_instance_uid=uid,
            )
            try:
                self._ingest.store(request, collection=holding.collection)
            except NodeError as exc:  # refused (quarantined) or storage failed
                errors.append(f"{source.node}: not stored: {exc}")
                continue
            with self._lock:
                self.stats.copied += 1
                self.stats.copied_bytes += len(data)
                self._retry_at.pop(uid, None)
            log_event(LOG, "replica_copied", sop_instance_uid=uid, collection=holding.collection,
                      source=source.node, bytes=len(data), copies_before=pull.copies,
                      factor=pull.factor)  # fmt: skip
            self._on_stored()
            return COPIED
        delay = self._failed(uid)
        log_event(LOG, "replica_failed", level=logging.WARNING, sop_instance_uid=uid,
                  collection=holding.collection, retry_in_s=round(delay, 1),
                  reason="; ".join(errors) or "no source")  # fmt: skip
        return FAILED

    def _failed(self, uid: str) -> float:
        with self._lock:
            self.stats.failed += 1
            _, previous = self._retry_at.get(uid, (0.0, 0.0))
            delay = min(max(previous * 2, self._interval), self._max_backoff)
            self._retry_at[uid] = (time.monotonic() + delay, delay)
            return delay
