"""The quick header path reads exactly what pydicom's path reads, or leaves it to pydicom.

Ingest reads plain Part 10 bytes without pydicom (``node.services.header``); whatever that
path accepts must give the very fields pydicom's path gives (they become the index row and
the catalog's outbox payload), and whatever pydicom's path refuses the quick path must not
accept. Datasets here are generated with random values, encodings and structures.
"""

from __future__ import annotations

import contextlib
import io
import random

import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from node.errors import IngestError
from node.services import ingest
from node.services.ingest import StoreRequest
from tests.factories import StudySpec, make_dataset

_TEXT = [chr(c) for c in range(0x20, 0x7F)] + [" ", " ", "\\", "=", "^", "\x00"]
_KEYWORDS = {
    "PatientName": "PN",
    "PatientID": "LO",
    "IssuerOfPatientID": "LO",
    "PatientBirthDate": "DA",
    "PatientSex": "CS",
    "StudyDate": "DA",
    "StudyTime": "TM",
    "AccessionNumber": "SH",
    "StudyID": "SH",
    "StudyDescription": "LO",
    "ReferringPhysicianName": "PN",
    "Modality": "CS",
    "SeriesDescription": "LO",
    "BodyPartExamined": "CS",
    "SeriesDate": "DA",
    "SeriesTime": "TM",
    "ContentDate": "DA",
    "ContentTime": "TM",
}
_INTEGERS = ["12", " 7", "+3", "-0", "1\\2", "abc", "", "12.0", "123456789012", "  "]


def _slow(data: bytes) -> object:
    """pydicom's path: the fields, or the refusal's type."""
    svc = ingest.IngestService(None, None, None, max_instance_bytes=10**9)  # type: ignore[arg-type]
    try:
        ds = ingest.read_complete(data)
        _, ds = svc._checked(_request(ds, data))
        return ingest._fields_from(ds)
    except IngestError as exc:
        return type(exc)


def _request(ds: Dataset, data: bytes) -> StoreRequest:
    return StoreRequest(
        data, "A", "B", str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
    )


