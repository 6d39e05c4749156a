"""Receive one instance: check it, make it durable, index it — in that order.

The order is the durability contract of the node (Orthanc's store path, ARCHITECTURE.md):
bytes are fsynced by the blob store, then the index row and its outbox row commit in one
transaction, and only then does the caller acknowledge. Refused bytes are quarantined with
the reason so nothing a modality sent disappears silently.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from node.errors import (
    ArchiveUnavailable,
    ConflictingInstance,
    IngestError,
    InstanceTooLarge,
    MissingAttribute,
    SopClassMismatch,
    UndecodableDataset,
)
from node.index.errors import IndexUnavailable, RecordConflict
from node.index.records import LEVEL_KEYS, AddOutcome, InstanceRecord
from node.services.dataset_check import read_complete
from node.structlog import log_event
from storage.addressing import key_of

LOG = logging.getLogger("gridpacs.node.ingest")

BLOB_WRITERS = 8
"""Threads that write and fsync blobs while the C-STORE threads index (one per association
is enough; more than the associations writing at once are never busy)."""
_WRITERS = ThreadPoolExecutor(BLOB_WRITERS, thread_name_prefix="blob-writer")
"""One pool per process, shared by every IngestService: threads start on first use only,
and no service leaves idle threads behind when it is dropped (tests build many)."""
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_COMPUTED = {"ModalitiesInStudy"}
_RECORDED_KEYS = tuple(
    kw
    for keys in LEVEL_KEYS.values()
    for kw in keys
    if not kw.startswith("NumberOf") and kw not in _COMPUTED
)
_UID_KEYS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")
_TAGS = {kw: BaseTag(tag_for_keyword(kw) or 0) for kw in (*_RECORDED_KEYS, *_UID_KEYS, "PatientID")}
assert all(_TAGS.values()), "every recorded keyword is in pydicom's dictionary"
# PS3.5 maximum lengths of the string VRs we index; longer values are refused, not truncated.
_MAX_LEN = {
    "AE": 16,
    "AS": 4,
    "CS": 16,
    "DA": 8,
    "DS": 16,
    "IS": 12,
    "LO": 64,
    "PN": 324,
    "SH": 16,
    "TM": 16,
    "UI": 64,
    "DT": 26,
}


class BlobWriter(Protocol):
    """What ingest needs of the storage provider."""

    def put(self, data: bytes) -> Any: ...


class InstanceIndex(Protocol):
    """What ingest needs of the local index."""

    def add_instance(
        self, record: InstanceRecord, *, before_commit: Callable[[], object] | None = None
    ) -> AddOutcome: ...


class QuarantineArea(Protocol):
    """Where refused bytes go, with the reason."""

    def put(self, data: bytes, reason: str, context: dict[str, str]) -> Any: ...


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """One C-STORE as the gateway saw it."""

    data: bytes
    """Part 10 bytes (preamble, file meta, dataset) exactly as received."""
    calling_ae: str
    called_ae: str
    affected_sop_class_uid: str
    affected_sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class StoreResult:
    """The outcome of a successful store (failures are :class:`IngestError`)."""

    outcome: AddOutcome
    sop_instance_uid: str
    study_instance_uid: str
    collection: str


Transform = Callable[[bytes, Dataset], tuple[bytes, Dataset]]
"""A rewrite applied before storing (e.g. de-identification); returns new bytes + dataset."""


class IngestService:
    """Turns received bytes into a durable, indexed instance."""

    def __init__(
        self,
        store: BlobWriter,
        index: InstanceIndex,
        quarantine: QuarantineArea,
        *,
        max_instance_bytes: int,
    ) -> None:
        self._store = store
        self._index = index
        self._quarantine = quarantine
        self._max_bytes = max_instance_bytes

    def store(
        self,
        request: StoreRequest,
        *,
        collection: str,
        transform: Transform | None = None,
    ) -> StoreResult:
        """Check, persist and index ``request``; raise :class:`IngestError` when refused."""
        started = time.perf_counter()
        try:
            data, ds = self._checked(request)
            if transform is not None:
                data, ds = transform(data, ds)
        except IngestError as exc:
            self._quarantine_bytes(request, exc)
            raise
        # The blob is written and fsynced on a writer thread (fsync releases the GIL) while
        # this one extracts the attributes and runs the index statements; the index
        # transaction commits only once the blob is durable (before_commit), and nothing is
        # acknowledged before both are.
        blob = _WRITERS.submit(self._store.put, data)
        try:
            expected = BlobAddress(key_of(data), len(data))
            record = _record_from(ds, data, expected, collection, request)
            outcome = self._index.add_instance(
                record, before_commit=lambda: _durable(blob, expected)
            )
            _durable(blob, expected)  # a duplicate commits nothing, but is acked only now
        except IngestError as exc:
            _settle(blob)
            self._quarantine_bytes(request, exc)
            raise
        except RecordConflict as exc:
            _settle(blob)
            conflict = ConflictingInstance(f"conflicts with stored data: {exc}")
            self._quarantine_bytes(request, conflict)
            raise conflict from exc
        except IndexUnavailable as exc:
            _settle(blob)
            raise ArchiveUnavailable(f"index unavailable: {exc}") from exc
        except OSError as exc:
            raise ArchiveUnavailable(f"storage failed: {exc}") from exc
        except BaseException:
            _settle(blob)
            raise
        log_event(  # the gateway's c_store line is the INFO one; this details it
            LOG,
            "instance_stored",
            level=logging.DEBUG,
            sop_instance_uid=record.sop_instance_uid,
            outcome=outcome.value,
            collection=collection,
            bytes=record.size,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return StoreResult(outcome, record.sop_instance_uid, record.study_instance_uid, collection)

    def refuse(self, request: StoreRequest, error: IngestError) -> None:
        """Refuse ``request`` without storing it: quarantine the bytes, then raise ``error``."""
        self._quarantine_bytes(request, error)
        raise error

    def _checked(self, request: StoreRequest) -> tuple[bytes, Dataset]:
        if len(request.data) > self._max_bytes:
            raise InstanceTooLarge(
                f"instance of {len(request.data)} bytes exceeds the limit of {self._max_bytes}"
            )
        ds = read_complete(request.data)
        for keyword in _UID_KEYS:
            value = _text(ds, keyword)
            if not value:
                raise MissingAttribute(f"{keyword} is missing or empty")
            if len(value) > 64 or not _UID_RE.match(value):
                raise UndecodableDataset(f"{keyword} {value[:80]!r} is not a valid UID")
        if _text(ds, "SOPClassUID") != request.affected_sop_class_uid.strip():
            raise SopClassMismatch(
                f"dataset SOPClassUID {_text(ds, 'SOPClassUID')} does not match the request's "
                f"Affected SOP Class UID {request.affected_sop_class_uid}"
            )
        if _text(ds, "SOPInstanceUID") != request.affected_sop_instance_uid.strip():
            raise SopClassMismatch(
                f"dataset SOPInstanceUID {_text(ds, 'SOPInstanceUID')} does not match the "
                f"request's Affected SOP Instance UID {request.affected_sop_instance_uid}"
            )
        return request.data, ds

    def _quarantine_bytes(self, request: StoreRequest, exc: IngestError) -> None:
        where = self._quarantine.put(
            request.data,
            exc.reason,
            {
                "calling_ae": request.calling_ae,
                "called_ae": request.called_ae,
                "affected_sop_class_uid": request.affected_sop_class_uid,
                "affected_sop_instance_uid": request.affected_sop_instance_uid,
                "error": type(exc).__name__,
            },
        )
        log_event(
            LOG,
            "instance_quarantined",
            level=logging.WARNING,
            calling_ae=request.calling_ae,
            sop_instance_uid=request.affected_sop_instance_uid,
            reason=exc.reason,
            path=str(where),
        )


def _element(ds: Dataset, keyword: str) -> DataElement | None:
    # By a prebuilt tag: pydicom's keyword lookups cost more than the values here.
    try:
        return cast(DataElement, ds[_TAGS[keyword]])
    except KeyError:
        return None


@dataclass(frozen=True, slots=True)
class BlobAddress:
    """Where the blob store files ``data``: its content address and size."""

    key: str
    size: int


def _durable(blob: Future[Any], expected: BlobAddress) -> None:
    """Wait until the blob is durable; raise the store's error, or on a wrong address."""
    stored = blob.result()
    if stored.key != expected.key or stored.size != expected.size:
        raise ArchiveUnavailable(
            f"blob store filed {stored.key} ({stored.size} bytes), "
            f"expected {expected.key} ({expected.size} bytes)"
        )


