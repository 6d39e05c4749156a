"""C-FIND/C-MOVE/C-GET identifiers ↔ index queries and response datasets.

The SCU's identifier is decoded by pydicom with its SpecificCharacterSet, so values reach
the index as ``str``; responses are encoded as UTF-8 (ISO_IR 192) whenever a value is not
plain ASCII.

A response identifier is built one of two ways, with the same bytes on the wire:
:func:`to_response` makes a pydicom :class:`Dataset` (pynetdicom then encodes it), and
:class:`ResponseEncoder` writes the encoded identifier straight from the index row. The
second exists because a STUDY-level C-FIND answers dozens of matches and the Dataset round
trip (element objects, value validation, pydicom's writer) was most of the time per match.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.errors import InvalidIdentifier
from node.index.records import IndexQuery, Level, Model

_NOT_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"}
MAX_IDENTIFIER_ELEMENTS = 256


def to_query(identifier: Dataset, model: Model) -> IndexQuery:
    """Translate an identifier into an :class:`IndexQuery` (raises InvalidIdentifier)."""
    raw_level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    try:
        level = Level(raw_level)
    except ValueError:
        raise InvalidIdentifier(
            f"QueryRetrieveLevel {raw_level!r} is not PATIENT, STUDY, SERIES or IMAGE"
        ) from None
    if model is Model.STUDY_ROOT and level is Level.PATIENT:
        raise InvalidIdentifier("PATIENT level is not part of the Study Root model")
    if len(identifier) > MAX_IDENTIFIER_ELEMENTS:
        raise InvalidIdentifier(f"identifier has more than {MAX_IDENTIFIER_ELEMENTS} elements")
    filters: dict[str, str] = {}
    requested: list[str] = []
    for elem in identifier:
        keyword = elem.keyword
        if not keyword or keyword in _NOT_KEYS or elem.tag.group == 0x0002:
            continue
        requested.append(keyword)
        if elem.VR == "SQ":
            continue  # sequence matching is not supported; returned empty (PS3.4 C.2.2.1)
        text = _matching_text(elem)
        if text:
            filters[keyword] = text
    return IndexQuery(level=level, model=model, filters=filters, requested=tuple(requested))


def _matching_text(elem: DataElement) -> str:
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        raise InvalidIdentifier(f"{elem.keyword} has a binary value; it cannot be matched")
    return str(value).strip()


def to_response(match: Mapping[str, object], query: IndexQuery, retrieve_ae_title: str) -> Dataset:
    """The pending C-FIND response identifier for one index match."""
    ds = Dataset()
    ds.QueryRetrieveLevel = query.level.value
    non_ascii = False
    for keyword in query.requested:
        value = match.get(keyword)
        _set(ds, keyword, value)
        non_ascii = non_ascii or _has_non_ascii(value)
    holders = match.get("RetrieveAETitle")
    ds.RetrieveAETitle = list(holders) if isinstance(holders, list) else retrieve_ae_title
    if non_ascii:
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _set(ds: Dataset, keyword: str, value: object) -> None:
    tag = tag_for_keyword(keyword)
    if tag is None:
        return
    vr = dictionary_VR(tag)
    if vr == "SQ":
        ds.add_new(tag, vr, Sequence())
        return
    if value is None:
        ds.add_new(tag, vr, None)
    elif isinstance(value, list | tuple):
        ds.add_new(tag, vr, [str(v) for v in value])
    else:
        ds.add_new(tag, vr, value if isinstance(value, int) and vr in {"US", "UL"} else str(value))


def _has_non_ascii(value: object) -> bool:
    if isinstance(value, str):
        return not value.isascii()
    if isinstance(value, Iterable) and not isinstance(value, bytes):
        return any(isinstance(v, str) and not v.isascii() for v in value)
    return False


_UTF8 = "ISO_IR 192"
_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
"""Text VRs whose values are encoded with the SpecificCharacterSet (PS3.5 6.1.2.3)."""
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"})
"""String VRs always in the default repertoire."""
_LONG_EXPLICIT = frozenset({"UC", "UR", "UT"})
"""String VRs with a 4-byte length in Explicit VR (PS3.5 7.1.2)."""
_ENCODERS: dict[UID, bool] = {ImplicitVRLittleEndian: True, ExplicitVRLittleEndian: False}
"""Transfer syntaxes :class:`ResponseEncoder` writes, and whether each is implicit VR."""
_IMPLICIT_HEADER = struct.Struct("<HHI")
_SHORT_HEADER = struct.Struct("<HH2sH")
_LONG_HEADER = struct.Struct("<HH2s2xI")
_US = struct.Struct("<H")
_CHARSET_TAG, _LEVEL_TAG, _RETRIEVE_AE_TAG = 0x00080005, 0x00080052, 0x00080054
_FIXED_TAGS = frozenset({_LEVEL_TAG, _RETRIEVE_AE_TAG})


class _NotHandled(Exception):
    """A value :class:`ResponseEncoder` does not write; the Dataset path does."""


@dataclass(frozen=True, slots=True)
class _Slot:
    """One element of every response: its tag, VR, ready header layout, and where its value
    comes from (a keyword of the match, or a value fixed for the query)."""

    tag: int
    keyword: str
    vr: str
    header: struct.Struct
    prefix: tuple[int, int] | tuple[int, int, bytes]

    @classmethod
    def make(cls, tag: int, keyword: str, vr: str, implicit: bool) -> _Slot:
        group, element = tag >> 16, tag & 0xFFFF
        if implicit:
            return cls(tag, keyword, vr, _IMPLICIT_HEADER, (group, element))
        header = _LONG_HEADER if vr in _LONG_EXPLICIT else _SHORT_HEADER
        return cls(tag, keyword, vr, header, (group, element, vr.encode("ascii")))

    def element(self, value: bytes) -> bytes:
        """The whole element: header and (already padded) value."""
        if self.header is _SHORT_HEADER and len(value) > 0xFFFF:
            raise _NotHandled
        return self.header.pack(*self.prefix, len(value)) + value

    def value(self, value: object, encoding: str) -> bytes:
        """The padded value bytes as pydicom writes them (raises _NotHandled otherwise)."""
        if value is None:
            return b""
        if self.vr == "US":
            if type(value) is not int or not 0 <= value <= 0xFFFF:
                raise _NotHandled
            return _US.pack(value)
        text = "\\".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
        try:
            raw = text.encode(encoding if self.vr in _CHARSET_VRS else "ascii")
        except UnicodeEncodeError:
            raise _NotHandled from None  # non-ASCII where only the default repertoire goes
        if len(raw) % 2:
            raw += b"\0" if self.vr == "UI" else b" "
        return raw


class ResponseEncoder:
    """Writes C-FIND response identifiers for one query straight from index matches.

    Built once per query for the association's transfer syntax: which elements each answer
    carries (the requested keys, QueryRetrieveLevel, RetrieveAETitle and, for non-ASCII
    values, SpecificCharacterSet), in tag order, with their headers ready. The bytes are
    those pydicom writes for :func:`to_response`'s dataset (``tests/node/test_identifiers``
    holds the two side by side). :meth:`for_query` returns ``None`` where this encoder does
    not apply (another transfer syntax, a requested key of a VR it does not write), and
    :meth:`encode` returns ``None`` for a match it does not handle (a non-ASCII value of an
    ASCII-only VR); the caller then uses :func:`to_response`.
    """

    def __init__(
        self, slots: list[_Slot], level: str, retrieve_ae_title: str, implicit: bool
    ) -> None:
        self._slots = slots
        self._matched = tuple(s.keyword for s in slots if s.tag not in _FIXED_TAGS)
        charset = _Slot.make(_CHARSET_TAG, "SpecificCharacterSet", "CS", implicit)
        self._charset = charset.element(charset.value(_UTF8, "ascii"))
        self._level = level
        self._default_ae = retrieve_ae_title

    @classmethod
    def for_query(
        cls, query: IndexQuery, retrieve_ae_title: str, transfer_syntax: str
    ) -> ResponseEncoder | None:
        """The encoder for ``query`` answered in ``transfer_syntax``, if it can write it."""
        implicit = _ENCODERS.get(UID(transfer_syntax))
        if implicit is None:
            return None
        slots: dict[int, _Slot] = {}
        for keyword in query.requested:
            tag = tag_for_keyword(keyword)
            if tag is None:
                continue
            vr = dictionary_VR(tag)
            if (tag >> 16) < 0x0008 or not (vr in _CHARSET_VRS or vr in _ASCII_VRS or vr == "US"):
                return None
            slots[tag] = _Slot.make(tag, keyword, vr, implicit)
        slots[_LEVEL_TAG] = _Slot.make(_LEVEL_TAG, "QueryRetrieveLevel", "CS", implicit)
        slots[_RETRIEVE_AE_TAG] = _Slot.make(_RETRIEVE_AE_TAG, "RetrieveAETitle", "AE", implicit)
        return cls([slots[tag] for tag in sorted(slots)], query.level.value, retrieve_ae_title,
                   implicit)  # fmt: skip

    def encode(self, match: Mapping[str, object]) -> bytes | None:
        """The encoded identifier for ``match``, or ``None`` to fall back to a Dataset."""
        utf8 = any(_has_non_ascii(match.get(keyword)) for keyword in self._matched)
        encoding = "utf-8" if utf8 else "ascii"
        parts = [self._charset] if utf8 else []
        try:
            for slot in self._slots:
                if slot.tag == _LEVEL_TAG:
                    value: object = self._level
                elif slot.tag == _RETRIEVE_AE_TAG:
                    holders = match.get("RetrieveAETitle")
                    value = holders if isinstance(holders, list) else self._default_ae
                else:
                    value = match.get(slot.keyword)
                parts.append(slot.element(slot.value(value, encoding)))
        except _NotHandled:
            return None
        return b"".join(parts)
