"""Text a device wrote into a compressed pixel bit stream, blanked in place.

JPEG headers (ISO 10918 and JPEG-LS) carry application segments — EXIF (APP1) from cameras
with dates, serial numbers, GPS positions and owners' names, IPTC captions (APP13) — and
comments (COM); JPEG 2000 codestreams carry comment segments (COM) too. Table E.1-1 does not
mention them, yet a dermatology photograph's EXIF can name the patient as surely as any
attribute. So each such segment in a frame's headers is blanked where it is: its bytes are
zeroed and an APPn marker becomes COM. Fragments, offset tables and the file keep their
lengths, and decoders skip the segment as they skip any comment. Kept as they are: APP0
JFIF/JFXX, APP2 ICC profiles, APP8 SPIFF and APP14 Adobe, which decoders read for colour
and layout and which hold no free text.

A frame starts at a fragment that begins with SOI (JPEG: ``FF D8`` cannot occur inside
entropy-coded data) or with SOC and SIZ (JPEG 2000); its headers are read across as many
of its fragments as they span. A JPEG frame is read to its end, not only to its first scan:
a progressive or multi-component frame has a scan per pass or component, and tables,
comments and application segments may come before each. Markers are found through the
entropy-coded data, where ``FF`` is always followed by ``00`` (a stuffed byte) or a restart
marker (in JPEG-LS, where a bit is stuffed instead, by a byte below ``80``). Bytes after the
frame's EOI are no image (a pad byte is zero) and are zeroed. A JPEG 2000 codestream's main
header and every tile-part header are read. Compressed pixel data of these syntaxes whose
first fragment starts no frame, or whose headers end before their frame does, cannot be
checked, and is refused.

Video (MPEG-2, H.264, HEVC) is one stream split over the fragments, not a frame per
fragment: the fragments are joined and read by :mod:`anonymizer.video`, which overwrites user
data and SEI text in place. RLE has no room for text (its segments are pixel runs), and
other compressed syntaxes are not inspected.
"""

from __future__ import annotations

import re
import struct
from itertools import pairwise

from anonymizer import video
from anonymizer.errors import UnreadableInput
from anonymizer.spans import Patch, Spans

_ITEM = b"\xfe\xff\x00\xe0"
_JPEG = frozenset(
    f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62,
                                        63, 64, 65, 66, 70, 80, 81)
)  # fmt: skip
_JPEG_LS = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
_JPEG_2000 = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in (90, 91, 92, 93, 201, 202, 203))
#: APPn segments kept, by marker and the identifier their payload starts with.
_KEPT_APPLICATION = (
    (0xE0, b"JFIF\x00"),
    (0xE0, b"JFXX\x00"),
    (0xE2, b"ICC_PROFILE\x00"),
    (0xE8, b"SPIFF\x00"),
    (0xEE, b"Adobe"),
)
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: no length follows
_SOS, _EOI, _COM = 0xDA, 0xD9, 0xFE
#: Where entropy-coded data ends: an ``FF`` followed by neither a stuffed ``00`` nor a
#: restart marker (which continues the scan). JPEG-LS stuffs a zero bit after ``FF``, so
#: there a marker is an ``FF`` followed by a byte of ``80`` or more.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")
_LS_SCAN_END = re.compile(rb"\xff[\x80-\xcf\xd8-\xff]")
_J2K_SOT, _J2K_SOD, _J2K_EOC, _J2K_COM = 0xFF90, 0xFF93, 0xFFD9, 0xFF64
#: Video transfer syntaxes (the fragmentable ones end in ``.1``) and their codec.
_VIDEO = {
    **{f"1.2.840.10008.1.2.4.{n}{f}": video.MPEG2 for n in (100, 101) for f in ("", ".1")},
    **{f"1.2.840.10008.1.2.4.{n}{f}": video.H264 for n in range(102, 107) for f in ("", ".1")},
    **{f"1.2.840.10008.1.2.4.{n}": video.HEVC for n in (107, 108)},
}


