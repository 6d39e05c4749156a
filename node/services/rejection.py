"""IHE IOCM rejection notes: a Key Object Selection whose title says "rejected" removes the
instances it lists, here and, through the catalog, on every node holding a copy.

A modality or a PACS administrator's workstation sends the note by C-STORE, like any
instance (PS3.3 KOS, title from CID 7011: 113001 Rejected for Quality Reasons, 113037
Rejected for Patient Safety Reasons, 113038 Incorrect Modality Worklist Entry, 113039 Data
Retention Policy Expired). Only calling AE titles the node's configuration names may reject
(``[dicom] rejecting_aes``): any other sender's note is refused with 0x0124, never stored
as an ordinary KOS that silently does nothing.

Order: the index transaction (rejection rows, removals, blob queue, INSTANCE_REJECTED
changes) commits first; the blobs are deleted after it and dropped from the queue; a crash
in between leaves them queued, and :meth:`RejectionService.remove_queued_blobs` finishes
the job at the next start. The note itself is then stored as an ordinary instance, so a
workstation can still see what was rejected and why.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydicom.dataset import Dataset

from node.errors import IngestError, NotAuthorized
from node.index.records import RejectedInstance, RejectionResult
from node.services.dataset_check import read_complete
from node.structlog import log_event

LOG = logging.getLogger("gridpacs.node.rejection")

KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
REJECTION_TITLES = {
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}
"""CID 7011 "Rejected for" titles (scheme DCM), by code value."""
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class MalformedRejectionNote(IngestError):
    """A rejection note whose references cannot be read: nothing is rejected."""


class RejectionNotAllowed(IngestError, NotAuthorized):
    """The calling AE title may not reject instances on this node."""


@dataclass(frozen=True, slots=True)
class RejectionNote:
    """What a rejection note asks for."""

    note_uid: str
    reason: str
    """The title's code value (a key of :data:`REJECTION_TITLES`)."""
    references: tuple[tuple[str, str, str], ...]
    """(StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID) of every rejected instance."""

    def items(self, collection: str, rejected_by: str) -> list[RejectedInstance]:
        return [
            RejectedInstance(
                sop_instance_uid=sop,
                collection=collection,
                study_instance_uid=study,
                series_instance_uid=series,
                reason=self.reason,
                note_uid=self.note_uid,
                rejected_by=rejected_by,
            )
            for study, series, sop in self.references
        ]


def rejection_title(ds: Dataset) -> str | None:
    """The rejection code of a KOS whose title is one of CID 7011's; None otherwise."""
    if str(ds.get("SOPClassUID", "")) != KEY_OBJECT_SELECTION:
        return None
    titles = ds.get("ConceptNameCodeSequence") or []
    if len(titles) != 1:
        return None
    code = str(titles[0].get("CodeValue", "")).strip()
    scheme = str(titles[0].get("CodingSchemeDesignator", "")).strip()
    return code if scheme == "DCM" and code in REJECTION_TITLES else None


def read_rejection_note(ds: Dataset) -> RejectionNote | None:
    """The rejection ``ds`` asks for, None when it is no rejection note.

    Raises
    ------
    MalformedRejectionNote
        It is one, but lists no instance or an invalid UID.
    """
    reason = rejection_title(ds)
    if reason is None:
        return None
    try:
        references = tuple(_references(ds))
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        raise MalformedRejectionNote(f"rejection note cannot be read: {exc}") from exc
    if not references:
        raise MalformedRejectionNote(
            "rejection note lists no instance (CurrentRequestedProcedureEvidenceSequence)"
        )
    return RejectionNote(str(ds.SOPInstanceUID), reason, references)


def _references(ds: Dataset) -> list[tuple[str, str, str]]:
    found = []
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence") or []:
        study_uid = _uid(study, "StudyInstanceUID")
        for series in study.get("ReferencedSeriesSequence") or []:
            series_uid = _uid(series, "SeriesInstanceUID")
            for sop in series.get("ReferencedSOPSequence") or []:
                found.append((study_uid, series_uid, _uid(sop, "ReferencedSOPInstanceUID")))
    return found


def _uid(item: Dataset, keyword: str) -> str:
    value = str(item.get(keyword, "") or "").strip().rstrip("\x00")
    if not value or len(value) > 64 or not _UID.match(value):
        raise ValueError(f"{keyword} {value[:80]!r} is not a valid UID")
    return value


def note_in(data: bytes, transform: Any = None) -> RejectionNote | None:
    """The rejection note in Part 10 ``data`` as a route would store it (after its
    ``transform``: a de-identifying route rejects the pseudonymized copies), or None."""
    ds = read_complete(data)
    if transform is not None:
        data, ds = transform(data, ds)
    return read_rejection_note(ds)


class RejectingIndex(Protocol):
    def reject(self, items: Sequence[RejectedInstance]) -> RejectionResult: ...

    def queued_blob_removals(self) -> list[str]: ...

    def blobs_removed(self, keys: Sequence[str]) -> None: ...


class BlobRemover(Protocol):
    def delete_many(self, keys: Iterable[str]) -> Any: ...


class RejectionService:
    """Applies rejections to the index and the blob store (no networking)."""

    def __init__(
        self, index: RejectingIndex, store: BlobRemover, *, allowed_aes: Collection[str] = ()
    ) -> None:
        self._index = index
        self._store = store
        self.allowed_aes = frozenset(a.strip() for a in allowed_aes)

    def check_allowed(self, calling_ae: str) -> None:
        """Raise :class:`RejectionNotAllowed` unless ``calling_ae`` may reject."""
        if calling_ae.strip() not in self.allowed_aes:
            raise RejectionNotAllowed(
                f"{calling_ae.strip() or 'this AE'} may not send rejection notes here"
            )

    def reject(
        self, items: Sequence[RejectedInstance], *, source: str, remove_blobs: bool = True
    ) -> RejectionResult:
        """Reject ``items`` and delete their blobs; ``source`` names who asked (logged).

        ``remove_blobs=False`` leaves the blobs queued, for a process that may not delete
        them (``gridpacs node reject`` next to a running node, whose sweep deletes them)."""
        result = self._index.reject(items)
        removed_blobs = self.remove_queued_blobs() if remove_blobs else 0
        log_event(
            LOG,
            "instances_rejected",
            level=logging.WARNING,
            source=source,
            reasons=",".join(sorted({i.reason for i in items})),
            listed=len(items),
            removed=len(result.removed),
            recorded=len(result.recorded),
            elsewhere=len(result.elsewhere),
            blobs_deleted=removed_blobs,
            blobs_queued=0 if remove_blobs else len(result.blob_keys),
        )
        return result

    def apply_note(
        self, note: RejectionNote, *, collection: str, calling_ae: str
    ) -> RejectionResult:
        """Apply a rejection note received from ``calling_ae`` into ``collection``."""
        self.check_allowed(calling_ae)
        return self.reject(note.items(collection, calling_ae.strip()), source=calling_ae)

    def remove_queued_blobs(self) -> int:
        """Delete every queued blob (those of removed instances) together (one sync per
        pack, not per blob); how many went. A key already gone counts as done."""
        keys = self._index.queued_blob_removals()
        if keys:
            self._store.delete_many(keys)
            self._index.blobs_removed(keys)
        return len(keys)
