"""A small, fixed archive (2 patients, 3 studies, 4 series, 9 instances) that queries run on.

Built with ``tests.factories`` so every value a test matches against is visible here:

    ITP001 DOE^JANE    study A 20240615 CT  series A1 (3 CT), series A2 (2 CT)
                       study B 20230101 MR  series B1 (2 MR)
    ITP002 SMITH^JOHN  study C 20250301 CT  series C1 (2 CT)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid
from pynetdicom.dsutils import encode

from tests.factories import StudySpec, make_dataset

IMAGE_SIZE = 16


def dataset_bytes(ds: Dataset) -> bytes:
    """The dataset part (no file meta) as sent over the wire in Explicit VR Little Endian."""
    raw = encode(ds, False, True)
    assert raw is not None, "factory dataset could not be encoded"
    return raw


@dataclass
class Corpus:
    """The datasets of the archive, with the identities tests query by."""

    patients: dict[str, str] = field(default_factory=dict)  # PatientID -> PatientName
    studies: dict[str, StudySpec] = field(default_factory=dict)  # "A" -> spec
    series: dict[str, str] = field(default_factory=dict)  # "A1" -> SeriesInstanceUID
    datasets: list[Dataset] = field(default_factory=list)

    def in_study(self, key: str) -> list[Dataset]:
        uid = self.studies[key].study_uid
        return [ds for ds in self.datasets if ds.StudyInstanceUID == uid]

    def in_series(self, key: str) -> list[Dataset]:
        uid = self.series[key]
        return [ds for ds in self.datasets if ds.SeriesInstanceUID == uid]

    def of_patient(self, patient_id: str) -> list[Dataset]:
        return [ds for ds in self.datasets if ds.PatientID == patient_id]

    def by_uid(self) -> dict[str, Dataset]:
        return {str(ds.SOPInstanceUID): ds for ds in self.datasets}

    def write(self, directory: Path) -> list[Path]:
        """Write every instance as a Part 10 file (one sub-folder per series)."""
        paths = []
        for n, ds in enumerate(self.datasets, 1):
            folder = directory / str(ds.SeriesInstanceUID)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{n:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        return paths


def _add_series(
    corpus: Corpus,
    key: str,
    spec: StudySpec,
    count: int,
    sop_class: str,
    number: int,
    description: str,
) -> None:
    spec_for_series = StudySpec(**{**spec.__dict__, "series_uid": generate_uid()})
    corpus.series[key] = spec_for_series.series_uid
    for n in range(1, count + 1):
        corpus.datasets.append(
            make_dataset(
                spec_for_series,
                instance_number=n,
                rows=IMAGE_SIZE,
                columns=IMAGE_SIZE,
                sop_class_uid=sop_class,
                series_number=number,
                series_description=description,
            )
        )


def build_corpus(prefix: str = "ITP") -> Corpus:
    """A fresh corpus (new UIDs every call) with PatientIDs ``<prefix>001``/``<prefix>002``."""
    corpus = Corpus()
    jane, john = f"{prefix}001", f"{prefix}002"
    corpus.patients = {jane: "DOE^JANE", john: "SMITH^JOHN"}
    corpus.studies["A"] = StudySpec(
        patient_id=jane,
        patient_name="DOE^JANE",
        study_date="20240615",
        accession=f"{prefix}A",
        study_description="CT CHEST",
        modality="CT",
    )
    corpus.studies["B"] = StudySpec(
        patient_id=jane,
        patient_name="DOE^JANE",
        study_date="20230101",
        accession=f"{prefix}B",
        study_description="MR BRAIN",
        modality="MR",
    )
    corpus.studies["C"] = StudySpec(
        patient_id=john,
        patient_name="SMITH^JOHN",
        birth_date="19800202",
        sex="M",
        study_date="20250301",
        accession=f"{prefix}C",
        study_description="CT ABDOMEN",
        modality="CT",
    )
    _add_series(corpus, "A1", corpus.studies["A"], 3, CTImageStorage, 1, "AXIAL")
    _add_series(corpus, "A2", corpus.studies["A"], 2, CTImageStorage, 2, "CORONAL")
    _add_series(corpus, "B1", corpus.studies["B"], 2, MRImageStorage, 1, "T1")
    _add_series(corpus, "C1", corpus.studies["C"], 2, CTImageStorage, 1, "AXIAL")
    return corpus