def _settle(blob: Future[Any]) -> None:
    """Let a write whose instance is refused anyway finish; its outcome no longer matters."""
    with contextlib.suppress(Exception):
        blob.result()


def _text(ds: Dataset, keyword: str) -> str:
    elem = _element(ds, keyword)
    if elem is None or elem.value is None:
        return ""
    return str(elem.value).strip().rstrip("\x00")


def _value(ds: Dataset, keyword: str) -> str | int | None:
    """The index form of one attribute: int for integer VRs, decoded text otherwise."""
    elem = _element(ds, keyword)
    if elem is None:
        return None
    value = elem.value
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, MultiValue) else [value]
    if elem.VR in ("IS", "US", "UL", "SS", "SL"):
        try:
            return int(values[0])
        except (TypeError, ValueError):
            return None
    texts = [str(v) for v in values]
    limit = _MAX_LEN.get(str(elem.VR))
    if limit is not None and any(len(t) > limit for t in texts):
        raise UndecodableDataset(
            f"{keyword} has a value longer than VR {elem.VR} allows ({limit} characters)"
        )
    return "\\".join(texts)


def _record_from(
    ds: Dataset, data: bytes, blob: Any, collection: str, request: StoreRequest
) -> InstanceRecord:
    try:
        attributes = {kw: _value(ds, kw) for kw in _RECORDED_KEYS}
    except IngestError:
        raise
    except Exception as exc:  # a value pydicom cannot convert (bad charset, bad number)
        raise UndecodableDataset(f"attribute cannot be decoded: {exc}") from exc
    return InstanceRecord(
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        sop_class_uid=_text(ds, "SOPClassUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        patient_id=_text(ds, "PatientID"),
        transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", "")),
        blob_key=blob.key,
        size=blob.size,
        collection=collection,
        attributes=attributes,
        received_at=datetime.now(UTC),
        calling_ae=request.calling_ae,
    )
