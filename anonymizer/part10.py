"""Part 10 bytes in and out: refuse truncated input, write output quickly.

pydicom's ``dcmread`` stops quietly at the end of a short buffer, so completeness is
checked here. For writing, raw elements (bytes pydicom read but never decoded) go back
out as a header plus their original value bytes, and the file meta is encoded directly;
only the elements the engine created pass through pydicom's element writer. That keeps
the cost of a de-identified instance close to the cost of reading it.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from pydicom import dcmread
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import dcmwrite, write_data_element
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

from anonymizer.elements import dictionary_vr
from anonymizer.errors import AnonymizationError, UnreadableInput

_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
_ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
_SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
_PIXEL_DATA = 0x7FE00010
_META_ORDER = (0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013)


_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"})


def raw_ascii(elem: RawDataElement) -> list[str] | None:
    """The values of a raw element whose VR is always ASCII; None for other VRs."""
    vr = elem.VR or dictionary_vr(elem.tag)
    value = elem.value
    if vr not in _ASCII_VRS or not isinstance(value, bytes) or not elem.is_little_endian:
        return None
    text = value.decode("ascii", "replace")
    return [v.strip(" \x00") for v in text.split("\\")] if text.strip(" \x00") else []


def peek(ds: Dataset, tag: int) -> Any:
    """The value of ``tag`` without caching a decoded element in ``ds``.

    Keeping elements raw is what lets :func:`write_part10` copy them back cheaply. VRs
    whose characters are always ASCII, single US values, and single ASCII names and IDs
    in a character set that decodes ASCII as itself are decoded here directly (the same
    text pydicom gives; pydicom's decoder costs more than the rest of an instance).
    """
    elem = ds.get_item(tag)
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        values = raw_ascii(elem)
        if values is not None:
            return values[0] if len(values) == 1 else (values or "")
        vr = elem.VR or dictionary_vr(tag)
        value = elem.value
        if vr == "US" and isinstance(value, bytes) and len(value) == 2:
            return int.from_bytes(value, "little" if elem.is_little_endian else "big")
        if (
            vr in _NAME_VRS
            and isinstance(value, bytes)
            and value.isascii()
            and b"\\" not in value
            and _decodes_ascii_as_itself(ds)
        ):
            return value.decode("ascii").rstrip("\x00 ")
        elem = decode(elem, ds)
    return elem.value


#: Single-valued text VRs pydicom decodes with the character set (then strips the end).
_NAME_VRS = frozenset({"LO", "SH", "PN"})
#: Values of Specific Character Set under which ASCII bytes are ASCII text.
_ASCII_CHARSETS = frozenset({"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"})


def _decodes_ascii_as_itself(ds: Dataset) -> bool:
    if getattr(ds, "_parent_encoding", None) != "iso8859":
        return False  # an item inheriting another character set: let pydicom decide
    charset = ds.get_item(0x00080005)
    if charset is None:
        return True
    value = charset.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace").strip(" \x00")
    return isinstance(value, str) and value in _ASCII_CHARSETS


def decode(elem: RawDataElement, ds: Dataset) -> DataElement:
    """Decode a raw element of ``ds`` with the character set in force there."""
    # pydicom's own __getitem__ passes the same (inherited) character set.
    return convert_raw_data_element(elem, encoding=ds._character_set, ds=ds)


def read_part10(data: bytes, *, zero_copy: bool = False) -> Dataset:
    """Parse a complete Part 10 instance, refusing truncated or foreign bytes.

    The file meta is parsed here and the data set handed to pydicom's ``read_dataset``
    (``dcmread`` costs three times as much for what it adds: preamble guessing, file
    meta validation). Every defined-length element must hold all its bytes, the instance
    must name its SOP class and instance, and native pixel data must have the size its
    image attributes promise.

    With ``zero_copy`` native pixel data is a ``memoryview`` of ``data`` instead of a
    copy: right for de-identifying and writing out again, not for handing the dataset to
    code that expects ``bytes``.

    Raises
    ------
    UnreadableInput
        With a message saying what is wrong.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        raise UnreadableInput("not a DICOM Part 10 file (no 'DICM' after the preamble)")
    try:
        meta, offset = _read_file_meta(data)
        raw_syntax = peek(meta, 0x00020010)
        if not raw_syntax:
            raise UnreadableInput("the file meta has no transfer syntax")
        syntax = UID(raw_syntax)
        ds: Dataset
        if syntax in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian):
            ds = dcmread(io.BytesIO(data))  # rare: let pydicom inflate / swap
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # truncation is reported below instead
                ds = _read_body(data, offset, syntax.is_implicit_VR, zero_copy)
            ds.file_meta = meta
    except UnreadableInput:
        raise
    except Exception as exc:  # pydicom's parser raises a wide range of errors
        raise UnreadableInput(f"unreadable DICOM: {type(exc).__name__}: {exc}") from exc
    _check_complete(ds)
    return ds


