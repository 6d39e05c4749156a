"""Text an encoder or a recorder wrote into an MPEG-2, H.264 or HEVC video stream.

Video carries free text outside its pictures. H.264 and HEVC streams carry *SEI* messages:
``user_data_unregistered`` (payload type 5: x264 writes its command line there, recorders
write device names, operators and dates) and ``user_data_registered_itu_t_t35`` (type 4:
closed captions). NAL units of the *unspecified* types (H.264 0 and 24 to 31, HEVC 48 to 63) hold
whatever an application puts there, and decoders skip them. MPEG-2 video has
``user_data`` after the start code ``00 00 01 B2``. Endoscopy and ultrasound recorders use
all of these.

Each such payload is overwritten with ``FF`` bytes where it is, so the stream, its
fragments and the file keep their lengths and decode to the same pictures:

- An SEI message keeps its type and size, and only its payload is overwritten (a
  ``user_data_unregistered`` message keeps its 16-byte UUID, which names the software, not
  the patient). Other SEI messages (buffering period, picture timing, recovery point) are
  kept byte for byte.
- H.264 and HEVC escape ``00 00 0x`` inside a NAL unit with an emulation prevention byte.
  An edited SEI NAL unit is therefore unescaped, edited and escaped again. ``FF`` bytes need
  no escaping, so the result is never longer. Zero bytes make up any difference after the
  NAL unit; the byte stream format allows them there (``trailing_zero_8bits``).
- An unspecified NAL unit keeps its header; the rest is overwritten.
- MPEG-2 user data runs to the next start code and is overwritten whole.

The stream is either *elementary* (H.264 and HEVC in the byte stream format of their
Annex B, MPEG-2 as a video elementary stream) or inside an MPEG-2 transport stream, which
DICOM asks for (:mod:`anonymizer.mpegts` finds the video's bytes between the packet headers,
and blanks the names in its service table). A program stream, an MP4 file, or a stream that
does not parse cannot be checked in place and is refused as unreadable. Nothing here knows
DICOM: :mod:`anonymizer.bitstream` hands over the stream joined from its fragments and maps
the edits back.
"""

from __future__ import annotations

import re

from anonymizer import mpegts
from anonymizer.errors import UnreadableInput
from anonymizer.spans import Patch, Spans

MPEG2, H264, HEVC = "MPEG-2", "H.264", "HEVC"

_START_CODE = re.compile(rb"\x00\x00\x01")
_ESCAPED = re.compile(rb"\x00\x00\x03")
_USER_DATA = 0xB2  # MPEG-2 user_data_start_code
_FIRST_SYSTEM_CODE = 0xB9  # MPEG-2 systems: program end, pack, PES packets
_H264_SEI = frozenset({6})
_H264_UNSPECIFIED = frozenset({0, *range(24, 32)})
_HEVC_SEI = frozenset({39, 40})  # prefix and suffix SEI
_HEVC_UNSPECIFIED = frozenset(range(48, 64))
_TEXT_SEI = {4: 0, 5: 16}  # SEI payload type: leading payload bytes kept (the UUID)
_FILL = 0xFF


def text_patches(stream: bytes | memoryview, codec: str) -> list[Patch]:
    """The edits that overwrite every text payload in ``stream``.

    ``codec`` is :data:`MPEG2`, :data:`H264` or :data:`HEVC`. Every edit is returned,
    including those that would change nothing; the caller drops those.

    Raises
    ------
    UnreadableInput
        The stream is not an elementary stream of ``codec``, or does not parse, so it
        cannot be checked for text.
    """
    if mpegts.is_transport_stream(stream):
        videos, patches = mpegts.video_streams(stream)
        if not videos:
            raise UnreadableInput(
                f"{codec} transport stream holds no video; cannot check it for text"
            )
        for spans in videos:
            elementary = Spans(stream, spans)
            patches += elementary.placed(_elementary_patches(elementary.contiguous(), codec))
        return patches
    if bytes(stream[4:8]) == b"ftyp":
        raise UnreadableInput(f"{codec} pixel data is an MP4 file; cannot check it for text")
    return _elementary_patches(stream, codec)


def _elementary_patches(stream: bytes | memoryview, codec: str) -> list[Patch]:
    units = _units(stream, codec)
    if codec == MPEG2:
        return _mpeg2_patches(stream, units)
    return _nal_patches(stream, units, codec)


