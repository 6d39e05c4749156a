"""Receive one instance: check it, make it durable, index it — in that order.

The order is the durability contract of the node (Orthanc's store path, ARCHITECTURE.md):
bytes are fsynced by the blob store, then the index row and its outbox row commit in one
transaction, and only then does the caller acknowledge. Refused bytes are quarantined with
the reason so nothing a modality sent disappears silently.

Plainly encoded bytes are checked and read by :mod:`.header` without building a pydicom
Dataset (most of a small instance's cost otherwise); whatever it declines, and every
instance a route transforms, goes through pydicom (:mod:`.dataset_check`) as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol, cast

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
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
    PreviouslyRejected,
    SopClassMismatch,
    UndecodableDataset,
)
from node.index.errors import IndexUnavailable, InstanceRejected, RecordConflict
from node.index.records import LEVEL_KEYS, AddOutcome, InstanceRecord
from node.services import header
from node.services.dataset_check import read_complete
from node.structlog import log_event

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

    def put(self, data: bytes, digest: bytes | None = None) -> Any: ...

    def delete(self, key: str) -> Any: ...


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
        ds: Dataset | None = None
        try:
            self._check_size(request)
            # Untransformed plain bytes are read without pydicom (.header); anything that
            # path declines takes pydicom's, with the same values and the same refusals.
            fields = _quick_fields(request.data) if transform is None else None
            if fields is not None:
                data = request.data
                _check_matches(fields.sop_class_uid, fields.sop_instance_uid, request)
            else:
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
        digest = hashlib.sha256(data).digest()  # once: the store is given it
        blob = _WRITERS.submit(self._store.put, data, digest)
        try:
            expected = BlobAddress(digest.hex(), len(data))
            if ds is not None:
                fields = _fields_from(ds)
            assert fields is not None
            record = _record_from(fields, expected, collection, request)
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
        except InstanceRejected as exc:
            self._drop_rejected(blob, expected)
            log_event(LOG, "rejected_instance_refused", level=logging.WARNING,
                      calling_ae=request.calling_ae, sop_instance_uid=exc.sop_instance_uid,
                      reason=exc.reason)  # fmt: skip
            raise PreviouslyRejected(str(exc)) from exc
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

    def _drop_rejected(self, blob: Future[Any], expected: BlobAddress) -> None:
        """A rejected instance sent again: its bytes were just written, and must not stay
        (not even in quarantine: the rejection may be for the wrong patient's data). Its
        blob key is its own (the bytes hold the SOP Instance UID, unique in the index)."""
        try:
            blob.result()
            self._store.delete(expected.key)
        except Exception:  # already gone, or the write failed: nothing of it is kept
            LOG.debug("event=rejected_blob_not_deleted key=%s", expected.key, exc_info=True)

    def refuse(self, request: StoreRequest, error: IngestError) -> NoReturn:
        """Refuse ``request`` without storing it: quarantine the bytes, then raise ``error``."""
        self._quarantine_bytes(request, error)
        raise error

    def _check_size(self, request: StoreRequest) -> None:
        if len(request.data) > self._max_bytes:
            raise InstanceTooLarge(
                f"instance of {len(request.data)} bytes exceeds the limit of {self._max_bytes}"
            )

    def _checked(self, request: StoreRequest) -> tuple[bytes, Dataset]:
        ds = read_complete(request.data)
        for keyword in _UID_KEYS:
            value = _text(ds, keyword)
            if not value:
                raise MissingAttribute(f"{keyword} is missing or empty")
            if len(value) > 64 or not _UID_RE.match(value):
                raise UndecodableDataset(f"{keyword} {value[:80]!r} is not a valid UID")
        _check_matches(_text(ds, "SOPClassUID"), _text(ds, "SOPInstanceUID"), request)
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


def _check_matches(sop_class_uid: str, sop_instance_uid: str, request: StoreRequest) -> None:
    if sop_class_uid != request.affected_sop_class_uid.strip():
        raise SopClassMismatch(
            f"dataset SOPClassUID {sop_class_uid} does not match the request's "
            f"Affected SOP Class UID {request.affected_sop_class_uid}"
        )
    if sop_instance_uid != request.affected_sop_instance_uid.strip():
        raise SopClassMismatch(
            f"dataset SOPInstanceUID {sop_instance_uid} does not match the "
            f"request's Affected SOP Instance UID {request.affected_sop_instance_uid}"
        )


@dataclass(frozen=True, slots=True)
class _Fields:
    """What the index record takes from the dataset, by either path."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    transfer_syntax_uid: str
    attributes: dict[str, str | int | None]


def _fields_from(ds: Dataset) -> _Fields:
    """The fields as pydicom reads them (``ds`` passed :meth:`IngestService._checked`)."""
    try:
        attributes = {kw: _value(ds, kw) for kw in _RECORDED_KEYS}
    except IngestError:
        raise
    except Exception as exc:  # a value pydicom cannot convert (bad charset, bad number)
        raise UndecodableDataset(f"attribute cannot be decoded: {exc}") from exc
    return _Fields(
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        sop_class_uid=_text(ds, "SOPClassUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        patient_id=_text(ds, "PatientID"),
        transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", "")),
        attributes=attributes,
    )


_VRS = {kw: dictionary_VR(tag) for kw, tag in _TAGS.items()}
_WANTED = frozenset({*(int(tag) for tag in _TAGS.values()), header.CHARSET_TAG})


def _quick_fields(data: bytes) -> _Fields | None:
    """The fields read without pydicom, identical to :func:`_fields_from`'s, for complete
    plainly encoded bytes with valid UIDs and values; ``None`` for pydicom's path."""
    if not _pydicom_defaults():
        return None
    found = header.scan(data, _WANTED)
    if found is None or not header.plain_charset(found):
        return None
    try:
        texts = {kw: _quick_text(found, kw) for kw in (*_UID_KEYS, "PatientID")}
        if not all(len(texts[kw]) <= 64 and _UID_RE.match(texts[kw]) for kw in _UID_KEYS):
            return None  # pydicom's path says what is wrong
        attributes = {kw: _quick_value(found, kw) for kw in _RECORDED_KEYS}
    except Exception:  # Declined; anything else would be a bug costing speed, not a refusal
        return None
    return _Fields(
        sop_instance_uid=texts["SOPInstanceUID"],
        sop_class_uid=texts["SOPClassUID"],
        study_instance_uid=texts["StudyInstanceUID"],
        series_instance_uid=texts["SeriesInstanceUID"],
        patient_id=texts["PatientID"],
        transfer_syntax_uid=found.transfer_syntax_uid,
        attributes=attributes,
    )


def _pydicom_defaults() -> bool:
    """pydicom's reading settings the quick path mirrors (checked per call: a tool may
    change them at run time)."""
    return (
        not pydicom_config.datetime_conversion
        and not pydicom_config.use_IS_numpy
        and pydicom_config.settings.reading_validation_mode != pydicom_config.RAISE
    )


def _quick_text(found: header.Header, keyword: str) -> str:
    """:func:`_text` from raw bytes."""
    raw = header.element(found, _TAGS[keyword], _VRS[keyword])
    if raw is None:
        return ""
    values = header.strings(raw, _VRS[keyword])
    if len(values) != 1:
        raise header.Declined  # pydicom's path gives a list's repr, refused there
    return values[0].strip().rstrip("\x00")


def _quick_value(found: header.Header, keyword: str) -> str | int | None:
    """:func:`_value` from raw bytes; declines a value :func:`_value` would refuse."""
    vr = _VRS[keyword]
    raw = header.element(found, _TAGS[keyword], vr)
    if raw is None:
        return None
    if vr in ("IS", "US"):
        return header.integer(raw, vr)
    values = header.strings(raw, vr)
    if len(values) == 1 and not values[0]:
        return None
    limit = _MAX_LEN.get(vr)
    if limit is not None and any(len(t) > limit for t in values):
        raise header.Declined
    return "\\".join(values)


def _record_from(
    fields: _Fields, blob: Any, collection: str, request: StoreRequest
) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=fields.sop_instance_uid,
        sop_class_uid=fields.sop_class_uid,
        study_instance_uid=fields.study_instance_uid,
        series_instance_uid=fields.series_instance_uid,
        patient_id=fields.patient_id,
        transfer_syntax_uid=fields.transfer_syntax_uid,
        blob_key=blob.key,
        size=blob.size,
        collection=collection,
        attributes=fields.attributes,
        received_at=datetime.now(UTC),
        calling_ae=request.calling_ae,
    )