def inspected(syntax: str) -> bool:
    """True for the transfer syntaxes whose bit streams are checked for text here."""
    return syntax in _JPEG or syntax in _JPEG_2000 or syntax in _VIDEO


def text_patches(value: bytes | memoryview, syntax: str) -> list[Patch] | None:
    """What :func:`scrub_encapsulated` would write where in ``value`` (read in place,
    nothing copied), sorted: for a writer that copies ``value`` around them instead of
    copying it first. None when two overlap (then only applying them in order, as
    :func:`scrub_encapsulated` does, gives its bytes). Raises as it does."""
    patches = sorted(_to_blank(value, syntax))
    for (at, new), (following, _) in pairwise(patches):
        if at + len(new) > following:
            return None
    return patches


def scrub_encapsulated(value: bytes | memoryview, syntax: str) -> bytes | None:
    """``value`` (encapsulated pixel data: the offset table item, then the fragments) with
    every comment and application segment of its frames' headers blanked (video: its user
    data, SEI text and unspecified NAL units overwritten); None when there
    was nothing to blank (or ``syntax`` is not inspected). Same length, same items. Only
    the headers are read, and ``value`` is copied only when something is blanked.

    Raises
    ------
    UnreadableInput
        The items or the headers cannot be read, so they cannot be checked.
    """
    patches = _to_blank(value, syntax)
    if not patches:
        return None
    out = bytearray(value)
    for at, new in patches:
        out[at : at + len(new)] = new
    return bytes(out)


def _to_blank(value: bytes | memoryview, syntax: str) -> list[Patch]:
    """The bytes to write where in ``value`` (what an earlier pass blanked already, or what
    would change nothing, left out)."""
    codec = _VIDEO.get(syntax)
    if codec is not None:
        return _changing(value, _video_patches(value, codec))
    markers, zeros = _jpeg_blanks(value, syntax)
    patches = [(at, bytes([_COM])) for at in markers]
    patches += [(begin, bytes(end - begin)) for begin, end in zeros]
    return _changing(value, patches)


def _changing(value: bytes | memoryview, patches: list[Patch]) -> list[Patch]:
    return [(at, new) for at, new in patches if value[at : at + len(new)] != new]


def _video_patches(value: bytes | memoryview, codec: str) -> list[Patch]:
    """The stream's edits (:mod:`anonymizer.video`), mapped from the stream joined from
    every fragment back to ``value``."""
    stream = Spans(value, _fragments(value))
    return stream.placed(video.text_patches(stream.contiguous(), codec))


