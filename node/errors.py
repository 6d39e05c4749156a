"""Errors of the node process; the gateway maps them to DICOM statuses in one place."""

from __future__ import annotations


class NodeError(Exception):
    """Root of the node's own errors."""


class ConfigError(NodeError):
    """The configuration is invalid; the message lists every problem with its field path."""


class IngestError(NodeError):
    """An instance was refused; the bytes were quarantined with ``reason``."""

    def __init__(self, reason: str, *, comment: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.comment = comment or reason


class UndecodableDataset(IngestError):
    """The bytes are not a decodable DICOM dataset (truncated, garbage, bad encoding)."""


class MissingAttribute(IngestError):
    """A UID the archive cannot do without (SOP Instance, Study, Series) is absent or empty."""


class SopClassMismatch(IngestError):
    """The dataset's SOPClassUID disagrees with the request's Affected SOP Class UID."""


class ConflictingInstance(IngestError):
    """The instance contradicts the archive (e.g. a known study under another PatientID)."""


class DeidentificationRefused(IngestError):
    """A research route could not (or may not) de-identify the instance."""


class StoreNotAccepted(IngestError):
    """The called AE title does not take storage (e.g. the grid AE)."""


class PreviouslyRejected(IngestError):
    """The instance was rejected on this node (IHE IOCM) and is not stored again."""


class InstanceTooLarge(IngestError):
    """The dataset exceeds the node's configured maximum instance size."""


class ArchiveUnavailable(NodeError):
    """Storage or index failed (disk full, database down): the SCU should retry later."""


class InvalidIdentifier(NodeError):
    """A C-FIND/C-MOVE/C-GET identifier the node cannot turn into a query."""


class NotAuthorized(NodeError):
    """The calling AE may not perform this operation."""