def _random_text(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return "".join(rng.choice("ABCDE^ 12") for _ in range(rng.randint(1, 10)))
    if kind < 0.5:
        return "x" * rng.choice([16, 17, 64, 65, 70])
    if kind < 0.55:
        return "caf\u00e9"
    return "".join(rng.choice(_TEXT) for _ in range(rng.randint(0, 14)))


def _item(rng: random.Random, depth: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    if depth < 2 and rng.random() < 0.5:
        item.ReferencedImageSequence = _sequence(rng, depth + 1)
    item.is_undefined_length_sequence_item = rng.random() < 0.5
    return item


def _sequence(rng: random.Random, depth: int = 0) -> Sequence:
    seq = Sequence([_item(rng, depth) for _ in range(rng.randint(0, 3))])
    seq.is_undefined_length = rng.random() < 0.5
    return seq


def _random_dataset(rng: random.Random) -> tuple[Dataset, str]:
    ds = make_dataset(StudySpec(), charset=rng.choice([None, None, "ISO_IR 100", "ISO_IR 192"]))
    for keyword, vr in _KEYWORDS.items():
        roll = rng.random()
        if roll < 0.1:
            ds.pop(keyword, None)
        elif roll < 0.2:
            ds[keyword] = DataElement(keyword, vr, _random_text(rng))
    for keyword in ("SeriesNumber", "InstanceNumber", "NumberOfFrames"):
        if rng.random() < 0.2:
            with contextlib.suppress(ValueError):  # pydicom refuses some outright
                ds[keyword] = DataElement(keyword, "IS", rng.choice(_INTEGERS))
    if rng.random() < 0.1:
        ds.SeriesInstanceUID = rng.choice(["", "1.2.abc", "1.2.3 ", "1.2\\1.3"])
    if rng.random() < 0.5:
        ds.ReferencedImageSequence = _sequence(rng)
    if rng.random() < 0.3:
        block = ds.private_block(0x0009, "GRIDPACS TEST", create=True)
        block.add_new(0x01, "LO", _random_text(rng))
    syntax = rng.choice(
        [ExplicitVRLittleEndian] * 3
        + [ImplicitVRLittleEndian] * 2
        + [JPEGBaseline8Bit, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian]
    )
    if syntax == JPEGBaseline8Bit:
        frames = [bytes(rng.randrange(256) for _ in range(2 * rng.randint(1, 20)))]
        ds.PixelData = encapsulate(frames)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    return ds, syntax


def _encoded(ds: Dataset, syntax: str) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.filterwarnings("ignore")
def test_quick_fields_equal_pydicoms_or_are_declined() -> None:
    rng = random.Random(20261124)
    quick = 0
    for _ in range(400):
        ds, syntax = _random_dataset(rng)
        try:
            data = _encoded(ds, syntax)
        except (ValueError, UnicodeEncodeError, NotImplementedError):
            continue  # pydicom would not write it; nothing a peer could send as is
        fields = ingest._quick_fields(data)
        if fields is None:
            continue
        quick += 1
        assert _slow(data) == fields, syntax
        if syntax in (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian):
            pytest.fail(f"{syntax} must be left to pydicom")
    assert quick > 100  # the quick path is the common one, not a corner


@pytest.mark.filterwarnings("ignore")
def test_plain_datasets_take_the_quick_path_in_every_little_endian_syntax() -> None:
    rng = random.Random(7)
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit):
        ds = make_dataset(StudySpec(patient_name="DOE^JANE^^^"), instance_number=3)
        ds.ReferencedImageSequence = _sequence(rng)
        ds.ReferencedImageSequence.is_undefined_length = True
        if syntax == JPEGBaseline8Bit:
            ds.PixelData = encapsulate([b"\xff\xd8" * 40, b"\xff\xd9" * 8])
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
        data = _encoded(ds, syntax)
        fields = ingest._quick_fields(data)
        assert fields is not None, syntax
        assert fields == _slow(data)
        assert fields.attributes["PatientName"] == "DOE^JANE^^^"  # as sent
        assert fields.attributes["InstanceNumber"] == 3
        assert fields.attributes["Rows"] == 64
        assert fields.transfer_syntax_uid == syntax


@pytest.mark.filterwarnings("ignore")
def test_cut_or_padded_bytes_are_never_read_differently() -> None:
    """Every truncation and a few trailing extras: declined, or (cut exactly between
    two elements, which pydicom's path accepts too) read the same."""
    rng = random.Random(3)
    ds = make_dataset(StudySpec())
    ds.ReferencedImageSequence = _sequence(rng)
    ds.ReferencedImageSequence.is_undefined_length = True
    ds.PixelData = encapsulate([b"\x01\x02" * 30])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    data = _encoded(ds, JPEGBaseline8Bit)
    assert ingest._quick_fields(data) is not None
    accepted = 0
    for cut in range(len(data) - 1, 131, -1):
        fields = ingest._quick_fields(data[:cut])
        if fields is not None:
            accepted += 1
            assert _slow(data[:cut]) == fields
    for extra in (b"\x00", b"\x00" * 7, b"\xfe\xff\x0d\xe0\x00\x00\x00\x00", b"garbage!"):
        assert ingest._quick_fields(data + extra) is None
    assert accepted < 40  # only element boundaries before the pixel data


def test_settings_the_quick_path_does_not_mirror_send_it_to_pydicom(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = _encoded(make_dataset(StudySpec()), ExplicitVRLittleEndian)
    assert ingest._quick_fields(data) is not None
    monkeypatch.setattr(ingest.pydicom_config, "datetime_conversion", True)
    assert ingest._quick_fields(data) is None


def test_a_character_set_with_code_extensions_goes_to_pydicom() -> None:
    ds = make_dataset(StudySpec(patient_name="YAMADA^TARO"))
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    data = _encoded(ds, ExplicitVRLittleEndian)
    assert ingest._quick_fields(data) is None
    fields = _slow(data)
    assert isinstance(fields, ingest._Fields)
    assert fields.attributes["PatientName"] == "YAMADA^TARO"
