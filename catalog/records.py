"""Plain values that cross the catalog's boundaries (no SQLAlchemy, no protobuf).

The node publishes :class:`Change` values carrying an :class:`InstanceRecord`; the field
names are those of ``node.index.records`` so a node converts with
``InstanceRecord(**fields)``. Queries return :class:`StudyMatch` / :class:`SeriesMatch` /
:class:`InstanceMatch`, each telling which nodes hold it (:class:`Holder`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

AttributeValue = str | int | None

# Which DICOM keywords live at which level in the catalog (the rest are instance-level).
PATIENT_ATTRIBUTES: frozenset[str] = frozenset(
    {"PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex"}
)
STUDY_ATTRIBUTES: frozenset[str] = frozenset(
    {
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "StudyDescription",
        "ReferringPhysicianName",
    }
)
SERIES_ATTRIBUTES: frozenset[str] = frozenset(
    {
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "BodyPartExamined",
        "SeriesDate",
        "SeriesTime",
    }
)


class ChangeKind(enum.StrEnum):
    """What happened to an instance at its origin (values match the node's outbox)."""

    INSTANCE_ADDED = "instance_added"
    INSTANCE_DELETED = "instance_deleted"
    SUPERSEDED = "superseded"
    """Only from PullChanges: replaced by a later change of the same origin."""
    STORE_RESET = "store_reset"
    """The origin's store was emptied: forget its instances written by lower seqs."""
    INSTANCE_REJECTED = "instance_rejected"
    """Rejected at the origin (IHE IOCM): gone there, and no copy may stay or be made."""


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """What a node publishes about one instance it holds."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    transfer_syntax_uid: str
    blob_key: str
    size: int
    collection: str
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    received_at: datetime | None = None
    calling_ae: str = ""


@dataclass(frozen=True, slots=True)
class Change:
    """One change of one origin; ``(origin, seq)`` is its idempotency key."""

    seq: int
    kind: ChangeKind
    record: InstanceRecord | None
    """``None`` only for :attr:`ChangeKind.SUPERSEDED` and :attr:`ChangeKind.STORE_RESET`."""
    reason: str = ""
    """For :attr:`ChangeKind.INSTANCE_REJECTED`: the rejection title's DCM code value."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A grid node as it registered itself."""

    name: str
    ae_title: str
    dicom_host: str = ""
    dicom_port: int = 0
    peer_address: str = ""
    updated_at: datetime | None = None
    last_seen: datetime | None = None


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What a replica acknowledged of one PublishChanges call."""

    high_water_mark: int
    applied: int
    skipped: int


@dataclass(frozen=True, slots=True)
class Watermarks:
    """A replica's per-origin high-water marks and the nodes it knows."""

    replica: str
    marks: dict[str, int]
    nodes: tuple[NodeInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class Holder:
    """One node holding a match in one collection (the future RetrieveAETitle)."""

    node: str
    ae_title: str
    collection: str


@dataclass(frozen=True, slots=True)
class QueryFilter:
    """Grid-wide query filters; empty values match everything.

    ``patient_name`` and ``study_description`` accept ``*``/``?`` wildcards;
    ``study_date`` is a DICOM date or range (``20240101-20240131``, ``-20240131``,
    ``20240101-``). ``collections`` restricts to those collections.
    """

    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    modalities: tuple[str, ...] = ()
    accession_number: str = ""
    study_instance_uids: tuple[str, ...] = ()
    series_instance_uids: tuple[str, ...] = ()
    sop_instance_uids: tuple[str, ...] = ()
    collections: tuple[str, ...] = ()
    study_description: str = ""
    limit: int = 0


@dataclass(frozen=True, slots=True)
class StudyMatch:
    study_instance_uid: str
    attributes: dict[str, AttributeValue]
    modalities_in_study: tuple[str, ...]
    number_of_series: int
    number_of_instances: int
    holders: tuple[Holder, ...]


@dataclass(frozen=True, slots=True)
class SeriesMatch:
    study_instance_uid: str
    series_instance_uid: str
    attributes: dict[str, AttributeValue]
    number_of_instances: int
    holders: tuple[Holder, ...]


@dataclass(frozen=True, slots=True)
class InstanceMatch:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    attributes: dict[str, AttributeValue]
    holders: tuple[Holder, ...]


@dataclass(frozen=True, slots=True)
class InstanceLocation:
    """Where one instance can be fetched from (for a grid C-MOVE)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size: int
    holders: tuple[Holder, ...]
    peer_addresses: tuple[str, ...]
    blob_keys: tuple[str, ...] = ()
    """SHA-256 of each holder's copy, same order as ``holders`` (a researcher's retrieve
    checks files it already has against them)."""
