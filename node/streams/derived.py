"""A command's DICOM outputs → a derived series of the source study.

Whatever the command wrote, the stored result is unambiguous: every output series gets a
new SeriesInstanceUID and every instance a new SOPInstanceUID (``2.25.`` UUID-derived, so
no UID root is needed), the patient and study are the source's, ImageType says DERIVED,
and ReferencedSeriesSequence / SourceImageSequence point at the input. An output that kept
its input's SOPInstanceUID (an algorithm that edits images in place) references exactly
that source image; others reference what they already reference, or the whole input.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, generate_uid

from node.structlog import log_event

LOG = logging.getLogger("gridpacs.node.streams.derived")

# Patient and General Study modules: copied from the source so the result joins its study.
STUDY_KEYWORDS = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)


@dataclass(frozen=True, slots=True)
class SourceImage:
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str


@dataclass
class SourceStudy:
    """What the derived series refers to: the input's images and its study attributes."""

    study: Dataset
    images: list[SourceImage] = field(default_factory=list)

    @classmethod
    def from_files(cls, paths: Sequence[Path]) -> SourceStudy:
        study = Dataset()
        images: list[SourceImage] = []
        for path in paths:
            ds = dcmread(path, stop_before_pixels=True)
            if not images:
                for keyword in STUDY_KEYWORDS:
                    if keyword in ds:
                        study[keyword] = ds[keyword]
            images.append(
                SourceImage(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID))
            )
        return cls(study, images)

    @property
    def series_uids(self) -> list[str]:
        return list(dict.fromkeys(img.series_instance_uid for img in self.images))


@dataclass
class DerivedSeries:
    files: list[Path]
    series_instance_uids: list[str]
    skipped: list[tuple[Path, str]]


def derivation_prefix(stream: str) -> str:
    """How DerivationDescription starts on every instance ``stream`` produced."""
    return f"gridpacs stream {stream} "


def drop_own_outputs(paths: Sequence[Path], stream: str) -> int:
    """Delete the input files that ``stream`` itself derived earlier; returns how many.

    A study keeps its derived series, so a retry or a second run of a stream would
    otherwise take its own earlier results as input (and derive from them again). Results
    of other streams stay: streams may be chained.
    """
    prefix = derivation_prefix(stream)
    dropped = 0
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["DerivationDescription"])
        if str(ds.get("DerivationDescription", "")).startswith(prefix):
            path.unlink()
            dropped += 1
    return dropped


def new_uid() -> UID:
    """A ``2.25.`` UID from a random UUID (PS3.5 B.2): unique without an organisation root."""
    return generate_uid(prefix=None)


def derive(
    outputs: Sequence[Path], source: SourceStudy, target_dir: Path, *, description: str
) -> DerivedSeries:
    """Rewrite each DICOM output into ``target_dir``; non-DICOM files are skipped (logged)."""
    target_dir.mkdir(parents=True, exist_ok=True)
    by_sop = {img.sop_instance_uid: img for img in source.images}
    series_map: dict[str, UID] = {}
    result = DerivedSeries([], [], [])
    for n, path in enumerate(sorted(outputs), 1):
        try:
            ds = dcmread(path)
            original_series = str(ds.SeriesInstanceUID)
            original_sop = str(ds.SOPInstanceUID)
            _ = ds.SOPClassUID
        except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
            result.skipped.append((path, f"not a DICOM instance: {exc}"))
            log_event(
                LOG,
                "stream_output_skipped",
                level=logging.WARNING,
                file=path.name,
                reason=str(exc)[:200],
            )
            continue
        series_uid = series_map.setdefault(original_series, new_uid())
        _make_derived(ds, source, by_sop.get(original_sop), series_uid, description)
        out = target_dir / f"{n:05d}.dcm"
        ds.save_as(out, enforce_file_format=True)
        result.files.append(out)
    result.series_instance_uids = [str(uid) for uid in series_map.values()]
    return result


def _make_derived(
    ds: Dataset,
    source: SourceStudy,
    same_image: SourceImage | None,
    series_uid: UID,
    description: str,
) -> None:
    for elem in source.study:
        ds[elem.keyword] = elem
    ds.SeriesInstanceUID = series_uid
    new_sop = new_uid()
    ds.SOPInstanceUID = new_sop
    ds.file_meta.MediaStorageSOPInstanceUID = new_sop
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    image_type = list(ds.get("ImageType") or [])
    ds.ImageType = [
        "DERIVED",
        image_type[1] if len(image_type) > 1 else "SECONDARY",
        *image_type[2:],
    ]
    ds.DerivationDescription = description[:1024]
    ds.ReferencedSeriesSequence = DicomSequence(
        [_item(SeriesInstanceUID=uid) for uid in source.series_uids]
    )
    if same_image is not None:
        sources = [same_image]
    elif "SourceImageSequence" in ds and len(ds.SourceImageSequence):
        return
    else:
        sources = source.images
    ds.SourceImageSequence = DicomSequence(
        [
            _item(
                ReferencedSOPClassUID=img.sop_class_uid,
                ReferencedSOPInstanceUID=img.sop_instance_uid,
            )
            for img in sources
        ]
    )


def _item(**values: str) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item
