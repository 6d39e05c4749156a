"""The node's audit trail of DICOM access: who queried, retrieved, stored or asked for
commitment, from where, what, and how it ended.

Why: the node holds the site's identified images; a hospital must be able to answer "who
looked at this patient" (HIPAA's audit controls, IHE ATNA's *Query*, *DICOM Instances
Transferred*, *Security Alert*). Log lines rotate away and can be edited; the catalog's
append-only, hash-chained log (:mod:`catalog.security.audit`) does not and is checked with
the same ``gridpacs audit`` commands, so the node keeps one of its own, at the site
(it holds patient identifiers and never leaves the node).

Reads are recorded *before* anything is sent: a C-FIND, C-MOVE or C-GET whose row cannot be
written is refused (fail closed). Stores are recorded once per association, when it ends
(one row per association, not one more disk sync per instance).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from catalog.security.audit import AuditLog
from catalog.security.errors import AuditError
from catalog.security.models import (
    AuditAnchor,
    AuditEntry,
    AuditExportCursor,
    append_only_ddl,
)
from node.structlog import log_event
from storage.sql import engine_from_url, write_begin

LOG = logging.getLogger("gridpacs.node.audit")
#: Query keys copied into a C-FIND's row (the ones that say whom or what was looked for).
AUDITED_KEYS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "AccessionNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "StudyDate",
    "ModalitiesInStudy",
    "Modality",
)
MAX_LISTED = 50
"""Study UIDs listed in one row; more are counted (``studies_total``)."""


def open_audit(url: str) -> AuditLog:
    """The audit table (append-only triggers included), its pruning anchor and the export
    cursors, created if missing."""
    engine = engine_from_url(url)  # SQLite: WAL, synchronous=FULL, a busy timeout
    # the write lock at BEGIN: a running node's writes make this wait, not fail
    with engine.connect() as conn, write_begin(conn).begin():
        for table in (AuditEntry.__table__, AuditAnchor.__table__, AuditExportCursor.__table__):
            table.create(conn, checkfirst=True)  # type: ignore[attr-defined]
        for statement in append_only_ddl(engine.dialect.name):
            conn.exec_driver_sql(statement)
    return AuditLog(engine)


@dataclass
class _Stored:
    studies: Counter[str] = field(default_factory=Counter)
    refused: int = 0


class DicomAudit:
    """Rows for the gateway's requests; ``None`` log: nothing is recorded."""

    def __init__(self, log: AuditLog | None) -> None:
        self._log = log
        self._stores: dict[int, _Stored] = {}
        self._lock = threading.Lock()

    def read(
        self, action: str, calling_ae: str, peer: str, target: Mapping[str, Any], outcome: str
    ) -> None:
        """Record a read before it is served; raises :class:`AuditError` when it cannot
        (the caller refuses the request)."""
        if self._log is not None:
            self._log.record(calling_ae, action, target, peer, outcome)

    def event(
        self, action: str, calling_ae: str, peer: str, target: Mapping[str, Any], outcome: str
    ) -> None:
        """Record what already happened (a refusal, a commitment request); a failure to
        write is logged, not raised."""
        if self._log is None:
            return
        try:
            self._log.record(calling_ae, action, target, peer, outcome)
        except AuditError as exc:
            log_event(LOG, "audit_write_failed", level=logging.ERROR, action=action,
                      calling_ae=calling_ae, reason=str(exc))  # fmt: skip

    def stored(self, association: int, study: str | None) -> None:
        """Count one C-STORE of ``association`` (``study`` None: refused); who sent it is
        read once, when the association ends."""
        if self._log is None:
            return
        with self._lock:
            entry = self._stores.setdefault(association, _Stored())
            if study is None:
                entry.refused += 1
            else:
                entry.studies[study] += 1

    def association_ended(
        self, association: int, calling_ae: str, called_ae: str, peer: str, *, released: bool
    ) -> None:
        """One row for everything the association stored (nothing when it stored nothing)."""
        with self._lock:
            entry = self._stores.pop(association, None)
        if entry is None:
            return
        listed = dict(entry.studies.most_common(MAX_LISTED))
        target: dict[str, Any] = {
            "called_ae": called_ae,
            "instances": sum(entry.studies.values()),
            "refused": entry.refused,
            "studies": listed,
        }
        if len(entry.studies) > len(listed):
            target["studies_total"] = len(entry.studies)
        self.event("dicom.store", calling_ae, peer, target,
                   "released" if released else "aborted")  # fmt: skip


def audited_keys(filters: Mapping[str, str]) -> dict[str, str]:
    """The keys of a request that say whom or what was looked for (:data:`AUDITED_KEYS`)."""
    return {k: filters[k] for k in AUDITED_KEYS if filters.get(k)}


def query_target(called_ae: str, level: str, filters: Mapping[str, str]) -> dict[str, Any]:
    """A C-FIND's row: its level and the keys that say whom or what was looked for."""
    return {"called_ae": called_ae, "level": level, "keys": audited_keys(filters)}


def studies_of(uids: list[str]) -> dict[str, Any]:
    """The studies a retrieve sends: the first :data:`MAX_LISTED` UIDs and their number."""
    unique = list(dict.fromkeys(uids))
    return {"studies": unique[:MAX_LISTED], "studies_total": len(unique)}
