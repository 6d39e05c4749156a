"""Synthetic DICOM data for the benchmarks, generated with pydicom and cached on disk.

Two kinds of data: the ingest sets (N instances of one study, 64x64 "small" or 512x512 16-bit
"CT-size") and the query corpus (many studies of tiny 16x16 images with varied patients,
names, dates and modalities, plus a manifest of the study-level values so the query benchmark
can compute the expected number of matches without asking any server).

Everything lands under ``bench/out/`` (git-ignored). A set is complete only once its
``manifest.json`` is written, so an interrupted generation is redone, not half reused.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

OUT_DIR = Path(__file__).resolve().parent / "out"
MANIFEST = "manifest.json"

SOP_CLASS_BY_MODALITY = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "CR": ComputedRadiographyImageStorage,
}
SURNAMES = [
    "ADAMS", "BAKER", "CLARK", "DAVIS", "DOE", "EVANS", "FISCHER", "GARCIA", "HALL", "IVANOV",
    "JONES", "KING", "LEWIS", "MARTIN", "NGUYEN", "OWENS", "PEREZ", "QUINN", "ROBERTS", "SMITH",
    "TAYLOR", "URBAN", "VOGEL", "WALKER", "XAVIER", "YOUNG", "ZIMMER", "MUELLER", "DUPONT",
    "ROSSI", "SILVA", "TANAKA", "KOWALSKI", "NOVAK", "OLSEN", "PETERS", "BROWN", "WILSON",
    "MOORE", "THOMAS",
]  # fmt: skip
GIVEN_NAMES = [
    "ANNA", "BEN", "CARLA", "DAVID", "EVA", "FRANK", "GINA", "HUGO", "IRIS", "JANE", "KARL",
    "LENA", "MARK", "NORA", "OSCAR", "PAULA",
]  # fmt: skip
FIRST_DAY = date(2015, 1, 1)
DAY_SPAN = 3652  # ten years of study dates


@dataclass(frozen=True)
class StudyRow:
    """Study-level values of one generated study, as the manifest records them."""

    study_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    modality: str
    accession: str
    description: str
    instances: int


@dataclass(frozen=True)
class DataSet:
    """A generated set on disk: the directories to send and what they hold."""

    root: Path
    parts: list[Path]
    instances: int
    total_bytes: int
    studies: list[StudyRow]


def _image(study: StudyRow, series_uid: str, number: int, pixels: bytes, size: int) -> Dataset:
    """One complete image instance with 16-bit monochrome pixels."""
    ds = Dataset()
    ds.SOPClassUID = SOP_CLASS_BY_MODALITY[study.modality]
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = study.accession
    ds.StudyID = "1"
    ds.StudyDescription = study.description
    ds.ReferringPhysicianName = "REF^DOC"
    ds.Modality = study.modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.Rows = size
    ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def _pixels(rng: np.random.Generator, size: int) -> bytes:
    # Noise, so nothing along the way can win by compressing it.
    return rng.integers(0, 4096, size * size, dtype=np.uint16).tobytes()


def _load(root: Path) -> DataSet | None:
    manifest = root / MANIFEST
    if not manifest.exists():
        return None
    data = json.loads(manifest.read_text())
    return DataSet(
        root=root,
        parts=[root / p for p in data["parts"]],
        instances=data["instances"],
        total_bytes=data["total_bytes"],
        studies=[StudyRow(**row) for row in data["studies"]],
    )


def _save(root: Path, parts: list[Path], studies: list[StudyRow]) -> DataSet:
    files = [f for part in parts for f in part.rglob("*.dcm")]
    data = {
        "parts": [p.name for p in parts],
        "instances": len(files),
        "total_bytes": sum(f.stat().st_size for f in files),
        "studies": [asdict(s) for s in studies],
    }
    (root / MANIFEST).write_text(json.dumps(data))
    loaded = _load(root)
    assert loaded is not None
    return loaded


def _fresh(root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)


def ingest_set(kind: str, count: int) -> DataSet:
    """``count`` instances of one study: ``small`` (64x64) or ``ct`` (512x512), 16-bit."""
    size = {"small": 64, "ct": 512}[kind]
    root = OUT_DIR / "ingest" / f"{kind}-{count}"
    cached = _load(root)
    if cached is not None:
        return cached
    _fresh(root)
    part = root / "files"
    part.mkdir()
    rng = np.random.default_rng(count)
    study = StudyRow(generate_uid(), "BENCH01", "BENCH^INGEST", "20240615", "CT", "ACC1",
                     f"INGEST {kind.upper()}", count)  # fmt: skip
    series_uid = generate_uid()
    for number in range(1, count + 1):
        ds = _image(study, series_uid, number, _pixels(rng, size), size)
        ds.save_as(part / f"{number:06d}.dcm", enforce_file_format=True)
    return _save(root, [part], [study])


def _studies(count: int, per_study: int, seed: int) -> Iterator[StudyRow]:
    rng = random.Random(seed)
    patients = max(1, count // 2)  # about two studies per patient
    for n in range(count):
        p = rng.randrange(patients)
        name_rng = random.Random(p)  # a patient keeps one name across studies
        name = f"{name_rng.choice(SURNAMES)}^{name_rng.choice(GIVEN_NAMES)}"
        day = FIRST_DAY + timedelta(days=rng.randrange(DAY_SPAN))
        modality = rng.choice(list(SOP_CLASS_BY_MODALITY))
        yield StudyRow(
            study_uid=generate_uid(),
            patient_id=f"P{p:06d}",
            patient_name=name,
            study_date=day.strftime("%Y%m%d"),
            modality=modality,
            accession=f"A{n:07d}",
            description=f"{modality} STUDY {n % 17}",
            instances=per_study,
        )


def query_corpus(instances: int, per_study: int = 50, parts: int = 4) -> DataSet:
    """About ``instances`` tiny (16x16) images in studies of ``per_study``.

    One directory per study (spread over ``parts`` directories to keep listings short), so
    several ``storescu`` processes can each be given a disjoint set of whole studies.
    """
    n_studies = max(1, instances // per_study)
    root = OUT_DIR / f"corpus-{n_studies}x{per_study}"
    cached = _load(root)
    if cached is not None:
        return cached
    _fresh(root)
    part_dirs = [root / f"part-{i}" for i in range(parts)]
    for part in part_dirs:
        part.mkdir()
    pixels = bytes(range(256)) * 2  # 16x16x2 bytes; content is irrelevant at this size
    studies = list(_studies(n_studies, per_study, seed=instances))
    for i, study in enumerate(studies):
        study_dir = part_dirs[i % parts] / f"s{i:06d}"
        study_dir.mkdir()
        series_uid = generate_uid()
        for number in range(1, per_study + 1):
            ds = _image(study, series_uid, number, pixels, 16)
            ds.save_as(study_dir / f"{number:03d}.dcm", enforce_file_format=True)
    return _save(root, part_dirs, studies)
