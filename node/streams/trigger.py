"""Association end → one job per study (MagickBox: the called AE title picks the stream).

Instances sent to a stream's AE title are stored like any C-STORE first. When the
association is released, each study it delivered becomes one job: the request is written
to a pending file (fsynced) before anything else, then a background thread hands it to the
catalog's JobService and deletes the file once accepted. A catalog that is down only
delays the job; a node restarted meanwhile submits it at start. An aborted association
submits nothing (the sender did not finish; it resends, or an operator submits the study
with ``gridpacs jobs submit``) — that is logged.

The catalog must know the study before it can place the job near the data, so a request
waits (bounded) until the publisher has published the outbox up to the last instance of
the association.

A study in a collection that may not leave the site is submitted by its reference
(:mod:`node.streams.references`), never by its UID. The pending file keeps the UID (it
stays on this node); the reference is made, and remembered, when the request is sent,
so a request persisted by an older version is submitted the same way.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

from catalog import CatalogError, CatalogRejected
from node.index import IndexFailure
from node.structlog import log_event

LOG = logging.getLogger("gridpacs.node.streams.trigger")


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What the trigger asks the scheduler for: the stream run on these studies."""

    stream: str
    study_instance_uids: tuple[str, ...]
    collection: str
    origin_node: str
    reply_ae_title: str
    after_change_seq: int = 0
    """The node's outbox position the catalog must have before placing (0 = none)."""
    request_id: str = ""
    """Unique per request, so a submission resent after a lost reply queues nothing twice."""


class JobSubmitter(Protocol):
    """The scheduler as the trigger sees it; returns the ids of the jobs created.

    Raises :class:`catalog.CatalogUnavailable` (retried) or
    :class:`catalog.CatalogRejected` (given up, logged).
    """

    def submit(self, request: JobRequest) -> list[str]: ...


@dataclass
class _Delivery:
    calling_ae: str
    studies: dict[tuple[str, str], list[str]]  # (stream, collection) -> study UIDs in order


