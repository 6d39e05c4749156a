"""The node's own file-meta encoder must write exactly what pynetdicom writes.

A blob's address is the SHA-256 of its Part 10 bytes: if the fast path and pynetdicom's
encoder ever differed, the same instance received twice could be stored twice.
"""

from __future__ import annotations

import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
)
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from node.dicom.part10 import PREAMBLE, file_meta, part10


def _pynetdicom(sop_class: object, sop_instance: object, syntax: object) -> bytes:
    meta = create_file_meta(
        sop_class_uid=sop_class,  # type: ignore[arg-type]
        sop_instance_uid=sop_instance,  # type: ignore[arg-type]
        transfer_syntax=syntax,  # type: ignore[arg-type]
    )
    return bytes(encode_file_meta(meta))


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless]
)
@pytest.mark.parametrize("sop_class", [CTImageStorage, MRImageStorage])
@pytest.mark.parametrize(
    "instance",
    ["1.2.3", "1.2.34", "2.25.1234567890123456789012345678901234567", "1." + "2" * 62],
)
def test_file_meta_is_byte_identical_to_pynetdicom(
    sop_class: str, instance: str, syntax: str
) -> None:
    assert file_meta(sop_class, instance, syntax) == _pynetdicom(sop_class, instance, syntax)


@pytest.mark.parametrize("odd", ["1.2.3 ", "1.2.x", "1." + "2" * 70])
def test_unexpected_values_take_pynetdicoms_encoder(odd: str) -> None:
    expected = _pynetdicom(CTImageStorage, odd, ExplicitVRLittleEndian)
    assert file_meta(CTImageStorage, odd, ExplicitVRLittleEndian) == expected


def test_an_empty_uid_fails_as_in_pynetdicom() -> None:
    with pytest.raises(AttributeError):
        _pynetdicom(CTImageStorage, "", ExplicitVRLittleEndian)
    with pytest.raises(AttributeError):
        file_meta(CTImageStorage, "", ExplicitVRLittleEndian)


def test_part10_is_preamble_meta_dataset() -> None:
    body = b"\x08\x00\x16\x00UI\x02\x001\x00"
    out = part10(CTImageStorage, "1.2.3", ExplicitVRLittleEndian, body)
    assert out == PREAMBLE + _pynetdicom(CTImageStorage, "1.2.3", ExplicitVRLittleEndian) + body
