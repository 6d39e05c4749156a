"""Outcome or exception → DIMSE status: the one place the node decides what an SCU is told.

Codes follow PS3.4 (Annex B.2.3 storage, C.4.1.1.4 find, C.4.2.1.5 move, C.4.3.1.4 get).
ErrorComment (LO) carries the reason, clipped to its 64-character limit.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from catalog import CatalogRejected, CatalogUnavailable
from node import errors
from node.index import errors as index_errors

SUCCESS = 0x0000
PENDING = 0xFF00
WARNING_SUBOPS_FAILED = 0xB000
CANCELLED = 0xFE00

# C-STORE failures
STORE_OUT_OF_RESOURCES = 0xA700
STORE_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STORE_CANNOT_UNDERSTAND = 0xC000
STORE_MISSING_ATTRIBUTE = 0xC001
STORE_INVALID_VALUE = 0xC002
STORE_CONFLICT = 0xC003
STORE_DEIDENTIFICATION_REFUSED = 0xC004
STORE_PREVIOUSLY_REJECTED = 0xC005
NOT_AUTHORIZED = 0x0124

# Query/Retrieve failures
QR_OUT_OF_RESOURCES = 0xA700
QR_IDENTIFIER_DOES_NOT_MATCH = 0xA900
QR_UNABLE_TO_PROCESS = 0xC000
MOVE_UNKNOWN_DESTINATION = 0xA801
MOVE_CANNOT_CALCULATE = 0xA701
MOVE_CANNOT_PERFORM_SUBOPS = 0xA702

_STORE_CODES: list[tuple[type[Exception], int]] = [
    (errors.SopClassMismatch, STORE_DATASET_DOES_NOT_MATCH_SOP_CLASS),
    (errors.MissingAttribute, STORE_MISSING_ATTRIBUTE),
    (errors.ConflictingInstance, STORE_CONFLICT),
    (errors.DeidentificationRefused, STORE_DEIDENTIFICATION_REFUSED),
    (errors.PreviouslyRejected, STORE_PREVIOUSLY_REJECTED),
    (errors.InstanceTooLarge, STORE_OUT_OF_RESOURCES),
    (errors.UndecodableDataset, STORE_CANNOT_UNDERSTAND),
    (errors.ArchiveUnavailable, STORE_OUT_OF_RESOURCES),
    (errors.NotAuthorized, NOT_AUTHORIZED),
    (errors.StoreNotAccepted, NOT_AUTHORIZED),
    (errors.IngestError, STORE_CANNOT_UNDERSTAND),
]

_QUERY_CODES: list[tuple[type[Exception], int]] = [
    (index_errors.InvalidQuery, QR_IDENTIFIER_DOES_NOT_MATCH),
    (errors.InvalidIdentifier, QR_IDENTIFIER_DOES_NOT_MATCH),
    (index_errors.QueryRejected, QR_UNABLE_TO_PROCESS),
    (index_errors.IndexUnavailable, QR_OUT_OF_RESOURCES),
    (errors.ArchiveUnavailable, QR_OUT_OF_RESOURCES),
    (errors.NotAuthorized, NOT_AUTHORIZED),
    (CatalogRejected, QR_IDENTIFIER_DOES_NOT_MATCH),
    (CatalogUnavailable, QR_OUT_OF_RESOURCES),
]


def status_dataset(code: int, comment: str | None = None) -> Dataset:
    """A status Dataset as pynetdicom handlers return it."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = _clip(comment)
    return ds


def store_failure(exc: Exception) -> Dataset:
    """The C-STORE status for ``exc`` (unknown exceptions are 0xC000 with the class name)."""
    return status_dataset(_lookup(_STORE_CODES, exc, STORE_CANNOT_UNDERSTAND), _reason(exc))


def query_failure(exc: Exception) -> Dataset:
    """The C-FIND/C-MOVE/C-GET status for ``exc``."""
    return status_dataset(_lookup(_QUERY_CODES, exc, QR_UNABLE_TO_PROCESS), _reason(exc))


def _lookup(table: list[tuple[type[Exception], int]], exc: Exception, default: int) -> int:
    for kind, code in table:
        if isinstance(exc, kind):
            return code
    return default


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _clip(text: str) -> str:
    ascii_text = text.encode("ascii", "replace").decode("ascii").replace("\\", "/")
    return ascii_text[:64]
