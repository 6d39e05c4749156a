"""The engine: determinism, unlinkability, consistency, references, marking, pixels."""

from __future__ import annotations

import copy
import io

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
)

from anonymizer import BurnedInAnnotation, Deidentifier, EncapsulatedDocument, load_profile
from tests.anonymizer.conftest import SITE_A, SITE_B
from tests.factories import StudySpec, make_dataset, make_pdf_document, to_bytes


def _run(data: bytes, secret: bytes = SITE_A, options: tuple[str, ...] = ()) -> Dataset:
    deid = Deidentifier(load_profile(options=options), secret)
    return dcmread(io.BytesIO(deid.deidentify_bytes(data)))


def _uids(ds: Dataset) -> set[str]:
    return {str(e.value) for e in ds.iterall() if e.VR == "UI" and e.value}


def test_same_input_and_secret_give_byte_identical_output() -> None:
    data = to_bytes(make_dataset())
    first = Deidentifier(load_profile(), SITE_A).deidentify_bytes(data)
    second = Deidentifier(load_profile(), SITE_A).deidentify_bytes(data)
    assert first == second
    assert Deidentifier(load_profile(), SITE_A).deidentify_bytes(data) == first


def test_another_sites_secret_gives_unlinkable_output() -> None:
    data = to_bytes(make_dataset())
    a, b = _run(data, SITE_A), _run(data, SITE_B)
    assert a.PatientID != b.PatientID
    assert a.PatientName != b.PatientName
    standard = {a.SOPClassUID, a.file_meta.TransferSyntaxUID, a.file_meta.ImplementationClassUID}
    assert (_uids(a) - standard) & (_uids(b) - standard) == set()
    assert all(u.startswith("2.25.") for u in _uids(a) - standard)


def test_resends_series_and_later_studies_of_a_patient_line_up() -> None:
    first = StudySpec()
    series2 = StudySpec(study_uid=first.study_uid)  # same study, another series
    later = StudySpec(study_date="20250101")  # a later study of the same patient
    other = StudySpec(patient_id="PAT999", patient_name="ROE^RICHARD")
    outs = [_run(to_bytes(make_dataset(s))) for s in (first, first, series2, later, other)]
    one, resend, same_study, later_study, other_patient = outs
    assert resend.SOPInstanceUID != one.SOPInstanceUID  # make_dataset drew a new instance
    again = _run(to_bytes(make_dataset(first, sop_uid="1.2.3.4")))
    assert (
        again.SOPInstanceUID
        == _run(to_bytes(make_dataset(first, sop_uid="1.2.3.4"))).SOPInstanceUID
    )
    assert one.StudyInstanceUID == resend.StudyInstanceUID == same_study.StudyInstanceUID
    assert one.SeriesInstanceUID == resend.SeriesInstanceUID != same_study.SeriesInstanceUID
    assert one.PatientID == same_study.PatientID == later_study.PatientID
    assert one.PatientName == later_study.PatientName
    assert later_study.StudyInstanceUID != one.StudyInstanceUID
    assert other_patient.PatientID != one.PatientID


def test_references_inside_sequences_stay_consistent() -> None:
    spec = StudySpec()
    image = make_dataset(spec, instance_number=1)
    image.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.999.77"
    derived = make_dataset(spec, instance_number=2, series_number=2)
    derived.FrameOfReferenceUID = image.FrameOfReferenceUID
    ref = Dataset()
    ref.ReferencedSOPClassUID = image.SOPClassUID
    ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
    derived.ReferencedImageSequence = Sequence([ref])
    source = Dataset()
    source.ReferencedSOPClassUID = image.SOPClassUID
    source.ReferencedSOPInstanceUID = image.SOPInstanceUID
    derived.SourceImageSequence = Sequence([source])
    study_ref = Dataset()
    study_ref.ReferencedSOPInstanceUID = spec.study_uid
    derived.ReferencedStudySequence = Sequence([study_ref])
    a, b = _run(to_bytes(image)), _run(to_bytes(derived))
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert b.SourceImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPClassUID == image.SOPClassUID
    assert b.FrameOfReferenceUID == a.FrameOfReferenceUID != image.FrameOfReferenceUID
    assert b.file_meta.MediaStorageSOPInstanceUID == b.SOPInstanceUID
    kept = _run(to_bytes(derived), options=("retain-uids",))
    assert kept.ReferencedImageSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert kept.SOPInstanceUID == derived.SOPInstanceUID


@pytest.mark.parametrize(
    ("options", "codes", "temporal"),
    [
        ((), ["113100"], "REMOVED"),
        (("retain-longitudinal-modified-dates",), ["113100", "113107"], "MODIFIED"),
        (("retain-longitudinal-full-dates",), ["113100", "113106"], "UNMODIFIED"),
        (
            ("retain-safe-private", "retain-uids", "clean-descriptors", "retain-device-identity",
             "retain-institution-identity", "retain-patient-characteristics"),
            ["113100", "113108", "113109", "113112", "113110", "113105", "113111"],
            "REMOVED",
        ),
    ],
)  # fmt: skip
def test_marking_lists_profile_and_options(
    options: tuple[str, ...], codes: list[str], temporal: str
) -> None:
    out = _run(to_bytes(make_dataset()), options=options)
    assert out.PatientIdentityRemoved == "YES"
    items = out.DeidentificationMethodCodeSequence
    assert [i.CodeValue for i in items] == codes
    assert {i.CodingSchemeDesignator for i in items} == {"DCM"}
    assert items[0].CodeMeaning == "Basic Application Confidentiality Profile"
    methods = out.DeidentificationMethod
    methods = [methods] if isinstance(methods, str) else list(methods)
    assert len(methods) == len(codes)
    assert out.LongitudinalTemporalInformationModified == temporal


