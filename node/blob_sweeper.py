"""Deletes the blobs other processes queued for removal while this node runs.

Why: ``gridpacs node reject`` commits a rejection from its own process, but only the node
holds its packs' writer lock, so only the node may delete packed blobs. The command leaves
them queued in the index; this loop deletes them within seconds (a start also does it, for
what a crash left).
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from node.index.errors import IndexUnavailable
from node.structlog import log_event
from storage.errors import StorageError

LOG = logging.getLogger("gridpacs.node.rejection")


class BlobRemoving(Protocol):
    def remove_queued_blobs(self) -> int: ...


class QueuedBlobSweeper:
    """Calls :meth:`RejectionService.remove_queued_blobs` every ``interval`` seconds."""

    def __init__(self, rejections: BlobRemoving, *, interval: float = 5.0) -> None:
        self._rejections = rejections
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> int:
        """One pass; how many queued blobs went (failures are logged, retried next pass)."""
        try:
            removed = self._rejections.remove_queued_blobs()
        except (IndexUnavailable, StorageError) as exc:
            log_event(LOG, "queued_blobs_not_removed", level=logging.WARNING, error=str(exc))
            return 0
        if removed:
            log_event(LOG, "queued_blobs_removed", count=removed)
        return removed

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sweep()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="blob-sweeper", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
