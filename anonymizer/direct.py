"""The fast path: de-identify a Part 10 instance straight from its bytes.

The general path (:func:`~anonymizer.part10.read_part10`, the engine's walk,
:func:`~anonymizer.part10.encode_part10`) turns every element into a pydicom object. Most
elements of an instance are kept as they are, so here the top level is scanned with
``struct`` alone: runs of kept elements go to the output as the byte ranges they occupy in
the input (their headers are what the general writer would write), and only the elements
the profile changes — and sequences, private blocks and the values the pseudonyms are
derived from — become pydicom elements, handed to the engine's own handlers. Native pixel
data is never touched: a view of the input in memory, a range of the source file when only
the file's head was read (see :class:`~anonymizer.tail.SourceTail`). Where a filter of the
profile says the pixels show text in known places, those places are byte ranges of the
native pixel data: they go out as zeros between the views or ranges, nothing copied.

It covers what instances usually are (little endian, sorted tags, known VRs, the data set
complete); anything else returns None and the caller takes the general path, which also
reports the errors. The output is byte-identical to the general path's (tested on every
corpus, sequences, private blocks, implicit VR and encapsulated pixel data included).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR
from pydicom.values import convert_string

from anonymizer.actions import Action, Rule
from anonymizer.bitstream import inspected, text_patches
from anonymizer.blanking import SUBSAMPLED, CannotBlank, Geometry, check_length, zero_runs
from anonymizer.elements import dictionary_vr
from anonymizer.engine import (
    _UNSCREENED,
    BURNED_IN,
    DOCUMENT_TYPE,
    ENCAPSULATED_DOCUMENT,
    IDENTIFYING,
    PATIENT_NAME,
    _Instance,
)
from anonymizer.errors import AnonymizationError, UnreadableInput
from anonymizer.marking import marking_elements
from anonymizer.part10 import (
    PREAMBLE,
    SEQUENCE_END,
    Output,
    file_meta_bytes,
    native_length,
    peek,
    writable_raw,
    write_element,
)
from anonymizer.spans import Patch
from anonymizer.tail import SourceTail, ZeroRun, zero_bytes

if TYPE_CHECKING:
    from anonymizer.engine import Deidentifier
    from anonymizer.screening import Verdict

_IMPLICIT = struct.Struct("<HHI").unpack_from
_EXPLICIT = struct.Struct("<HH2sH").unpack_from
_LENGTH = struct.Struct("<I").unpack_from
_TAG = struct.Struct("<I").unpack_from
#: The two-letter VRs pydicom's reader knows, and those it reads with a 4-byte length.
_VR_NAMES = {str(vr).encode(): str(vr) for vr in VR if len(str(vr)) == 2}
_PYDICOM_LONG = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
#: The header the general writer gives an element is the input's when these match.
_WRITER_LONG = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_WRITER_LONG_BYTES = frozenset(vr.encode() for vr in _WRITER_LONG)
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_CHARSET = 0x00080005
_ITEM = 0xE000FFFE  # (FFFE,E000) read as one little-endian 32-bit number
_SEQUENCE_DELIMITER = 0xE0DDFFFE
SOP_CLASS_UID, SOP_INSTANCE_UID, STUDY_UID, PATIENT_ID = (
    0x00080016, 0x00080018, 0x0020000D, 0x00100020,
)  # fmt: skip
_IMAGE = (0x00280002, 0x00280008, 0x00280010, 0x00280011, 0x00280100)
#: Top-level values of the output that the file meta and the result are made of.
_RESULT_TAGS = (_CHARSET, SOP_CLASS_UID, SOP_INSTANCE_UID, STUDY_UID, PATIENT_ID)
#: Top-level values the engine reads besides the ones it changes (kept ones included).
#: (PixelRepresentation: pydicom resolves "US or SS" against it when it decodes.)
_CONTEXT = frozenset(
    {*_RESULT_TAGS, PATIENT_NAME, BURNED_IN, ENCAPSULATED_DOCUMENT, DOCUMENT_TYPE, 0x00280103}
)
#: What the clean action scrubs from descriptions (read when the profile cleans).
_IDENTIFYING = frozenset(IDENTIFYING)
_KEEP = object()  # an element copied as it is
_DROP = object()  # an element left out (group lengths, the remove action)
_BLANK = object()  # an element written empty (the blank action, not a sequence)


# An element found by the scan: tag, VR (None: implicit), where its header starts, where
# its value starts and ends, where the next element starts, and whether the general writer
# would give it the same header (then kept elements are copied as one range of bytes).
_Entry = tuple[int, str | None, int, int, int, int, bool]


@dataclass
class _Scan:
    entries: list[_Entry]
    sequences: dict[int, DataElement]  # undefined-length sequences, read by pydicom
    encoding: str | list[str]
    pixels_outside: bool  # native pixel data runs past the buffer (to the end of file)


def deidentify_direct(
    deid: Deidentifier, data: bytes, file_size: int | None = None
) -> tuple[list[Any], dict[int, str], dict[int, str]] | None:
    """Parts of the output file, the new file meta and the output's identifiers by tag
    (SOP Class and Instance UID, Study Instance UID, PatientID).

    ``data`` is the whole instance, or (``file_size`` given) the head of a file of that
    size: then the native pixel data may run past ``data`` to the end of the file and
    becomes a :class:`~anonymizer.tail.SourceTail` (the last part). None when this path
    does not apply.
    """
    try:
        meta = _file_meta(data)
        if meta is None:
            return None
        syntax, offset = meta[0x00020010], meta[0]
        implicit = _implicit(syntax)
        if implicit is None or not _vr_as_declared(data, offset, implicit):
            return None
        scan = _scan(data, offset, implicit, file_size)
    except Exception:  # reading is the general path's to report (UnreadableInput)
        return None
    if scan is None:
        return None
    if file_size is not None and not scan.pixels_outside and len(data) != file_size:
        return None  # the head ends between two elements: the rest is unknown
    patches = _bitstream_patches(data, scan, syntax)
    if patches is None:
        return None  # the general path refuses what it cannot check, and says why
    return _deidentify(deid, data, scan, implicit, meta, patches)


def _bitstream_patches(data: bytes, scan: _Scan, syntax: str) -> list[Patch] | None:
    """Where the encapsulated pixel data holds text, the bytes that go there instead
    (relative to its value, sorted: empty when there is none); None when it cannot be
    checked, or only applying the patches one after another gives the output."""
    if not inspected(syntax):
        return []
    for tag, _, _, start, stop, after, _ in scan.entries:
        if tag == _PIXEL_DATA and after != stop:  # encapsulated (undefined length)
            try:
                return text_patches(memoryview(data)[start:stop], syntax)  # read in place
            except UnreadableInput:
                return None
    return []


@lru_cache(maxsize=64)
def _implicit(syntax: str) -> bool | None:
    """Implicit VR of a little-endian syntax; None for those pydicom reads itself."""
    uid = UID(syntax)
    if uid in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian) or not uid.is_transfer_syntax:
        return None
    return bool(uid.is_implicit_VR)


def _file_meta(data: bytes) -> dict[int, Any] | None:
    """Group 0002 values as text (key 0: the offset after it); None if unusual."""
    if len(data) < 140 or data[128:132] != b"DICM":
        return None
    values: dict[int, Any] = {}
    offset = 132
    end = len(data)
    while offset + 8 <= end:
        group, element, vr, length = _EXPLICIT(data, offset)
        if group != 0x0002:
            break
        if vr in _WRITER_LONG_BYTES:
            if offset + 12 > end:
                return None
            (length,) = _LENGTH(data, offset + 8)
            start = offset + 12
        else:
            start = offset + 8
        if start + length > end:
            return None
        if element in (0x0002, 0x0010):
            if vr != b"UI":
                return None  # read (or refused) by pydicom on the general path
            text = bytes(data[start : start + length]).decode("ascii", "replace")
            if "\\" in text:
                return None
            values[0x00020000 | element] = text.strip(" \x00")
        offset = start + length
    if not values.get(0x00020010):
        return None
    values[0] = offset
    return values


def _vr_as_declared(data: bytes, offset: int, implicit: bool) -> bool:
    """False where pydicom would find the other VR encoding than the syntax says."""
    if offset + 8 > len(data):
        return False
    a, b = data[offset + 4], data[offset + 5]
    looks_explicit = 0x40 < a < 0x5B and 0x40 < b < 0x5B
    return looks_explicit != implicit


def _scan(data: bytes, pos: int, implicit: bool, file_size: int | None) -> _Scan | None:
    """The top-level elements; None for anything the general path should handle."""
    end = len(data)
    scan = _Scan([], {}, "iso8859", False)
    last, after_pixels = -1, False
    while pos < end:
        header = _header(data, pos, implicit)
        if header is None:
            return None
        tag, vr, start, length, canonical = header
        if tag <= last or tag >> 16 in (0x0002, 0xFFFE):
            return None
        if after_pixels and length == _UNDEFINED:
            return None  # pydicom reads it with another parent encoding there
        last = tag
        if length == _UNDEFINED:
            found = _undefined(data, tag, vr, start, implicit, scan.encoding)
            if found is None:
                return None
            stop, after, sequence = found
            if sequence is not None:
                scan.sequences[tag] = sequence
        else:
            stop = after = start + length
            if stop > end:  # only native pixel data running to the end of the file
                if tag != _PIXEL_DATA or file_size is None or stop != file_size:
                    return None
                scan.pixels_outside = True
        if tag == _CHARSET:  # as pydicom's reader: for the sequences that follow
            scan.encoding = convert_encodings(convert_string(bytes(data[start:stop]), True))
        elif tag == _PIXEL_DATA and after < end and not _vr_as_declared(data, after, implicit):
            return None  # the general path reads on after native pixels afresh
        scan.entries.append((tag, vr, pos, start, stop, after, canonical))
        after_pixels = after_pixels or tag == _PIXEL_DATA
        pos = after
    return scan if scan.entries else None


def _header(data: bytes, pos: int, implicit: bool) -> tuple[int, str | None, int, int, bool] | None:
    """Tag, VR, value start, length and whether the writer would give the same header."""
    if pos + 8 > len(data):
        return None
    if implicit:
        group, element, length = _IMPLICIT(data, pos)
        return group << 16 | element, None, pos + 8, length, True
    group, element, raw_vr, length = _EXPLICIT(data, pos)
    vr = _VR_NAMES.get(raw_vr)
    if vr is None:
        return None
    if vr in _PYDICOM_LONG:
        canonical = length == 0 and vr in _WRITER_LONG  # the reserved bytes are zero
        if pos + 12 > len(data):
            return None
        (length,) = _LENGTH(data, pos + 8)
        return group << 16 | element, vr, pos + 12, length, canonical
    return group << 16 | element, vr, pos + 8, length, vr not in _WRITER_LONG


def _is_sequence(tag: int, vr: str | None) -> bool:
    return (vr or dictionary_vr(tag)) == "SQ"


def _undefined(
    data: bytes, tag: int, vr: str | None, start: int, implicit: bool, encoding: Any
) -> tuple[int, int, DataElement | None] | None:
    """Value end, next element and (for a sequence) the element, as pydicom reads them."""
    if tag == _PIXEL_DATA and vr in (None, "OB", "OW"):
        stop = _fragments_end(data, start)
        return None if stop is None else (stop, stop + 8, None)
    if not _is_sequence(tag, vr) or vr == "UN":
        return None
    fp = io.BytesIO(data)
    fp.seek(start)
    try:
        items = read_sequence(fp, implicit, True, _UNDEFINED, encoding)
    except Exception:  # the general path reports what is wrong
        return None
    after = fp.tell()
    if after > len(data) or data[after - 8 : after - 4] != b"\xfe\xff\xdd\xe0":
        return None  # no delimiter: cut short (the head of a file, or truncated)
    element = DataElement(BaseTag(tag), "SQ", items, start, is_undefined_length=True)
    return after - 8, after, element


def _fragments_end(data: bytes, pos: int) -> int | None:
    """Where the sequence delimiter of encapsulated pixel data starts (pydicom's reading)."""
    end = len(data)
    while pos + 8 <= end:
        (tag,) = _TAG(data, pos)
        if tag == _SEQUENCE_DELIMITER:
            return pos if _LENGTH(data, pos + 4)[0] == 0 else None
        if tag != _ITEM:
            return None
        (length,) = _LENGTH(data, pos + 4)
        pos += 8 + length
    return None


def _deidentify(
    deid: Deidentifier,
    data: bytes,
    scan: _Scan,
    implicit: bool,
    meta: dict[int, Any],
    patches: list[Patch],
) -> tuple[list[Any], dict[int, str], dict[int, str]] | None:
    classified = _classify(deid, data, scan, implicit)
    if classified is None or not _complete(data, scan, meta[0x00020010]):
        return None
    rules, src = classified
    if not _copied_as_is(scan, rules, patches):
        return None  # the general path writes the pixel data, and blanks its text
    screened = _screened(deid, data, scan, rules, implicit, meta)
    if screened is None:
        return None
    verdict, zeros = screened
    deid._check_content(src, verdict)
    record = deid._reid_map is not None
    instance = _Instance(deid._pseudo, src, src.original_encoding, record=record)
    changed = _changed(deid, scan, rules, src, instance)
    extra = _extra(deid, implicit)
    result = _result_dataset(src, scan, rules, changed, extra)
    texts = {tag: _text(result, tag) for tag in _RESULT_TAGS[1:]}
    sop_class = texts[SOP_CLASS_UID] or meta.get(0x00020002, "")
    new_meta = deid._new_meta(sop_class, texts[SOP_INSTANCE_UID], meta[0x00020010])
    # As the general path: mappings are recorded, then an encoding failure is raised as
    # AnonymizationError; declining (None) comes before both.
    out = Output(implicit)
    failure: AnonymizationError | None = None
    try:
        out.parts.append(file_meta_bytes(new_meta))
        encodings = convert_encodings(peek(result, _CHARSET) or "ISO_IR 6")
        added = _encoded_extra(deid, implicit, extra, encodings)
        added = _with_burned_in_no(added, implicit, encodings, zeros is not None)
        runs = _Runs(out.parts, data, zeros or (), patches)
        if added is None or not _emit(out, data, scan, rules, changed, added, encodings, runs):
            return None
    except AnonymizationError as exc:
        failure = exc
    except Exception as exc:  # pydicom raises many types for unencodable values
        failure = AnonymizationError(f"cannot encode the de-identified instance: {exc}")
        failure.__cause__ = exc
    if deid._reid_map is not None:
        for kind, pseudonym, original in instance.mappings:
            if original:
                deid._reid_map.record(kind, pseudonym, original)
    if failure is not None:
        raise failure
    return [PREAMBLE, *out.parts], new_meta, texts


def _changed(
    deid: Deidentifier, scan: _Scan, rules: list[Any], src: Dataset, instance: _Instance
) -> dict[int, Any]:
    """The new element of each one the profile changes (None: left out), by tag."""
    changed: dict[int, Any] = {}
    held = src._dict
    for (tag, vr, *_), rule in zip(scan.entries, rules, strict=True):
        if rule is not _KEEP and rule is not _DROP and rule is not _BLANK:
            key = BaseTag(tag)
            vr = vr or dictionary_vr(tag)
            changed[tag] = deid._apply(rule, key, held[key], vr, src, instance, True)
    return changed


def _screened(
    deid: Deidentifier,
    data: bytes,
    scan: _Scan,
    rules: list[Any],
    implicit: bool,
    meta: dict[int, Any],
) -> tuple[Verdict, tuple[ZeroRun, ...] | None] | None:
    """The filters' verdict, and the byte ranges of the native pixel data to write as
    zeros where it cleans (``()``: nothing in the rectangles; None: no pixel data, so
    nothing is marked). None where the general path must decide: a filter that reads the
    pixel data itself, pixels that must be decoded first, or that cannot be blanked (it
    says why)."""
    screen = deid._screen
    if not screen:
        return _UNSCREENED, None
    if _PIXEL_DATA in screen.tags:
        return None
    header: dict[BaseTag, Any] = {}
    pixels: _Entry | None = None
    kept = False
    for entry, rule in zip(scan.entries, rules, strict=True):
        tag = entry[0]
        if tag == _PIXEL_DATA:
            pixels, kept = entry, rule is _KEEP
            continue
        sequence = scan.sequences.get(tag)
        header[BaseTag(tag)] = sequence if sequence is not None else _raw(data, entry, implicit)
    ds = _dataset(header, implicit, scan.encoding)
    file_meta = _meta_dataset(data, meta[0])
    if file_meta is None:
        return None
    ds.__dict__["file_meta"] = file_meta  # as read_part10 gives it; not a FileMetaDataset
    verdict = screen.verdict(ds)
    if not verdict.cleans or pixels is None:
        return verdict, None
    photometric = _ascii(data, next((e for e in scan.entries if e[0] == _PHOTOMETRIC), None))
    decoded_first = _compressed(meta[0x00020010]) or photometric.upper() in SUBSAMPLED
    if decoded_first or not kept or not pixels[6]:
        return None  # decoded first, or written by the general writer
    try:
        geometry = Geometry.of(ds)
        check_length(pixels[4] - pixels[3], geometry)
    except CannotBlank:
        return None  # the general path refuses it, and says why
    return verdict, zero_runs(geometry, verdict.regions)


def _copied_as_is(scan: _Scan, rules: list[Any], patches: list[Patch]) -> bool:
    """Whether the pixel data goes out as a run of input bytes, so that the ``patches``
    of its text cut it (True when there are none)."""
    if not patches:
        return True
    for entry, rule in zip(scan.entries, rules, strict=True):
        if entry[0] == _PIXEL_DATA:
            return rule is _KEEP and entry[6]
    return False


def _meta_dataset(data: bytes, end: int) -> Dataset | None:
    """The file meta elements (group 0002, explicit VR, from offset 132 to ``end``)."""
    elements: dict[BaseTag, Any] = {}
    pos = 132
    while pos < end:
        header = _header(data, pos, False)
        if header is None:
            return None
        tag, vr, start, length, _ = header
        value = bytes(data[start : start + length])
        key = BaseTag(tag)
        elements[key] = RawDataElement(key, vr, length, value, start, False, True, True, False)
        pos = start + length
    return _dataset(elements, False, "iso8859")


def _with_burned_in_no(
    added: list[tuple[int, bytes]] | None, implicit: bool, encodings: list[str], cleaned: bool
) -> list[tuple[int, bytes]] | None:
    """``added`` with BurnedInAnnotation NO in its place where the pixels were ``cleaned``
    (as the general path marks them)."""
    if added is None or not cleaned:
        return added
    out = Output(implicit)
    if not _write(out, DataElement(BaseTag(BURNED_IN), "CS", "NO"), encodings):
        return None
    kept = [(tag, encoded) for tag, encoded in added if tag != BURNED_IN]
    return sorted([*kept, (BURNED_IN, b"".join(out.parts))], key=lambda pair: pair[0])


def _extra(deid: Deidentifier, implicit: bool) -> dict[int, Any]:
    """The profile's ADD elements and the marking, by tag (the same for every instance
    of an encoding; read only)."""
    key = ("extra", implicit)
    extra = deid._direct_fixed.get(key)
    if extra is None:
        extra = {
            int(t): DataElement(t, dictionary_vr(t), r.value)
            for t, r in deid._table.additions.items()
        }
        for tag, elem in marking_elements(deid.profile, (implicit, True)).items():
            extra[int(tag)] = elem
        deid._direct_fixed[key] = extra
    return extra


def _encoded_extra(
    deid: Deidentifier, implicit: bool, extra: dict[int, Any], encodings: list[str]
) -> list[tuple[int, bytes]] | None:
    """``extra`` as written, in tag order (None: one needs the general writer)."""
    key = ("encoded", implicit, tuple(encodings))
    encoded = deid._direct_fixed.get(key)
    if encoded is None:
        encoded = []
        for tag, elem in sorted(extra.items()):
            out = Output(implicit)
            if not _write(out, elem, encodings):
                return None
            encoded.append((tag, b"".join(out.parts)))
        deid._direct_fixed[key] = encoded
    return list(encoded)


def _classify(
    deid: Deidentifier, data: bytes, scan: _Scan, implicit: bool
) -> tuple[list[Any], Dataset] | None:
    """Each entry's rule (``_KEEP``: copy it, ``_DROP``: leave it out) and the data set of
    the elements the engine reads: the changed ones, sequences, private blocks, identity
    and image values."""
    rules: list[Any] = []
    held: dict[BaseTag, Any] = {}
    private = False
    decisions = deid._direct_decisions
    for entry in scan.entries:
        tag = entry[0]
        if tag >> 16 & 1 and tag & 0xFFFF:
            rule, hold, private = None, True, True  # decided below, with all creators
        else:
            decision = decisions.get((tag, entry[1]))
            if decision is None:
                decision = decisions[(tag, entry[1])] = _decide(deid, tag, entry[1])
            rule, hold = decision
        rules.append(rule)
        if hold:
            if entry[4] > len(data):
                return None  # pixel data the profile changes: read the whole file
            sequence = scan.sequences.get(tag)
            held[BaseTag(tag)] = sequence if sequence is not None else _raw(data, entry, implicit)
    src = _dataset(held, implicit, scan.encoding)
    if private:
        private_rules = deid._private_rules(src)
        for n, entry in enumerate(scan.entries):
            tag, vr = entry[0], entry[1]
            if tag >> 16 & 1 and rules[n] is not _DROP:
                rule = private_rules.get(tag)
                keep = (rule is None or rule.action is Action.KEEP) and not _is_sequence(tag, vr)
                rules[n] = _KEEP if keep else rule
    return rules, src


def _decide(deid: Deidentifier, tag: int, vr: str | None) -> tuple[Any, bool]:
    """A public element's rule, or ``_KEEP``/``_DROP``/``_BLANK`` where the engine's
    handler would only copy, leave out or empty it; and whether the engine reads it."""
    if tag & 0xFFFF == 0 or tag >> 16 == 0:
        return _DROP, False  # group lengths, command elements: the engine's walk drops them
    cleans = deid._direct_fixed.get(("cleans",))
    if cleans is None:
        cleans = deid._direct_fixed[("cleans",)] = _cleans(deid)
    context = tag in _CONTEXT or (cleans and tag in _IDENTIFYING)
    rule = deid._rule(tag)
    sequence = _is_sequence(tag, vr)
    if (rule is None or rule.action is Action.KEEP) and not sequence:
        return _KEEP, context
    if rule is not None and rule.action is Action.REMOVE:
        return _DROP, context
    if rule is not None and rule.action is Action.BLANK and not sequence:
        return _BLANK, context
    return rule, True


@lru_cache(maxsize=4096)
def _empty(tag: int, vr: str | None, implicit: bool) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHI", group, element, 0)
    assert vr is not None  # explicit VR
    if vr in _WRITER_LONG:
        return struct.pack("<HH2sHI", group, element, vr.encode(), 0, 0)
    return struct.pack("<HH2sH", group, element, vr.encode(), 0)


def _cleans(deid: Deidentifier) -> bool:
    """Whether any rule, private ones included, is ``clean`` (which reads the identity)."""
    table = deid._table
    rules: list[Rule | None] = [*table.exact.values(), *(m.rule for m in table.masks)]
    rules += [*table.private.values(), table.private_default]
    return any(r is not None and r.action is Action.CLEAN for r in rules)


def _raw(data: bytes, entry: _Entry, implicit: bool) -> RawDataElement:
    tag, vr, _, start, stop, after, _ = entry
    length = _UNDEFINED if after != stop else stop - start
    value = bytes(data[start:stop])
    return RawDataElement(BaseTag(tag), vr, length, value, start, implicit, True, True, False)


def _complete(data: bytes, scan: _Scan, syntax: str) -> bool:
    """What :func:`~anonymizer.part10.read_part10` checks, else the general path reports it."""
    found = {e[0]: e for e in scan.entries if e[0] in _CHECKED}
    if SOP_CLASS_UID not in found or SOP_INSTANCE_UID not in found:
        return False
    if _compressed(syntax):
        return True
    try:
        rows, columns, bits = (_number(data, found.get(t)) for t in _IMAGE[2:])
        if not rows or not columns or not bits:
            return True
        pixels = found.get(_PIXEL_DATA)
        if pixels is None:
            return False
        frames = int(_number(data, found.get(0x00280008)) or 1)
        samples = int(_number(data, found.get(0x00280002)) or 1)
        photometric = _ascii(data, found.get(_PHOTOMETRIC))
        expected = native_length(int(rows), int(columns), samples, frames, int(bits), photometric)
    except ValueError:
        return False  # the general path decides what such values mean
    return pixels[4] - pixels[3] >= expected


_PHOTOMETRIC = 0x00280004
_CHECKED = frozenset({SOP_CLASS_UID, SOP_INSTANCE_UID, _PIXEL_DATA, _PHOTOMETRIC, *_IMAGE})


@lru_cache(maxsize=64)
def _compressed(syntax: str) -> bool:
    return bool(UID(syntax).is_compressed)


def _ascii(data: bytes, entry: _Entry | None) -> str:
    """A short text value (CS) as it stands, padding stripped; empty when absent."""
    if entry is None:
        return ""
    start, stop = entry[3], entry[4]
    return bytes(data[start:stop]).decode("ascii", "replace").strip(" \x00")


def _number(data: bytes, entry: _Entry | None) -> int | str | None:
    """A US (two bytes) or IS (one value) image attribute as ``peek`` gives it."""
    if entry is None:
        return None
    tag, vr, _, start, stop, _, _ = entry
    vr = vr or dictionary_vr(tag)
    if vr == "US" and stop - start == 2:
        return int.from_bytes(data[start:stop], "little")
    if vr == "IS":
        text = bytes(data[start:stop]).decode("ascii", "replace").strip(" \x00")
        if "\\" not in text:
            return text
    raise ValueError("unusual image attribute")


def _result_dataset(
    src: Dataset, scan: _Scan, rules: list[Any], changed: dict[int, Any], extra: dict[int, Any]
) -> Dataset:
    """The output's charset and identifiers, as a small data set to read them from."""
    elements: dict[BaseTag, Any] = {}
    kept = {e[0] for e, r in zip(scan.entries, rules, strict=True) if r is _KEEP}
    for tag in _RESULT_TAGS:
        if tag in extra:
            elem = extra[tag]
        elif tag in changed:
            elem = changed[tag]
        elif tag in kept:
            elem = src.get_item(tag)
        else:
            continue
        if elem is not None:
            elements[BaseTag(tag)] = elem
    return _dataset(elements, None, "")


_BLANK_STATE = dict(Dataset().__dict__)


def _dataset(elements: dict[BaseTag, Any], implicit: bool | None, charset: Any) -> Dataset:
    """``Dataset(elements)`` read with ``implicit`` VR and ``charset``, built without
    ``Dataset.__init__``'s dozen hooked attribute assignments (a tenth of an instance's
    time). The state is a fresh copy of a new Dataset's, mutable members included."""
    ds = Dataset.__new__(Dataset)
    state = ds.__dict__
    state.update(_BLANK_STATE)
    state["_dict"] = elements
    state["_private_blocks"] = {}
    state["_pixel_array_opts"] = {"use_pdh": False}
    state["_pixel_id"] = {}
    state["_read_implicit"] = implicit
    state["_read_little"] = None if implicit is None else True
    state["_read_charset"] = charset
    return ds


def _text(ds: Dataset, tag: int) -> str:
    value = peek(ds, tag)
    return "" if value is None else str(value).strip()


def _emit(
    out: Output,
    data: bytes,
    scan: _Scan,
    rules: list[Any],
    changed: dict[int, Any],
    pending: list[tuple[int, bytes]],
    encodings: list[str],
    runs: _Runs,
) -> bool:
    """Write the elements in tag order: kept ones as ``runs`` of input bytes, the rest
    encoded; ``pending`` (additions and marking, encoded, in tag order) replace their tags.

    False when an element would need the general path's writer after all.
    """
    pending.reverse()  # popped from the end, smallest tag first
    for entry, rule in zip(scan.entries, rules, strict=True):
        tag = entry[0]
        replaced = False
        while pending and pending[-1][0] <= tag:
            runs.flush()
            added_tag, encoded = pending.pop()
            replaced = replaced or added_tag == tag  # the addition or marking wins
            out.parts.append(encoded)
        if replaced or rule is _DROP:
            runs.flush()
        elif rule is _KEEP and entry[6]:
            runs.keep(entry)
        elif rule is _KEEP:
            runs.flush()
            if entry[4] > len(data):
                return False
            write_element(out, _raw(data, entry, out.implicit), encodings)
        elif rule is _BLANK:  # what empty_element and the raw writer give
            runs.flush()
            out.parts.append(_empty(tag, entry[1], out.implicit))
        else:
            runs.flush()
            new = changed.get(tag)
            if new is not None and not _write(out, new, encodings):
                return False
    runs.flush()
    out.parts.extend(encoded for _, encoded in reversed(pending))
    return True


class _Runs:
    """Consecutive kept elements, appended to the output as one view of the input. The
    pixel data's edits cut the view: ``zeros`` (byte ranges of native pixel data) go out
    as zeros, ``patches`` (text in encapsulated pixel data) as their bytes."""

    def __init__(
        self, parts: list[Any], data: bytes, zeros: tuple[ZeroRun, ...], patches: list[Patch]
    ) -> None:
        self.parts = parts
        self.view = memoryview(data)
        self.size = len(data)
        self.zeros = zeros
        #: What cuts pixel data kept in memory: the text patches of encapsulated pixel
        #: data, or the zero runs of native pixel data as patches of zeros.
        self.edits: list[tuple[int, bytes | memoryview]] = [*patches] or [
            (at, zero_bytes(length)) for at, length in zeros
        ]
        self.start = -1
        self.end = -1

    def keep(self, entry: _Entry) -> None:
        tag, _, head, start, stop, after, _ = entry
        if self.start < 0:
            self.start = head
        if stop > self.size:  # native pixel data left in the source file
            self.parts.append(self.view[self.start : start])
            zeros = self.zeros if tag == _PIXEL_DATA else ()
            self.parts.append(SourceTail(start, stop - start, zeros))
            self.start = -1
            return
        for at, new in self.edits if tag == _PIXEL_DATA else ():
            self.parts.append(self.view[self.start : start + at])
            self.parts.append(new)
            self.start = start + at + len(new)
        if after != stop:  # encapsulated pixel data: the writer's own delimiter
            self.parts.append(self.view[self.start : stop])
            self.parts.append(SEQUENCE_END)
            self.start = -1
        else:
            self.end = after

    def flush(self) -> None:
        if self.start >= 0:
            if self.end > self.start:
                self.parts.append(self.view[self.start : self.end])
            self.start = -1


def _write(out: Output, elem: Any, encodings: list[str]) -> bool:
    if isinstance(elem, RawDataElement) and not writable_raw(out, elem):
        return False  # would need decoding against the whole data set: general path
    write_element(out, elem, encodings)
    return True
