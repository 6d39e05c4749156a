"""DICOM datasets built in code (no downloads), with and without planted PHI."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)


@dataclass
class StudySpec:
    """Identity of a synthetic study; UIDs are generated unless given."""

    patient_id: str = "PAT001"
    patient_name: str = "DOE^JANE"
    birth_date: str = "19700101"
    sex: str = "F"
    study_date: str = "20240615"
    study_time: str = "101500"
    accession: str = "ACC001"
    study_description: str = "CT CHEST"
    modality: str = "CT"
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)


def make_dataset(
    spec: StudySpec | None = None,
    *,
    instance_number: int = 1,
    sop_uid: str | None = None,
    rows: int = 64,
    columns: int = 64,
    sop_class_uid: str = CTImageStorage,
    series_number: int = 1,
    series_description: str = "AXIAL",
    charset: str | None = None,
) -> Dataset:
    """A complete, valid image instance (16-bit monochrome pixels)."""
    spec = spec or StudySpec()
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = spec.birth_date
    ds.PatientSex = spec.sex
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.StudyDate = spec.study_date
    ds.StudyTime = spec.study_time
    ds.SeriesDate = spec.study_date
    ds.AccessionNumber = spec.accession
    ds.StudyID = "1"
    ds.StudyDescription = spec.study_description
    ds.ReferringPhysicianName = "REF^DOC"
    ds.Modality = spec.modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.BodyPartExamined = "CHEST"
    ds.InstanceNumber = instance_number
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = (bytes([instance_number % 251, 7]) * (rows * columns))[: rows * columns * 2]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def to_bytes(ds: Dataset) -> bytes:
    """Part 10 file bytes of ``ds``."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_study(
    directory: str, count: int, spec: StudySpec | None = None, **kwargs: object
) -> list[Dataset]:
    """Write ``count`` instances of one series as files into ``directory``."""
    import os

    spec = spec or StudySpec()
    out = []
    for n in range(1, count + 1):
        ds = make_dataset(spec, instance_number=n, **kwargs)  # type: ignore[arg-type]
        ds.save_as(os.path.join(directory, f"{n:05d}.dcm"), enforce_file_format=True)
        out.append(ds)
    return out


ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
_IMAGE_PIXEL = ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation")  # fmt: skip


def make_pdf_document(spec: StudySpec | None = None, *, text: str = "DOE^JANE") -> Dataset:
    """An Encapsulated PDF instance (a scanned request, a dose report) whose page names
    ``text``: what de-identification cannot clean."""
    ds = make_dataset(spec, sop_class_uid=ENCAPSULATED_PDF)
    for keyword in _IMAGE_PIXEL:
        if keyword in ds:
            delattr(ds, keyword)
    page = f"BT /F1 12 Tf 72 712 Td (Patient: {text}) Tj ET"
    content = f"1 0 obj << /Length {len(page)} >>\nstream\n{page}\nendstream\nendobj"
    ds.EncapsulatedDocument = f"%PDF-1.4\n{content}\n%%EOF\n".encode()
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.DocumentTitle = "Request"
    return ds


ULTRASOUND_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
#: Text a scanner burns into the top rows of an ultrasound image (see make_ultrasound).
BANNER_TEXT = b"DOE^JANE MRN 4417-22 1961-04-02 ST.ELSEWHERE "


def make_ultrasound(
    spec: StudySpec | None = None,
    *,
    rows: int = 120,
    columns: int = 160,
    frames: int = 2,
    samples: int = 3,
    planar: int = 0,
    banner_rows: int = 20,
    manufacturer: str = "Philips Medical Systems",
    model: str = "iU22",
) -> Dataset:
    """A native multi-frame ultrasound image whose top ``banner_rows`` rows carry
    :data:`BANNER_TEXT` as pixel bytes, in every frame and sample plane, the way a
    scanner's patient banner reaches the pixels; below, a gradient without text."""
    ds = make_dataset(spec, rows=rows, columns=columns, sop_class_uid=ULTRASOUND_MULTIFRAME)
    ds.Modality = "US"
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples > 1:
        ds.PlanarConfiguration = planar
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.NumberOfFrames = frames
    width = columns * (1 if planar == 1 else samples)  # bytes of a row of one plane
    planes = samples if planar == 1 else 1
    plane = bytearray((x * 7 + y) % 200 + 1 for y in range(rows) for x in range(width))
    banner = BANNER_TEXT * (banner_rows * width // len(BANNER_TEXT) + 1)
    plane[: banner_rows * width] = banner[: banner_rows * width]
    frame = bytes(plane) * planes
    ds.PixelData = frame * frames
    return ds


def as_jpeg_baseline(ds: Dataset, quality: int = 95) -> Dataset:
    """``ds`` (8-bit RGB, interleaved, from :func:`make_ultrasound`) with its frames encoded
    as JPEG Baseline by Pillow, YBR_FULL_422 as ultrasound scanners send them."""
    import numpy as np
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    shape = (int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns), 3)
    frames = []
    for frame in np.frombuffer(ds.PixelData, dtype=np.uint8).reshape(shape):
        encoded = io.BytesIO()
        Image.fromarray(frame).save(encoded, format="JPEG", quality=quality)
        frames.append(encoded.getvalue())
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return ds


KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
REJECTION_MEANINGS = {
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}


def make_rejection_note(
    rejected: list[Dataset], *, code: str = "113001", scheme: str = "DCM"
) -> Dataset:
    """An IHE IOCM rejection note: a Key Object Selection Document titled ``code`` (CID
    7011) listing ``rejected``, filed in their (first) study and patient as a new series,
    the way a modality or a PACS workstation writes one."""
    first = rejected[0]
    ds = Dataset()
    ds.SOPClassUID = KEY_OBJECT_SELECTION
    ds.SOPInstanceUID = generate_uid()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber",
                    "StudyID", "ReferringPhysicianName"):  # fmt: skip
        if keyword in first:
            setattr(ds, keyword, first.data_element(keyword).value)  # type: ignore[union-attr]
    ds.Modality = "KO"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 999
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = "20240616", "120000"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    title = Dataset()
    title.CodeValue = code
    title.CodingSchemeDesignator = scheme
    title.CodeMeaning = REJECTION_MEANINGS.get(code, "Of Interest")
    ds.ConceptNameCodeSequence = [title]
    studies: dict[str, dict[str, list[Dataset]]] = {}
    for item in rejected:
        series = studies.setdefault(str(item.StudyInstanceUID), {})
        series.setdefault(str(item.SeriesInstanceUID), []).append(item)
    evidence = []
    content = []
    for study_uid, by_series in studies.items():
        study = Dataset()
        study.StudyInstanceUID = study_uid
        study.ReferencedSeriesSequence = []
        for series_uid, items in by_series.items():
            series = Dataset()
            series.SeriesInstanceUID = series_uid
            series.ReferencedSOPSequence = []
            for item in items:
                ref = Dataset()
                ref.ReferencedSOPClassUID = item.SOPClassUID
                ref.ReferencedSOPInstanceUID = item.SOPInstanceUID
                series.ReferencedSOPSequence.append(ref)
                entry = Dataset()
                entry.RelationshipType = "CONTAINS"
                entry.ValueType = "IMAGE"
                entry.ReferencedSOPSequence = [ref]
                content.append(entry)
            study.ReferencedSeriesSequence.append(series)
        evidence.append(study)
    ds.CurrentRequestedProcedureEvidenceSequence = evidence
    ds.ContentSequence = content
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds
