"""Mark a de-identified instance with what was done to it (PS3.15 E.1.1, PS3.3 C.7.1.1).

The marking is the same for every instance of a profile, so it is encoded once per
source encoding as immutable raw elements (the code sequence included) and shared.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from anonymizer.elements import Encoding, ascii_element
from anonymizer.profiles import Method, Profile

PATIENT_IDENTITY_REMOVED = BaseTag(0x00120062)
DEIDENTIFICATION_METHOD = BaseTag(0x00120063)
DEIDENTIFICATION_METHOD_CODES = BaseTag(0x00120064)
TEMPORAL_MODIFIED = BaseTag(0x00280303)
_CODE_ITEM = ((0x00080100, "SH"), (0x00080102, "SH"), (0x00080104, "LO"))


def marking_elements(profile: Profile, encoding: Encoding) -> dict[BaseTag, Any]:
    """PatientIdentityRemoved, DeidentificationMethod (+ code sequence), temporal flag."""
    implicit, little = encoding
    if implicit is None or not little:
        return _decoded_marking(profile, encoding)
    marking = _raw_marking(profile.methods, tuple(profile.description), profile.temporal, implicit)
    return dict(marking)


@lru_cache(maxsize=64)
def _raw_marking(
    methods: tuple[Method, ...], description: tuple[str, ...], temporal: str, implicit: bool
) -> tuple[tuple[BaseTag, Any], ...]:
    encoding = (implicit, True)
    items = b""
    for method in methods:
        body = b"".join(
            _encode(tag, vr, value, implicit)
            for (tag, vr), value in zip(
                _CODE_ITEM, (method.code, "DCM", method.meaning), strict=True
            )
        )
        items += struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body
    codes = RawDataElement(
        DEIDENTIFICATION_METHOD_CODES,
        None if implicit else "SQ",
        len(items),
        items,
        0,
        implicit,
        True,
        True,
        False,
    )
    return (
        (
            PATIENT_IDENTITY_REMOVED,
            ascii_element(PATIENT_IDENTITY_REMOVED, "CS", ["YES"], encoding),
        ),
        (
            DEIDENTIFICATION_METHOD,
            ascii_element(DEIDENTIFICATION_METHOD, "LO", list(description), encoding),
        ),
        (DEIDENTIFICATION_METHOD_CODES, codes),
        (TEMPORAL_MODIFIED, ascii_element(TEMPORAL_MODIFIED, "CS", [temporal], encoding)),
    )


def _encode(tag: int, vr: str, value: str, implicit: bool) -> bytes:
    data = value.encode("ascii", "replace")
    if len(data) % 2:
        data += b" "
    if implicit:
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(data)) + data
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(data)) + data


def _decoded_marking(profile: Profile, encoding: Encoding) -> dict[BaseTag, Any]:
    """The same marking as pydicom elements, for datasets of unknown encoding."""
    items = []
    for method in profile.methods:
        item = Dataset()
        for (tag, vr), value in zip(_CODE_ITEM, (method.code, "DCM", method.meaning), strict=True):
            item[tag] = DataElement(tag, vr, value)
        items.append(item)
    return {
        PATIENT_IDENTITY_REMOVED: ascii_element(PATIENT_IDENTITY_REMOVED, "CS", ["YES"], encoding),
        DEIDENTIFICATION_METHOD: ascii_element(
            DEIDENTIFICATION_METHOD, "LO", profile.description, encoding
        ),
        DEIDENTIFICATION_METHOD_CODES: DataElement(
            DEIDENTIFICATION_METHOD_CODES, "SQ", Sequence(items)
        ),
        TEMPORAL_MODIFIED: ascii_element(TEMPORAL_MODIFIED, "CS", [profile.temporal], encoding),
    }
