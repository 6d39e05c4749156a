"""Find the top-level elements of Part 10 bytes without building a pydicom Dataset.

For a small image, ``dcmread`` and pydicom's value conversion were half of what a C-STORE
cost the node. Ingest needs two things of the bytes: proof that they are complete (see
:mod:`.dataset_check`) and a couple of dozen top-level values. :func:`scan` walks the
element headers once, the way pydicom's reader does (defined lengths are skipped, undefined
length sequences and values are followed to their delimiters), and keeps the raw values
of the elements asked for.

It declines (returns ``None``) whatever it is not sure pydicom would read exactly the same
way: big-endian or deflated syntaxes, a VR that contradicts the encoding, tags out of
order, a walk that does not end exactly at the last byte. Ingest then takes pydicom's path,
which gives the same answer it always did, refusals included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from struct import Struct
from typing import Protocol

from pydicom.datadict import dictionary_VR

_IMPLICIT_LE = "1.2.840.10008.1.2"
_DECLINED_SYNTAXES = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})
"""Explicit VR big endian and deflated: pydicom's path reads those."""
_TS_TAG = 0x00020010
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_SEQUENCE_END_BYTES = b"\xfe\xff\xdd\xe0"
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI "
    b"UL UN UR US UT UV".split()
)
"""Every VR pydicom's reader knows (its ``ENCODED_VR`` less the ambiguous ones)."""
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
"""VRs with a 4-byte length in explicit VR (PS3.5 7.1.2)."""
_SQ_VRS = frozenset({b"SQ", b"UN"})
"""Undefined length UN is read as an implicit VR sequence (pydicom's default)."""

_TAG = Struct("<HH")
_EXPLICIT = Struct("<HH2sH")
_IMPLICIT = Struct("<HHL")
_LENGTH32 = Struct("<L")


class Declined(Exception):
    """Internal: the bytes are not in the plain form this module reads."""


@dataclass(frozen=True, slots=True)
class Header:
    """What :func:`scan` found: the transfer syntax and the wanted raw values."""

    transfer_syntax_uid: str
    implicit_vr: bool
    elements: dict[int, tuple[bytes | None, bytes]]
    """Tag -> (VR as encoded, ``None`` in implicit VR; value bytes) of each wanted
    top-level element present."""


def scan(data: bytes, wanted: frozenset[int]) -> Header | None:
    """The wanted top-level elements of complete Part 10 ``data``; ``None`` to decline."""
    try:
        return _scan(data, wanted)
    except Exception:  # Declined, struct.error on short bytes ...: pydicom's to judge
        return None


def _scan(data: bytes, wanted: frozenset[int]) -> Header:
    if data[128:132] != b"DICM":
        raise Declined
    end = len(data)
    pos = 132
    syntax: bytes | None = None
    while pos + 8 <= end and _TAG.unpack_from(data, pos)[0] == 0x0002:
        group, elem, vr, length = _EXPLICIT.unpack_from(data, pos)
        if vr not in _VRS:
            raise Declined
        if vr in _LONG_VRS:
            (length,) = _LENGTH32.unpack_from(data, pos + 8)
            start = pos + 12
        else:
            start = pos + 8
        if length == _UNDEFINED or start + length > end:
            raise Declined
        if (group << 16 | elem) == _TS_TAG:
            syntax = data[start : start + length]
        pos = start + length
    if syntax is None:
        raise Declined
    transfer_syntax = _uid_text(syntax)
    if transfer_syntax in _DECLINED_SYNTAXES:
        raise Declined
    implicit = transfer_syntax == _IMPLICIT_LE
    found: dict[int, tuple[bytes | None, bytes]] = {}
    if pos >= end:
        raise Declined  # no dataset: pydicom's path refuses it
    walk = _walk_implicit if implicit else _walk_explicit
    pos = walk(data, pos, end, top=True, wanted=wanted, found=found)
    if pos != end:
        raise Declined
    return Header(transfer_syntax, implicit, found)