def _units(stream: bytes | memoryview, codec: str) -> list[tuple[int, int]]:
    """(start, end) of what follows each start code, up to the next one, zero bytes at its
    end left out: NAL units (header included), or MPEG-2 start code values and their data."""
    codes = [m.end() for m in _START_CODE.finditer(stream)]
    if not codes or any(stream[: codes[0] - 3]):
        raise UnreadableInput(
            f"{codec} pixel data is not an elementary stream (no start code first); "
            "cannot check it for text"
        )
    units = []
    for start, following in zip(codes, [*codes[1:], len(stream) + 3], strict=True):
        end = following - 3
        while end > start and stream[end - 1] == 0:
            end -= 1
        if end == start:
            raise UnreadableInput(f"{codec} stream: an empty unit; cannot check it for text")
        units.append((start, end))
    return units


def _mpeg2_patches(stream: bytes | memoryview, units: list[tuple[int, int]]) -> list[Patch]:
    patches = []
    for start, end in units:
        code = stream[start]
        if code >= _FIRST_SYSTEM_CODE:
            raise UnreadableInput(
                "MPEG-2 pixel data is a program stream, not a video elementary or transport "
                "stream; cannot check it for text"
            )
        if code == _USER_DATA and end > start + 1:
            patches.append((start + 1, bytes([_FILL]) * (end - start - 1)))
    return patches


def _nal_patches(
    stream: bytes | memoryview, units: list[tuple[int, int]], codec: str
) -> list[Patch]:
    hevc = codec == HEVC
    header = 2 if hevc else 1
    sei, unspecified = (_HEVC_SEI, _HEVC_UNSPECIFIED) if hevc else (_H264_SEI, _H264_UNSPECIFIED)
    patches = []
    for start, end in units:
        first = stream[start]
        if first & 0x80 or end - start < header:
            raise UnreadableInput(
                f"{codec} stream: not a NAL unit header; cannot check it for text"
            )
        kind = (first >> 1) & 0x3F if hevc else first & 0x1F
        if kind in unspecified and end > start + header:
            patches.append((start + header, bytes([_FILL]) * (end - start - header)))
        elif kind in sei:
            nal = bytes(stream[start:end])
            payload = _blank_sei(nal[header:], codec)
            if payload is not None:
                edited = nal[:header] + payload
                patches.append((start, edited + bytes(len(nal) - len(edited))))
    return patches


def _blank_sei(escaped: bytes, codec: str) -> bytes | None:
    """The SEI payload ``escaped`` (NAL header removed) with the payload of every text
    message overwritten, escaped again; None when it holds no text message."""
    rbsp = bytearray(_ESCAPED.sub(b"\x00\x00", escaped))
    pos, size, found = 0, len(rbsp), False
    while pos < size and rbsp[pos:] != b"\x80":  # up to the RBSP trailing bits
        kind, pos = _sei_number(rbsp, pos, codec)
        length, pos = _sei_number(rbsp, pos, codec)
        if pos + length > size:
            raise UnreadableInput(f"{codec} SEI message runs past its NAL unit")
        kept = _TEXT_SEI.get(kind)
        if kept is not None:
            rbsp[pos + min(kept, length) : pos + length] = bytes([_FILL]) * max(length - kept, 0)
            found = True
        pos += length
    if not found:
        return None
    edited = _escape(rbsp)
    if len(edited) > len(escaped):  # cannot happen: FF needs no escaping
        raise UnreadableInput(f"{codec} SEI NAL unit would grow when blanked")
    return edited


def _sei_number(rbsp: bytearray, pos: int, codec: str) -> tuple[int, int]:
    """A payload type or size (``FF`` bytes of 255 each, then the last byte); new ``pos``."""
    value = 0
    while pos < len(rbsp) and rbsp[pos] == 0xFF:
        value += 255
        pos += 1
    if pos >= len(rbsp):
        raise UnreadableInput(f"{codec} SEI message header runs past its NAL unit")
    return value + rbsp[pos], pos + 1


def _escape(rbsp: bytearray) -> bytes:
    """Emulation prevention: a ``03`` after two zero bytes followed by a byte up to ``03``."""
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)