class StreamTrigger:
    """Collects what each association stored to stream AE titles; submits at its end."""

    def __init__(
        self,
        submitter: JobSubmitter,
        pending_dir: Path,
        *,
        origin_node: str,
        outbox_position: Callable[[], int] = lambda: 0,
        published_through: Callable[[], int] | None = None,
        publish_wait: float = 15.0,
        retry_interval: float = 2.0,
        refusal_grace: float = 120.0,
        name_study: Callable[[str, str], str] | None = None,
    ) -> None:
        """``name_study(collection, uid)`` is what the catalog is told instead of ``uid``
        (a study reference for a collection that may not leave the site); None: the UID."""
        self._submitter = submitter
        self._pending = pending_dir
        self._failed = pending_dir / "failed"
        self._origin = origin_node
        self._position = outbox_position
        self._published = published_through
        self._publish_wait = publish_wait
        self._retry = retry_interval
        self._refusal_grace = refusal_grace
        self._name_study = name_study
        self._open: dict[int, _Delivery] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.submitted: deque[str] = deque(maxlen=1000)
        """Ids of the latest jobs submitted (for status and tests; bounded)."""

    # -- called from association threads ------------------------------------------------------
    def stored(
        self,
        association: int,
        *,
        stream: str,
        study_instance_uid: str,
        collection: str,
        calling_ae: str,
    ) -> None:
        """An instance of ``study_instance_uid`` was stored durably through ``stream``'s AE."""
        with self._lock:
            delivery = self._open.setdefault(association, _Delivery(calling_ae, {}))
            studies = delivery.studies.setdefault((stream, collection), [])
            if study_instance_uid not in studies:
                studies.append(study_instance_uid)

    def ended(self, association: int, *, released: bool) -> list[JobRequest]:
        """The association is over: persist one request per stream (one job per study)."""
        with self._lock:
            delivery = self._open.pop(association, None)
        if delivery is None:
            return []
        if not released:
            for (stream, _), uids in delivery.studies.items():
                log_event(
                    LOG,
                    "stream_trigger_skipped",
                    level=logging.WARNING,
                    stream=stream,
                    studies=len(uids),
                    calling_ae=delivery.calling_ae,
                    reason="association aborted; instances kept, no job submitted",
                )
            return []
        position = self._position()
        requests = [
            JobRequest(
                stream,
                tuple(uids),
                collection,
                self._origin,
                delivery.calling_ae,
                position,
                request_id=f"{self._origin}/{uuid.uuid4()}",
            )
            for (stream, collection), uids in delivery.studies.items()
        ]
        for request in requests:
            self._persist(request)
        self._wake.set()
        return requests

    # -- the durable queue ----------------------------------------------------------------------
    def _persist(self, request: JobRequest) -> Path:
        self._pending.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        tmp = self._pending / f".{name}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(asdict(request), fh)
            fh.flush()
            os.fsync(fh.fileno())
        path = self._pending / name
        os.replace(tmp, path)
        dir_fd = os.open(self._pending, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        log_event(
            LOG,
            "stream_triggered",
            stream=request.stream,
            studies=len(request.study_instance_uids),
            calling_ae=request.reply_ae_title,
            pending=path.name,
        )
        return path

    def pending(self) -> list[Path]:
        if not self._pending.is_dir():
            return []
        return sorted(p for p in self._pending.glob("*.json") if p.is_file())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="stream-trigger", daemon=True)
        self._thread.start()
        self._wake.set()  # requests left by a previous run

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._retry)
            self._wake.clear()
            for path in self.pending():
                if self._stop.is_set() or not self.submit_pending(path):
                    break  # catalog unavailable: keep order, retry later

    def submit_pending(self, path: Path) -> bool:
        """Submit one pending request; False when the catalog could not be reached."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            data["study_instance_uids"] = tuple(data["study_instance_uids"])
            request = JobRequest(**data)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            self._give_up(path, f"unreadable pending request: {exc}")
            return True
        self._wait_published(request.after_change_seq)
        try:
            request = self._named(request)
        except IndexFailure as exc:
            log_event(
                LOG,
                "stream_submit_deferred",
                level=logging.WARNING,
                stream=request.stream,
                reason=f"study reference not recorded: {exc}",
            )
            return False
        try:
            ids = self._submitter.submit(request)
        except CatalogRejected as exc:
            if _age(path) < self._refusal_grace:
                # e.g. "no node offers stream": right after start no worker has reported yet
                log_event(
                    LOG,
                    "stream_submit_deferred",
                    level=logging.WARNING,
                    stream=request.stream,
                    reason=str(exc),
                )
                return True
            self._give_up(path, str(exc))
            return True
        except CatalogError as exc:
            log_event(
                LOG,
                "stream_submit_deferred",
                level=logging.WARNING,
                stream=request.stream,
                reason=str(exc),
            )
            return False
        path.unlink(missing_ok=True)
        self.submitted.extend(ids)
        log_event(
            LOG,
            "stream_jobs_submitted",
            stream=request.stream,
            studies=len(request.study_instance_uids),
            jobs=",".join(ids),
            reply_ae_title=request.reply_ae_title,
        )
        return True

    def _named(self, request: JobRequest) -> JobRequest:
        """The request as the catalog may see it (references for studies that stay home)."""
        if self._name_study is None:
            return request
        name = self._name_study
        studies = tuple(name(request.collection, uid) for uid in request.study_instance_uids)
        return replace(request, study_instance_uids=studies)

    def _wait_published(self, position: int) -> None:
        if self._published is None or position <= 0:
            return
        deadline = time.monotonic() + self._publish_wait
        while self._published() < position and time.monotonic() < deadline:
            if self._stop.wait(0.05):
                return

    def _give_up(self, path: Path, reason: str) -> None:
        """Set a request aside for good (still refused after ``refusal_grace`` seconds)."""
        self._failed.mkdir(parents=True, exist_ok=True)
        os.replace(path, self._failed / path.name)
        log_event(
            LOG,
            "stream_submit_refused",
            level=logging.ERROR,
            pending=path.name,
            reason=reason,
            kept=str(self._failed / path.name),
        )


def _age(path: Path) -> float:
    """Seconds since the request was persisted (its name starts with the time in ns)."""
    try:
        return time.time() - int(path.name.split("-", 1)[0]) / 1e9
    except ValueError:
        return float("inf")
