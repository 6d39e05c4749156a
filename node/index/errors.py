"""The index's one exception hierarchy.

Expected outcomes (an instance already stored) are values (:class:`AddOutcome`); these
are failures. The gateway maps them to DIMSE statuses in one place: ``InvalidQuery`` and
``QueryRejected`` to an identifier/refused status, ``IndexUnavailable`` to an
out-of-resources/processing failure, ``RecordConflict`` to a C-STORE failure.
"""

from __future__ import annotations


class IndexFailure(Exception):
    """Root of every error the node index raises."""


class InvalidQuery(IndexFailure):
    """The identifier is not a valid query: bad level for the model, malformed value."""


class QueryRejected(IndexFailure):
    """The query is well formed but absurd (values too long, too many UIDs)."""


class IndexUnavailable(IndexFailure):
    """The database cannot be reached or refused the work (wraps ``OperationalError``)."""


class RecordConflict(IndexFailure):
    """A record contradicts what is stored.

    For example a StudyInstanceUID already filed under another PatientID or collection, or
    a SeriesInstanceUID already filed under another study. Indexing it would silently
    corrupt the hierarchy, so it is refused.
    """


class InstanceRejected(IndexFailure):
    """The instance was rejected here (IHE IOCM) and may not be stored again."""

    def __init__(self, sop_instance_uid: str, reason: str) -> None:
        super().__init__(f"instance {sop_instance_uid} was rejected ({reason or 'no code'})")
        self.sop_instance_uid = sop_instance_uid
        self.reason = reason
