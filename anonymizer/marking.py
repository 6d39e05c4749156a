"""Mark a de-identified instance with what was done to it (PS3.15 E.1.1, PS3.3 C.7.1.1)."""

from __future__ import annotations

from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from anonymizer.elements import Encoding, ascii_element
from anonymizer.profiles import Profile

PATIENT_IDENTITY_REMOVED = BaseTag(0x00120062)
DEIDENTIFICATION_METHOD = BaseTag(0x00120063)
DEIDENTIFICATION_METHOD_CODES = BaseTag(0x00120064)
TEMPORAL_MODIFIED = BaseTag(0x00280303)


def marking_elements(profile: Profile, encoding: Encoding) -> dict[BaseTag, Any]:
    """PatientIdentityRemoved, DeidentificationMethod (+ code sequence), temporal flag."""
    items = []
    for method in profile.methods:
        item = Dataset()
        item[0x00080100] = ascii_element(0x00080100, "SH", [method.code], encoding)
        item[0x00080102] = ascii_element(0x00080102, "SH", ["DCM"], encoding)
        item[0x00080104] = ascii_element(0x00080104, "LO", [method.meaning], encoding)
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