def _stop_at_native_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag == _PIXEL_DATA and length != 0xFFFFFFFF


def _read_body(data: bytes, offset: int, implicit: bool, zero_copy: bool) -> Dataset:
    """The data set after the file meta; native pixel data as a zero-copy view.

    pydicom copies every value it reads; for a 512x512 CT that copy of the pixels is a
    good part of the cost of an instance, so reading stops before native (defined-length)
    pixel data, whose value becomes a ``memoryview`` of ``data``, and resumes after it.
    """
    fp = io.BytesIO(data)
    fp.seek(offset)
    ds = read_dataset(fp, implicit, True, stop_when=_stop_at_native_pixels)
    position = fp.tell()
    if position + 8 > len(data):
        return ds
    if implicit:
        tag, length = struct.unpack_from("<II", data, position)
        tag = (tag & 0xFFFF) << 16 | tag >> 16
        vr, start = None, position + 8
    else:
        group, element = struct.unpack_from("<HH", data, position)
        tag = group << 16 | element
        vr = data[position + 4 : position + 6].decode("ascii", "replace")
        (length,) = struct.unpack_from("<I", data, position + 8)
        start = position + 12
    if tag != _PIXEL_DATA:
        return ds
    end = start + length
    if end > len(data):
        raise UnreadableInput(f"truncated pixel data: {len(data) - start} of {length} bytes")
    # pydicom types a raw value as bytes; a memoryview is bytes-like for our writer.
    value = memoryview(data)[start:end] if zero_copy else data[start:end]
    ds[_PIXEL_DATA] = RawDataElement(
        BaseTag(tag),
        vr,
        length,
        value,  # type: ignore[arg-type]
        start,
        implicit,
        True,
        True,
        False,
    )
    if end < len(data):
        fp.seek(end)
        for rest_tag, elem in read_dataset(fp, implicit, True).items():
            ds[rest_tag] = elem
    return ds


def _read_file_meta(data: bytes) -> tuple[FileMetaDataset, int]:
    """Group 0002 (always explicit VR little endian) and the offset after it."""
    elements: dict[BaseTag, DataElement | RawDataElement] = {}
    offset = 132
    while offset + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        vr = data[offset + 4 : offset + 6].decode("ascii", "replace")
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", data, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            start = offset + 8
        if start + length > len(data):
            raise UnreadableInput("truncated file meta information")
        tag = BaseTag((group << 16) | element)
        value = data[start : start + length]
        elements[tag] = RawDataElement(tag, vr, length, value, start, False, True, True, False)
        offset = start + length
    if not elements:
        raise UnreadableInput("no file meta information")
    return FileMetaDataset(elements), offset


def _check_complete(ds: Dataset) -> None:
    if len(ds) == 0:
        raise UnreadableInput("no data set after the file meta (truncated?)")
    for tag, elem in ds.items():
        if (
            isinstance(elem, RawDataElement)
            and isinstance(elem.value, bytes)
            and elem.length != 0xFFFFFFFF
            and len(elem.value) < elem.length
        ):
            raise UnreadableInput(
                f"truncated: element {tag} holds {len(elem.value)} of {elem.length} bytes"
            )
    for required, keyword in ((0x00080016, "SOPClassUID"), (0x00080018, "SOPInstanceUID")):
        if required not in ds:
            raise UnreadableInput(f"no {keyword} (truncated or not an instance)")
    _check_pixels(ds)


