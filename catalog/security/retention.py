"""Keep the audit log for a retention period, then prune it.

Why: an audit trail grows by one row per query for as long as the system runs, and a
hospital's records policy says how long access records are kept (six years, ten …), after
which keeping them is itself a liability. Pruning moves the chain's anchor
(:meth:`AuditLog.prune`), so what is kept still verifies, and never removes a row an export
still owes its repository. Each pruning is itself a row (``audit.prune``).
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from catalog.security.audit import AuditLog, Pruned
from catalog.security.audit_export import AuditExporter, log_line
from catalog.security.errors import AuditError

Emit = Callable[[str, int, dict[str, Any]], None]


def prune_once(
    log: AuditLog,
    before: dt.datetime,
    *,
    owed_from: int | None = None,
    actor: str = "retention",
    note: dict[str, Any] | None = None,
) -> Pruned:
    """Remove rows written before ``before`` (none above ``owed_from``, the rows an export
    still owes), and record the pruning as a row when anything went."""
    pruned = log.prune(before=before, up_to_seq=owed_from)
    if pruned.rows:
        target = {"before": before.isoformat(), "rows": pruned.rows,
                  "through_seq": pruned.through_seq, **(note or {})}  # fmt: skip
        log.record(actor, "audit.prune", target, f"local:{socket.gethostname()}", "OK")
    return pruned


class AuditRetention:
    """Prunes at start and then every ``interval`` seconds, in a daemon thread; never a row
    ``exporter`` has not sent yet."""

    def __init__(
        self,
        log: AuditLog,
        keep: dt.timedelta,
        *,
        exporter: AuditExporter | None = None,
        actor: str = "retention",
        interval: float = 86_400.0,
        emit: Emit | None = None,
    ) -> None:
        self._log = log
        self._keep = keep
        self._exporter = exporter
        self._actor = actor
        self._interval = interval
        self._emit = emit or log_line
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> Pruned | None:
        try:
            before = dt.datetime.now(dt.UTC) - self._keep
            owed_from = self._exporter.exported_seq if self._exporter is not None else None
            pruned = prune_once(self._log, before, owed_from=owed_from,
                                actor=self._actor, note={"keep_days": self._keep.days})  # fmt: skip
        except AuditError as exc:
            self._emit("audit_not_pruned", logging.WARNING, {"error": str(exc)})
            return None
        if pruned.rows:
            self._emit("audit_pruned", logging.INFO,
                       {"rows": pruned.rows, "through_seq": pruned.through_seq,
                        "keep_days": self._keep.days})  # fmt: skip
        return pruned

    def _run(self) -> None:
        self.run_once()
        while not self._stop.wait(self._interval):
            self.run_once()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-retention", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
