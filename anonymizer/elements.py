"""Small value helpers shared by the engine and the marking: decode, encode, shift.

New values the engine writes are ASCII (pseudonyms, UIDs, dummies, dates), so they are
built as pydicom ``RawDataElement`` bytes in the source's own encoding: immutable,
cheap to create, and copied straight to the output by :mod:`anonymizer.part10`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

#: The source's encoding: (implicit VR, little endian); (None, None) if unknown.
Encoding = tuple[bool | None, bool | None]


@lru_cache(maxsize=8192)
def dictionary_vr(tag: int) -> str:
    """The VR the data dictionary gives ``tag`` (``UN`` when unknown)."""
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def values_of(value: Any) -> list[str]:
    """A decoded value as a list of non-empty strings (multi-valued or not)."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    return [text] if text else []


def ascii_element(
    tag: int, vr: str, values: Sequence[str], encoding: Encoding
) -> RawDataElement | DataElement:
    """An element holding ASCII ``values``, encoded like the source when it is known."""
    implicit, little = encoding
    if implicit is None or not little:
        joined: str | list[str] = list(values) if len(values) > 1 else "".join(values)
        return DataElement(tag, vr, joined)
    data = "\\".join(values).encode("ascii", "replace")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return RawDataElement(
        BaseTag(tag), None if implicit else vr, len(data), data, 0, implicit, True, True, False
    )


def empty_element(tag: int, vr: str, encoding: Encoding) -> RawDataElement | DataElement:
    """A zero-length element (the Z action)."""
    implicit, little = encoding
    if implicit is None or not little or vr == "SQ":
        return DataElement(tag, vr, None)
    return RawDataElement(
        BaseTag(tag), None if implicit else vr, 0, b"", 0, implicit, True, True, False
    )


def encoding_of(elem: Any, fallback: Encoding) -> Encoding:
    """The encoding a raw element was read with, else ``fallback``."""
    if isinstance(elem, RawDataElement):
        return (elem.is_implicit_VR, elem.is_little_endian)
    return fallback


def shift_date(value: str, days: int) -> str | None:
    """Shift a DA (YYYYMMDD) or the date part of a DT by whole days; None if invalid."""
    text = value.strip()
    try:
        day = dt.date(int(text[0:4]), int(text[4:6]), int(text[6:8]))
        moved = day + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{moved.year:04d}{moved.month:02d}{moved.day:02d}" + text[8:]