def native_length(
    rows: int, columns: int, samples: int, frames: int, bits: int, photometric: str
) -> int:
    """Bytes of native pixel data the image pixel module describes (pad byte not counted).

    Native 4:2:2 stores Y Y Cb Cr per pair of columns (PS3.3 C.7.6.3.1.2): two samples a
    pixel, not the three SamplesPerPixel says.
    """
    if samples == 3 and photometric.strip().upper() in ("YBR_FULL_422", "YBR_PARTIAL_422"):
        samples = 2
    return (rows * columns * samples * frames * bits + 7) // 8


def _check_pixels(ds: Dataset) -> None:
    meta = getattr(ds, "file_meta", None)
    syntax = peek(meta, 0x00020010) if meta is not None else None
    if syntax and UID(syntax).is_compressed:
        return
    rows, columns, bits = (peek(ds, t) for t in (0x00280010, 0x00280011, 0x00280100))
    if not rows or not columns or not bits:
        return
    if _PIXEL_DATA not in ds:
        raise UnreadableInput("image attributes but no pixel data (truncated?)")
    frames = int(peek(ds, 0x00280008) or 1)
    samples = int(peek(ds, 0x00280002) or 1)
    photometric = str(peek(ds, 0x00280004) or "")
    expected = native_length(rows, columns, samples, frames, bits, photometric)
    pixels = ds.get_item(_PIXEL_DATA)
    length = len(pixels.value) if pixels is not None and pixels.value is not None else 0
    if length < expected:
        raise UnreadableInput(f"truncated pixel data: {length} of {expected} bytes")


def write_part10(ds: Dataset) -> bytes:
    """Encode ``ds`` (with ``file_meta``) as a Part 10 file.

    Big endian and deflated syntaxes go through pydicom's ``dcmwrite``.

    Raises
    ------
    AnonymizationError
        A value cannot be encoded.
    """
    return b"".join(encode_part10(ds))


def encode_part10(ds: Dataset, meta: Mapping[int, str] | None = None) -> list[bytes]:
    """:func:`write_part10` as a list of byte strings (raw and pixel values uncopied).

    Write them with ``file.writelines`` to save the one copy a join would make. ``meta``
    gives the file meta values by tag instead of ``ds.file_meta``.
    """
    if meta is None:
        meta = {tag: str(peek(ds.file_meta, tag) or "") for tag in _META_ORDER}
    syntax = UID(meta.get(0x00020010, ""))
    try:
        if syntax in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian):
            file_meta = FileMetaDataset()
            for tag in _META_ORDER:
                if meta.get(tag):
                    vr = "SH" if tag == 0x00020013 else "UI"
                    file_meta[tag] = DataElement(tag, vr, meta[tag])
            ds.file_meta = file_meta
            buffer = io.BytesIO()
            dcmwrite(buffer, ds, enforce_file_format=True)
            return [buffer.getvalue()]
        out = Output(syntax.is_implicit_VR)
        out.parts += [PREAMBLE, file_meta_bytes(meta)]
        charset = peek(ds, 0x00080005)
        _write_items(out, ds, convert_encodings(charset or "ISO_IR 6"))
        return out.parts
    except AnonymizationError:
        raise
    except Exception as exc:  # pydicom raises many types for unencodable values
        raise AnonymizationError(f"cannot encode the de-identified instance: {exc}") from exc


#: The 128-byte preamble (zeros) and the DICM prefix of every file written.
PREAMBLE = b"\x00" * 128 + b"DICM"
#: The sequence delimiter the writer ends undefined-length values with.
SEQUENCE_END = _SEQUENCE_END


