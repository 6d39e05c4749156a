"""Plain values that cross the index boundary.

The gateway and the services never see SQLAlchemy rows: they hand the index an
:class:`InstanceRecord` (what ingest read from a dataset) and get back attribute dicts
keyed by DICOM keyword (what C-FIND returns) or :class:`StoredInstance` (what C-MOVE,
C-GET and peers need to fetch bytes).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class Level(enum.StrEnum):
    """Query/Retrieve level (PS3.4 C.6)."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


class Model(enum.StrEnum):
    """Query/Retrieve information model."""

    PATIENT_ROOT = "PATIENT_ROOT"
    STUDY_ROOT = "STUDY_ROOT"


# Attributes the index can match and return, per level. Keys are DICOM keywords.
PATIENT_KEYS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
)
STUDY_KEYS: tuple[str, ...] = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_KEYS: tuple[str, ...] = (
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "SeriesDate",
    "SeriesTime",
    "NumberOfSeriesRelatedInstances",
)
IMAGE_KEYS: tuple[str, ...] = (
    "SOPInstanceUID",
    "SOPClassUID",
    "InstanceNumber",
    "ContentDate",
    "ContentTime",
    "NumberOfFrames",
    "Rows",
    "Columns",
)
LEVEL_KEYS: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: PATIENT_KEYS,
    Level.STUDY: STUDY_KEYS,
    Level.SERIES: SERIES_KEYS,
    Level.IMAGE: IMAGE_KEYS,
}
UNIQUE_KEY: dict[Level, str] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """Everything the index keeps about one received instance.

    String values are already decoded to ``str`` (pydicom applied the dataset's
    SpecificCharacterSet); absent attributes are ``None``. ``attributes`` holds the
    level attributes by keyword (PatientName, StudyDate, Modality, InstanceNumber ...),
    restricted to the keys listed in ``LEVEL_KEYS`` excluding the computed ``NumberOf*``
    and ``ModalitiesInStudy`` ones.
    """

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    transfer_syntax_uid: str
    blob_key: str
    size: int
    collection: str
    attributes: dict[str, str | int | None] = field(default_factory=dict)
    received_at: datetime | None = None
    calling_ae: str = ""


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """Where an instance's bytes are and what a retrieve needs to send them."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int
    study_instance_uid: str
    series_instance_uid: str


class AddOutcome(enum.Enum):
    """Expected outcomes of indexing, as values (failures are exceptions)."""

    STORED = "stored"
    ALREADY_STORED = "already_stored"
    REJECTED = "rejected"
    """Bulk adds only (one add raises :class:`InstanceRejected`): rejected here before
    (IHE IOCM), so not indexed again."""


@dataclass(frozen=True, slots=True)
class IndexQuery:
    """A C-FIND/C-MOVE/C-GET identifier, decoded.

    ``filters`` maps a keyword to its raw DICOM matching string as received (already
    decoded to ``str``): ``"SMITH*"``, ``"20240101-20240131"``, ``"1.2.3\\1.2.4"`` (UID
    list), ``""`` (universal matching). ``requested`` lists every keyword the SCU asked
    for (return keys and matching keys alike); only those are returned.
    """

    level: Level
    model: Model = Model.STUDY_ROOT
    filters: dict[str, str] = field(default_factory=dict)
    requested: tuple[str, ...] = ()
    collections: tuple[str, ...] | None = None
    """Restrict to these collections; ``None`` means every collection."""
    limit: int | None = None


class ChangeKind(enum.StrEnum):
    """What happened to an instance, as recorded in the outbox."""

    INSTANCE_ADDED = "instance_added"
    INSTANCE_DELETED = "instance_deleted"
    STORE_RESET = "store_reset"
    """The catalog must forget what this node published before (see :meth:`SqlIndex.rebase_outbox`);
    its record is empty."""
    INSTANCE_REJECTED = "instance_rejected"
    """Rejected (IHE IOCM): removed here, refused from now on, and removed grid-wide."""


@dataclass(frozen=True, slots=True)
class Change:
    """One outbox row: written in the same transaction as the index change it records.

    ``seq`` is this node's monotonically increasing sequence number; together with the
    node's name it is the idempotency key the catalog applies changes by.
    """

    seq: int
    kind: ChangeKind
    record: InstanceRecord
    reason: str = ""
    """For :attr:`ChangeKind.INSTANCE_REJECTED`: the rejection title's DCM code value."""


@dataclass(frozen=True, slots=True)
class RejectedInstance:
    """One instance to reject in one collection (IHE IOCM)."""

    sop_instance_uid: str
    collection: str
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    reason: str = ""
    """The rejection title's DCM code value (113001, 113037, 113038, 113039)."""
    note_uid: str = ""
    rejected_by: str = ""


@dataclass(frozen=True, slots=True)
class RejectionResult:
    """What a rejection did to the index."""

    removed: tuple[str, ...] = ()
    """SOP Instance UIDs removed from the index (their blobs are queued for removal)."""
    recorded: tuple[str, ...] = ()
    """SOP Instance UIDs newly recorded as rejected (removed or not held here)."""
    elsewhere: tuple[str, ...] = ()
    """Held here in another collection than the rejection's: left alone."""
    blob_keys: tuple[str, ...] = ()
    """Blobs no instance refers to any more, queued in ``blob_removals``."""


@dataclass(frozen=True, slots=True)
class CommitmentRequest:
    """A Storage Commitment request: the instances a sender asks the node to commit to.

    ``references`` are (SOP Class UID, SOP Instance UID) pairs, in the request's order and
    without repeats. The report goes back to ``calling_ae``, sent as ``called_ae``.
    """

    calling_ae: str
    transaction_uid: str
    called_ae: str
    references: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class PendingCommitment:
    """A recorded request whose report is still owed."""

    request: CommitmentRequest
    requested_at: datetime
    attempts: int


@dataclass(frozen=True, slots=True)
class CommitmentEntry:
    """One recorded Storage Commitment request as an administrator sees it."""

    calling_ae: str
    transaction_uid: str
    called_ae: str
    instances: int
    state: str
    requested_at: datetime
    attempts: int
    due_at: datetime | None
    last_error: str | None
    reported_at: datetime | None
    committed: int | None
    failed: int | None