def test_modified_dates_shift_consistently_per_patient() -> None:
    opts = ("retain-longitudinal-modified-dates",)
    first = _run(to_bytes(make_dataset(StudySpec(study_date="20240615"))), options=opts)
    later = _run(to_bytes(make_dataset(StudySpec(study_date="20240715"))), options=opts)
    other = _run(
        to_bytes(make_dataset(StudySpec(patient_id="P2", study_date="20240615"))), options=opts
    )
    assert first.StudyDate != "20240615"
    import datetime as dt

    def day(text: str) -> dt.date:
        return dt.datetime.strptime(text, "%Y%m%d").date()

    assert (day(later.StudyDate) - day(first.StudyDate)).days == 30  # intervals kept
    assert first.StudyDate != other.StudyDate  # each patient has its own shift
    assert first.StudyTime == "101500"  # a whole-day shift keeps the time
    assert first.PatientBirthDate == ""  # not covered by the option: still Z


def test_burned_in_annotation_is_refused_unless_allowed() -> None:
    ds = make_dataset()
    ds.BurnedInAnnotation = "YES"
    data = to_bytes(ds)
    with pytest.raises(BurnedInAnnotation):
        Deidentifier(load_profile(), SITE_A).deidentify_bytes(data)
    allowed = Deidentifier(load_profile(), SITE_A, allow_burned_in=True).deidentify_bytes(data)
    assert dcmread(io.BytesIO(allowed)).BurnedInAnnotation == "YES"
    ds.BurnedInAnnotation = "NO"
    Deidentifier(load_profile(), SITE_A).deidentify_bytes(to_bytes(ds))


def test_an_encapsulated_document_is_refused_on_both_paths_unless_allowed() -> None:
    data = to_bytes(make_pdf_document(text="DOE^JANE"))
    deid = Deidentifier(load_profile(), SITE_A)
    with pytest.raises(EncapsulatedDocument, match="application/pdf"):
        deid.deidentify_part10(data)  # the fast path
    with pytest.raises(EncapsulatedDocument):
        deid.deidentify_general(data)
    with pytest.raises(EncapsulatedDocument):
        deid.deidentify(dcmread(io.BytesIO(data)))
    allowed = Deidentifier(load_profile(), SITE_A, allow_documents=True)
    out = dcmread(io.BytesIO(allowed.deidentify_part10(data).data))
    assert out.EncapsulatedDocument == dcmread(io.BytesIO(data)).EncapsulatedDocument
    assert out.PatientID != make_pdf_document().PatientID  # the header is still de-identified


def test_pixels_and_transfer_syntax_pass_through_untouched() -> None:
    native = make_dataset(rows=32, columns=32)
    out = _run(to_bytes(native))
    assert out.PixelData == native.PixelData
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian

    implicit = make_dataset()
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out = _run(to_bytes(implicit))
    assert out.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert out.PixelData == implicit.PixelData and out.PatientID.startswith("GP")

    jpeg = make_dataset(sop_class_uid=MRImageStorage)
    jpeg.BitsAllocated = jpeg.BitsStored = 8
    jpeg.HighBit = 7
    jpeg.PixelData = encapsulate(
        [b"\xff\xd8\xff\xda\x00\x02fake-frame-one\xff\xd9", b"\xff\xd8\xff\xda\x00\x02two\xff\xd9"]
    )
    jpeg["PixelData"].VR = "OB"
    jpeg.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    out = _run(to_bytes(jpeg))
    assert out.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert out.PixelData == jpeg.PixelData


def test_deidentify_returns_a_new_dataset_and_leaves_the_input_alone() -> None:
    ds = make_dataset()
    before = copy.deepcopy(ds)
    out = Deidentifier(load_profile(), SITE_A).deidentify(ds)
    assert ds == before
    assert out is not ds and out.PatientID != ds.PatientID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_a_dataset_read_from_bytes_and_from_code_give_the_same_result() -> None:
    ds = make_dataset()
    from_code = Deidentifier(load_profile(), SITE_A).deidentify(ds)
    from_bytes = _run(to_bytes(ds))
    assert from_code.PatientID == from_bytes.PatientID
    assert from_code.SOPInstanceUID == from_bytes.SOPInstanceUID
    assert "PatientBirthDate" in from_code and from_code.PatientBirthDate in ("", None)


def test_deflated_input_goes_through_pydicom_and_stays_deflated() -> None:
    ds = make_dataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = _run(to_bytes(ds))
    assert out.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert out.PixelData == ds.PixelData
    assert out.PatientID.startswith("GP") and out.PatientIdentityRemoved == "YES"
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