def _jpeg_blanks(value: bytes | memoryview, syntax: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Where in ``value`` a marker code must become COM, and the ranges to zero."""
    jpeg = syntax in _JPEG
    if not jpeg and syntax not in _JPEG_2000:
        return [], []
    spans = _fragments(value)
    starts = [_starts_frame(value, start, end, jpeg) for start, end in spans]
    if spans and not starts[0]:
        raise UnreadableInput(
            "compressed pixel data does not start with a frame header; cannot check it for text"
        )
    markers: list[int] = []
    zeros: list[tuple[int, int]] = []
    frame: list[tuple[int, int]] = []
    for span, start in zip([*spans, None], [*starts, True], strict=True):
        if start and frame:
            found = _blank_frame(value, frame, syntax)
            markers += found[0]
            zeros += found[1]
            frame = []
        if span is not None:
            frame.append(span)
    return markers, zeros


def _fragments(value: bytes | memoryview) -> list[tuple[int, int]]:
    """Where each fragment's bytes are in ``value`` (the offset table item skipped)."""
    spans = []
    pos, end, first = 0, len(value), True
    while pos < end:
        if bytes(value[pos : pos + 4]) != _ITEM or pos + 8 > end:
            raise UnreadableInput("encapsulated pixel data: an item was expected")
        (length,) = struct.unpack_from("<I", value, pos + 4)
        if pos + 8 + length > end:
            raise UnreadableInput("encapsulated pixel data: an item runs past the data")
        if not first:
            spans.append((pos + 8, pos + 8 + length))
        first = False
        pos += 8 + length
    return spans


def _starts_frame(value: bytes | memoryview, start: int, end: int, jpeg: bool) -> bool:
    head = bytes(value[start : min(end, start + 4)])
    return head[:3] == b"\xff\xd8\xff" if jpeg else head == b"\xff\x4f\xff\x51"


def _blank_frame(
    value: bytes | memoryview, spans: list[tuple[int, int]], syntax: str
) -> tuple[list[int], list[tuple[int, int]]]:
    """Where in ``value`` a marker code becomes COM, and the ranges to zero."""
    frame = Spans(value, spans)
    if syntax in _JPEG_2000:
        segments = _j2k_segments(frame)
    else:
        segments = _jpeg_segments(frame, _LS_SCAN_END if syntax in _JPEG_LS else _SCAN_END)
    markers: list[int] = []
    zeros: list[tuple[int, int]] = []
    for marker_at, payload, length in segments:
        if marker_at is not None:
            markers += [start for start, _ in frame.ranges(marker_at, 1)]
        zeros += frame.ranges(payload, length)
    return markers, zeros


def _jpeg_segments(frame: Spans, scan_end: re.Pattern[bytes]) -> list[tuple[int | None, int, int]]:
    """(marker code offset when the marker must become COM, payload offset, payload length)
    of every segment to blank in the whole frame, and of the bytes after its EOI."""
    data = frame.contiguous()
    size = len(data)
    found: list[tuple[int | None, int, int]] = []
    pos = 2  # after SOI
    while pos < size:  # entropy-coded data may run to the end: every marker was read
        if pos + 2 > size or data[pos] != 0xFF:
            raise UnreadableInput("JPEG header: a marker was expected; cannot check it for text")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == _EOI:
            tail = pos + 2
            if any(data[tail:]):
                found.append((None, tail, size - tail))
            break
        if marker in _STANDALONE:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > size:
            raise UnreadableInput("JPEG header: a segment runs past its frame")
        payload, count = pos + 4, length - 2
        if marker == _COM:
            found.append((None, payload, count))
        elif 0xE0 <= marker <= 0xEF and not _kept(marker, bytes(data[payload : payload + 12])):
            found.append((pos + 1, payload, count))
        pos += 2 + length
        if marker == _SOS:  # on through the scan's entropy-coded data to the next marker
            end = scan_end.search(data, pos)
            pos = size if end is None else end.start()
    return found


def _kept(marker: int, start: bytes) -> bool:
    return any(marker == m and start.startswith(name) for m, name in _KEPT_APPLICATION)


def _j2k_segments(frame: Spans) -> list[tuple[int | None, int, int]]:
    """(None, offset, length) of the text of every COM segment in the main header and the
    tile-part headers, following the tile-parts through the frame."""
    found: list[tuple[int | None, int, int]] = []
    pos = 2  # after SOC
    tile_end: int | None = None  # where the current tile-part ends (None: at the end)
    while pos + 2 <= frame.size:
        marker = int.from_bytes(frame.read(pos, 2), "big")
        if marker == _J2K_EOC:
            return found
        if marker == _J2K_SOD:  # a tile-part's data: on to the next tile-part, if any
            if tile_end is None:
                return found  # the last tile-part runs to the end of the codestream
            pos, tile_end = tile_end, None
            continue
        raw = frame.read(pos + 2, 2)
        length = int.from_bytes(raw, "big") if len(raw) == 2 else 0
        if marker >> 8 != 0xFF or length < 2 or pos + 2 + length > frame.size:
            raise UnreadableInput("JPEG 2000 header: a segment runs past its frame")
        if marker == _J2K_SOT:
            psot = int.from_bytes(frame.read(pos + 6, 4), "big")
            tile_end = None if psot == 0 else pos + psot  # 0: the last, to the end
            if tile_end is not None and tile_end > frame.size:
                raise UnreadableInput("JPEG 2000 header: a tile-part runs past its frame")
        elif marker == _J2K_COM and length > 4:
            found.append((None, pos + 6, length - 4))  # Rcom kept, the text blanked
        pos += 2 + length
    raise UnreadableInput("JPEG 2000 codestream: no end of codestream marker")
