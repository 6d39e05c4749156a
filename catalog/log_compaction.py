"""The background task that prunes this replica's change log now and then.

Why a task of its own: the replicator runs only where there are peers, and a lone replica's
log grows as well. It asks the replicator what every peer has applied, so delete entries go
only once no peer can still need them (see :mod:`catalog.db.compaction`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from catalog.db.compaction import Pruned
from catalog.db.repository import Repository
from catalog.errors import CatalogError

log = logging.getLogger("catalog.compaction")


class LogCompactor:
    """Prunes the change log every ``interval`` seconds (the first time one interval after
    start, so a restart does not begin with a long scan)."""

    def __init__(
        self,
        repository: Repository,
        applied_everywhere: Callable[[], Mapping[str, int] | None],
        *,
        interval: float,
    ) -> None:
        self._repository = repository
        self._applied_everywhere = applied_everywhere
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> dict[str, Pruned]:
        """One pass over every origin's log; logs one line per origin that lost entries."""
        started = time.monotonic()
        result = self._repository.compact_change_log(self._applied_everywhere())
        sizes = self._repository.change_log_size()
        for origin, pruned in result.items():
            if pruned.total:
                log.info(
                    "event=change_log_compacted origin=%s superseded=%d deleted=%d left=%d",
                    origin, pruned.superseded, pruned.deleted, sizes.get(origin, 0),
                )  # fmt: skip
        log.debug("event=change_log_pass seconds=%.3f", time.monotonic() - started)
        return result

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.run_once()
            except CatalogError as exc:  # the database is away: next time
                log.warning("event=change_log_compaction_failed error=%s", exc)
            except Exception:  # the loop must survive anything; log it with its traceback
                log.exception("event=change_log_compaction_failed")

    def start(self) -> None:
        if self._interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="catalog-compaction",
                                            daemon=True)  # fmt: skip
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