class Output:
    """Output as a list of byte strings; raw values are appended without copying."""

    def __init__(self, implicit: bool) -> None:
        self.implicit = implicit
        self.parts: list[bytes] = []

    def element(self, elem: DataElement, encodings: list[str]) -> None:
        """Encode an element the engine created, with pydicom's element writer."""
        scratch = DicomBytesIO()
        scratch.is_little_endian = True
        scratch.is_implicit_VR = self.implicit
        write_data_element(scratch, elem, encodings)
        self.parts.append(scratch.getvalue())


def _version() -> bytes:
    return _short(0x00020001, b"OB", b"\x00\x01")


def file_meta_bytes(meta: Mapping[int, str]) -> bytes:
    """Group 0002 in explicit VR little endian, with its group length."""
    body = [_VERSION]
    for tag in _META_ORDER:
        value = meta.get(tag)
        if not value:
            if tag in (0x00020002, 0x00020003, 0x00020010):
                raise AnonymizationError(f"file meta lacks {tag:08X}")
            continue
        body.append(_meta_element(tag, str(value)))
    payload = b"".join(body)
    length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(payload))
    return length + payload


@lru_cache(maxsize=256)  # all but the SOP Instance UID repeat from file to file
def _meta_element(tag: int, value: str) -> bytes:
    text = value.encode("ascii")
    if len(text) % 2:
        text += b"\x00" if tag != 0x00020013 else b" "
    return _short(tag, b"SH" if tag == 0x00020013 else b"UI", text)


def _short(tag: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _write_items(out: Output, ds: Dataset, encodings: list[str]) -> None:
    for tag, elem in sorted(ds.items(), key=_tag_number):
        if isinstance(elem, RawDataElement) and not writable_raw(out, elem):
            elem = ds[tag]  # another encoding: let pydicom decode it
        write_element(out, elem, encodings)


def writable_raw(out: Output, elem: RawDataElement) -> bool:
    """True when ``elem``'s bytes can be copied to ``out`` as they are."""
    return bool(
        elem.is_implicit_VR == out.implicit
        and elem.is_little_endian
        and (out.implicit or elem.VR)
        and (elem.VR != "SQ" or elem.length != 0xFFFFFFFF)
    )


def write_element(out: Output, elem: DataElement | RawDataElement, encodings: list[str]) -> None:
    """One top-level or item element (a raw one must be :func:`writable_raw`)."""
    if isinstance(elem, RawDataElement):
        _write_raw(out, elem)
    elif elem.VR == "SQ":
        _write_sequence(out, elem, encodings)
    else:
        out.element(elem, encodings)


def _tag_number(item: tuple[BaseTag, Any]) -> int:
    return int(item[0])  # plain ints compare without BaseTag.__eq__/__lt__


def _write_raw(out: Output, elem: RawDataElement) -> None:
    value = elem.value or b""
    undefined = elem.length == 0xFFFFFFFF
    length = 0xFFFFFFFF if undefined else len(value)
    group, element = elem.tag >> 16, elem.tag & 0xFFFF
    vr = elem.VR or ""
    if out.implicit:
        out.parts.append(struct.pack("<HHI", group, element, length))
    elif vr in _LONG_VRS:
        out.parts.append(struct.pack("<HH2sHI", group, element, vr.encode(), 0, length))
    else:
        out.parts.append(struct.pack("<HH2sH", group, element, vr.encode(), length))
    out.parts.append(value)
    if undefined:
        out.parts.append(_SEQUENCE_END)


def _write_sequence(out: Output, elem: DataElement, encodings: list[str]) -> None:
    group, element = elem.tag >> 16, elem.tag & 0xFFFF
    if out.implicit:
        out.parts.append(struct.pack("<HHI", group, element, 0xFFFFFFFF))
    else:
        out.parts.append(struct.pack("<HH2sHI", group, element, b"SQ", 0, 0xFFFFFFFF))
    for item in elem.value or ():
        charset = peek(item, 0x00080005)
        item_encodings = convert_encodings(charset) if charset else encodings
        out.parts.append(_ITEM)
        _write_items(out, item, item_encodings)
        out.parts.append(_ITEM_END)
    out.parts.append(_SEQUENCE_END)


_VERSION = _version()  # (0002,0001) File Meta Information Version