def _uid_text(raw: bytes) -> str:
    """A UID value as pydicom's ``convert_UI`` gives it, or decline."""
    text = raw.decode("latin-1").rstrip("\x00 ")
    if not text or "\\" in text or not text.isprintable():
        raise Declined
    return text


def _walk_explicit(
    data: bytes,
    pos: int,
    end: int,
    *,
    top: bool = False,
    wanted: frozenset[int] = frozenset(),
    found: dict[int, tuple[bytes | None, bytes]] | None = None,
    item: bool = False,
) -> int:
    """Walk explicit VR LE elements from ``pos`` until ``end`` (or an item delimiter when
    ``item`` is an undefined length item); the position after the last one."""
    last = -1
    while pos < end:
        group, elem, vr, length = _EXPLICIT.unpack_from(data, pos)
        tag = group << 16 | elem
        if item and tag == _ITEM_END:
            return pos + 8
        if tag <= last or group == 0xFFFE or vr not in _VRS:
            raise Declined
        last = tag
        if vr in _LONG_VRS:
            (length,) = _LENGTH32.unpack_from(data, pos + 8)
            start = pos + 12
        else:
            start = pos + 8
        if length == _UNDEFINED:
            if vr in _SQ_VRS:
                pos = _sequence(data, start, _walk_explicit)
            elif vr in (b"OB", b"OW") and tag == _PIXEL_DATA and top:
                pos = _undefined_value(data, start)
            else:
                raise Declined
            if tag in wanted:
                raise Declined
            continue
        if start + length > end:
            raise Declined  # truncated
        if found is not None and tag in wanted:
            found[tag] = (vr, data[start : start + length])
        pos = start + length
    if item or pos != end:
        raise Declined
    return pos


def _walk_implicit(
    data: bytes,
    pos: int,
    end: int,
    *,
    top: bool = False,
    wanted: frozenset[int] = frozenset(),
    found: dict[int, tuple[bytes | None, bytes]] | None = None,
    item: bool = False,
) -> int:
    """:func:`_walk_explicit` for implicit VR LE."""
    if pos + 6 <= end and _looks_explicit(data, pos):
        raise Declined  # pydicom would switch to explicit VR here
    last = -1
    while pos < end:
        group, elem, length = _IMPLICIT.unpack_from(data, pos)
        tag = group << 16 | elem
        if item and tag == _ITEM_END:
            return pos + 8
        if tag <= last or group == 0xFFFE:
            raise Declined
        last = tag
        start = pos + 8
        if length == _UNDEFINED:
            if tag in wanted or not _is_sequence(data, tag, start):
                raise Declined
            pos = _sequence(data, start, _walk_implicit)
            continue
        if start + length > end:
            raise Declined
        if found is not None and tag in wanted:
            found[tag] = (None, data[start : start + length])
        pos = start + length
    if item or pos != end:
        raise Declined
    return pos


def _looks_explicit(data: bytes, pos: int) -> bool:
    vr = data[pos + 4 : pos + 6]
    return b"AA" <= vr <= b"ZZ"


def _is_sequence(data: bytes, tag: int, start: int) -> bool:
    """Whether pydicom reads an undefined length implicit VR element as a sequence."""
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return data[start : start + 4] == b"\xfe\xff\x00\xe0"


def _sequence(data: bytes, pos: int, walk: _Walker) -> int:
    """Walk an undefined length sequence's items; the position after its delimiter."""
    end = len(data)
    while True:
        tag_group, tag_elem, length = _IMPLICIT.unpack_from(data, pos)
        tag = tag_group << 16 | tag_elem
        start = pos + 8
        if tag == _SEQUENCE_END:
            if length != 0:
                raise Declined
            return start
        if tag != _ITEM:
            raise Declined
        if length == _UNDEFINED:
            pos = walk(data, start, end, item=True)
        else:
            if start + length > end:
                raise Declined
            pos = walk(data, start, start + length)


def _undefined_value(data: bytes, pos: int) -> int:
    """Skip encapsulated pixel data the way pydicom does: to the first sequence
    delimiter in the bytes."""
    at = data.find(_SEQUENCE_END_BYTES, pos)
    if at < 0 or data[at + 4 : at + 8] != b"\x00\x00\x00\x00":
        raise Declined
    return at + 8


class _Walker(Protocol):
    def __call__(self, data: bytes, pos: int, end: int, *, item: bool = False) -> int: ...


# -- values -------------------------------------------------------------------------------

CHARSET_TAG = 0x00080005
_PLAIN_CHARSETS = frozenset(
    {
        "",
        "ISO_IR 6",
        "ISO_IR 100",
        "ISO_IR 101",
        "ISO_IR 109",
        "ISO_IR 110",
        "ISO_IR 126",
        "ISO_IR 127",
        "ISO_IR 138",
        "ISO_IR 144",
        "ISO_IR 148",
        "ISO_IR 166",
        "ISO_IR 192",
        "ISO_IR 203",
        "GB18030",
        "GBK",
    }
)
"""Character sets in which printable ASCII bytes mean printable ASCII (no code
extensions, no escape sequences): a value of such bytes decodes the same in all of them."""
_PRINTABLE = re.compile(rb"[\x20-\x7e]*\x00*\Z")
_INTEGER = re.compile(r" *[+-]?[0-9]+\Z")
_EACH_STRIPPED = frozenset({"LO", "SH"})
"""pydicom's ``convert_text`` VRs: each value loses its trailing padding."""
_WHOLE_STRIPPED = frozenset({"CS", "DA", "TM", "AS"})
"""pydicom's ``convert_string`` VRs: the whole value loses its trailing padding."""


def plain_charset(header: Header) -> bool:
    """Whether the dataset's SpecificCharacterSet is one :func:`strings` can stand for."""
    found = header.elements.get(CHARSET_TAG)
    if found is None:
        return True
    vr, raw = found
    if vr not in (None, b"CS") or not _PRINTABLE.match(raw):
        return False
    return raw.decode("ascii").rstrip(" \x00").strip() in _PLAIN_CHARSETS


def element(header: Header, tag: int, vr: str) -> bytes | None:
    """The raw value of ``tag`` (``None`` when absent); declines an unexpected VR."""
    found = header.elements.get(tag)
    if found is None:
        return None
    encoded, raw = found
    if encoded is not None and encoded.decode("ascii") != vr:
        raise Declined
    return raw


def strings(raw: bytes, vr: str) -> list[str]:
    """The values of a string element, exactly as pydicom converts them, for values of
    printable ASCII (trailing NUL padding allowed); declines anything else."""
    if not _PRINTABLE.match(raw):
        raise Declined
    text = raw.decode("ascii")
    if vr in _EACH_STRIPPED:
        return [v.rstrip("\x00 ") for v in text.split("\\")]
    if vr in _WHOLE_STRIPPED:
        return text.rstrip(" \x00").split("\\")
    if vr == "UI":
        return text.rstrip("\x00 ").split("\\")
    if vr == "PN":
        if "=" in text:  # component groups: pydicom drops empty trailing ones
            raise Declined
        return text.rstrip("\x00 ").split("\\")
    raise Declined


def integer(raw: bytes, vr: str) -> int | None:
    """The first value of an IS or US element as an int (``None`` when empty), exactly as
    ingest reads it from pydicom's value; declines anything else."""
    if not raw:
        return None
    if vr == "US":
        if len(raw) != 2:
            raise Declined
        return int.from_bytes(raw, "little")
    if vr != "IS" or not _PRINTABLE.match(raw):
        raise Declined
    text = raw.decode("ascii").rstrip(" \x00")
    if not text:
        return None
    if not _INTEGER.match(text):
        raise Declined
    return int(text)
