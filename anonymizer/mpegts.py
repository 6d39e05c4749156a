"""MPEG-2 transport streams: where the video lies, and the text in the service table.

DICOM wants H.264 and HEVC video in an MPEG-2 transport stream (PS3.5 8.2.8) or an MP4 file.
A transport stream cuts each stream into 188-byte packets (192 in the Blu-ray variant: a
4-byte time code first), interleaved with tables. This module reads the packets and
returns, for each video stream, the spans of its elementary stream bytes (packet headers,
adaptation fields and PES headers left out). :mod:`anonymizer.video` reads each joined
elementary stream for text and writes its edits back through the spans, in place.

The tables hold text too. The service description table (SDT) names a service and its
provider; recorders write a room or a department there, and FFmpeg writes its own name.
Those names are overwritten with spaces, and the section's CRC is computed again.

Refused as unreadable, because they cannot be checked in place:
- audio (a voice can name the patient) and any stream that is not video;
- scrambled or damaged packets, and a stream that does not start on a packet;
- a PES header with private data (16 bytes of the recorder's choosing);
- a table other than the program association, program map and service description tables
  (the event table names programmes, the time tables give the recording date);
- a service description section that spans packets, or a descriptor in it other than the
  service descriptor.
"""

from __future__ import annotations

import numpy as np

from anonymizer.errors import UnreadableInput
from anonymizer.spans import Patch

PACKET = 188
_SYNC = 0x47
_NULL_PID, _SDT_PID = 0x1FFF, 0x0011
_PAT, _PMT, _SDT_ACTUAL, _SDT_OTHER, _STUFFING = 0x00, 0x02, 0x42, 0x46, 0xFF
_SERVICE_DESCRIPTOR = 0x48
_VIDEO_STREAM_IDS = range(0xE0, 0xF0)


def is_transport_stream(stream: bytes | memoryview) -> bool:
    """True when ``stream`` starts with two packets of a transport stream (either size)."""
    return _layout(stream) is not None


def video_streams(stream: bytes | memoryview) -> tuple[list[list[tuple[int, int]]], list[Patch]]:
    """Each video stream's elementary stream spans, in order, and the edits of the tables.

    Raises
    ------
    UnreadableInput
        What the module docstring lists, and anything that does not parse.
    """
    layout = _layout(stream)
    if layout is None:
        raise _unreadable("it does not start with a packet")
    size, first = layout
    count = (len(stream) - first + size - PACKET) // size
    tail = first + count * size - (size - PACKET)
    if any(stream[tail:]):
        raise _unreadable("it ends inside a packet")
    packets = _Packets(stream, first, size, count)
    demux = _Demux(packets)
    for number in packets.unusual.tolist():
        demux.check_before(number)
        span = _payload(stream, first + number * size)
        if span is not None:
            demux.take(stream, number, *span)
    demux.check_before(count)
    return demux.video_spans(), demux.patches


class _Packets:
    """The packet headers, read all at once (NumPy): a clip is tens of thousands of packets,
    and most of them continue a video stream with a plain payload (sync byte, no error, no
    unit start, not scrambled, payload only). Only the others are read one by one."""

    def __init__(self, stream: bytes | memoryview, first: int, size: int, count: int) -> None:
        data = np.frombuffer(stream, dtype=np.uint8)
        self.bases = first + size * np.arange(count, dtype=np.int64)
        sync, flags, low, control = (data[self.bases + k] for k in range(4))
        self.pids = (flags.astype(np.int32) & 0x1F) << 8 | low
        plain = (sync == _SYNC) & (flags & 0xC0 == 0) & (control & 0xF0 == 0x10)
        self.unusual = np.flatnonzero(~plain)
        numbers = np.flatnonzero(plain)
        pids = self.pids[numbers]
        #: pid: the numbers of its plain packets (null packets are skipped as any decoder does)
        self.plain = {
            int(pid): numbers[pids == pid] for pid in np.unique(pids).tolist() if pid != _NULL_PID
        }


class _Demux:
    """What each PID carries, from which packet on; the spans of video payloads in packets
    read one by one; the tables' edits. A plain packet of a PID not yet known (or of the
    service table, whose sections must fit one packet) is refused in stream order: the
    first packet in the stream that cannot be read decides the reason."""

    def __init__(self, packets: _Packets) -> None:
        self.packets = packets
        self.kinds: dict[int, str] = {}  # pid: "video" or "table"
        self.since: dict[int, int] = {}  # pid: the packet that said what it carries
        self.videos: dict[int, list[tuple[int, int, int]]] = {}  # pid: (packet, start, end)
        self.patches: list[Patch] = []
        #: (packet, reason) of the first plain packet that cannot be read, given what is known
        self.blocked = self._first_blocked()

    def _first_blocked(self) -> tuple[int, str] | None:
        found = []
        for pid, numbers in self.packets.plain.items():
            since = self.since.get(pid)
            if since is None or numbers[0] < since:
                found.append(
                    (int(numbers[0]), f"PID {pid} starts in the middle of a packet sequence")
                )
            elif pid == _SDT_PID and self.kinds[pid] == "table":
                later = numbers[numbers > since]
                if len(later):
                    found.append((int(later[0]), "a service description section spans packets"))
        return min(found, default=None)

    def check_before(self, number: int) -> None:
        """Refuse the stream if a plain packet before packet ``number`` cannot be read."""
        if self.blocked is not None and self.blocked[0] < number:
            raise _unreadable(self.blocked[1])

    def _learn(self, pid: int, kind: str, number: int) -> None:
        self.kinds[pid] = kind
        self.since[pid] = number
        self.blocked = self._first_blocked()

    def take(
        self, stream: bytes | memoryview, number: int, pid: int, start: int, end: int,
        unit_start: bool,
    ) -> None:  # fmt: skip
        kind = self.kinds.get(pid)
        if unit_start and stream[start : start + 3] == b"\x00\x00\x01":
            if kind == "table":
                raise _unreadable(f"PID {pid} carries tables and a PES stream")
            if kind is None:
                self._learn(pid, "video", number)
                self.videos[pid] = []
            start = _after_pes_header(stream, start, end)
        elif unit_start:
            if kind == "video":
                raise _unreadable(f"PID {pid} carries a PES stream and tables")
            if kind is None:
                self._learn(pid, "table", number)
            self.patches += _tables(stream, start, end, pid)
            return
        elif kind is None:
            raise _unreadable(f"PID {pid} starts in the middle of a packet sequence")
        elif kind == "table":
            if pid == _SDT_PID:
                raise _unreadable("a service description section spans packets")
            return
        self.videos[pid].append((number, start, end))

    def video_spans(self) -> list[list[tuple[int, int]]]:
        """Each video PID's payload spans in packet order: those read one by one merged
        with its plain packets' (4 bytes of header, then payload to the packet's end)."""
        out = []
        for pid, read in self.videos.items():
            plain = self.packets.plain.get(pid, np.empty(0, dtype=np.int64))
            numbers = np.concatenate([np.array([n for n, _, _ in read], dtype=np.int64), plain])
            starts = np.concatenate(
                [np.array([s for _, s, _ in read], dtype=np.int64), self.packets.bases[plain] + 4]
            )
            order = np.argsort(numbers, kind="stable")
            begin = starts[order]
            ends = np.concatenate(
                [
                    np.array([e for _, _, e in read], dtype=np.int64),
                    self.packets.bases[plain] + PACKET,
                ]
            )[order]
            out.append(list(zip(begin.tolist(), ends.tolist(), strict=True)))
        return out


def _after_pes_header(stream: bytes | memoryview, start: int, end: int) -> int:
    """Where a video PES packet's elementary stream bytes start; refuses any other stream."""
    stream_id = stream[start + 3]
    if stream_id not in _VIDEO_STREAM_IDS:
        raise _unreadable(
            f"it carries a stream that is not video (stream id {stream_id:#04x}: audio or data)"
        )
    header_end = start + 9 + stream[start + 8]
    if header_end > end:
        raise _unreadable("a PES header runs past its packet")
    if _has_private_data(stream, start, header_end):
        raise _unreadable("a PES header carries private data")
    return header_end


#: Optional PES header fields before the extension, by flag in the header's second flag byte.
_PES_FIELDS = ((0x20, 6), (0x10, 3), (0x08, 1), (0x04, 1), (0x02, 2))  # ESCR ... CRC


def _has_private_data(stream: bytes | memoryview, start: int, header_end: int) -> bool:
    """True when the PES header at ``start`` has an extension with its 16 bytes of private
    data: free bytes of the recorder's choosing, which this module does not read."""
    flags = stream[start + 7]
    if not flags & 0x01:  # no PES extension
        return False
    at = start + 9 + {0x80: 5, 0xC0: 10}.get(flags & 0xC0, 0)  # PTS, PTS and DTS
    at += sum(size for flag, size in _PES_FIELDS if flags & flag)
    if at >= header_end:
        raise _unreadable("a PES header is shorter than its flags say")
    return bool(stream[at] & 0x80)


def _layout(stream: bytes | memoryview) -> tuple[int, int] | None:
    """(packet size, offset of the first sync byte), or None when not a transport stream."""
    for size, first in ((PACKET, 0), (PACKET + 4, 4)):
        if len(stream) >= first + size + 1 and stream[first] == stream[first + size] == _SYNC:
            return size, first
    return None


def _payload(stream: bytes | memoryview, base: int) -> tuple[int, int, int, bool] | None:
    """(PID, payload start, payload end, payload unit start) of the packet at ``base``;
    None when it has no payload or is a null packet."""
    if stream[base] != _SYNC:
        raise _unreadable(f"no sync byte at {base}")
    flags, low, control = stream[base + 1], stream[base + 2], stream[base + 3]
    if flags & 0x80:
        raise _unreadable(f"the packet at {base} is marked as damaged")
    if control & 0xC0:
        raise _unreadable(f"the packet at {base} is scrambled")
    pid = (flags & 0x1F) << 8 | low
    start, end = base + 4, base + PACKET
    if control & 0x20:  # an adaptation field first
        start += 1 + stream[base + 4]
    if pid == _NULL_PID or not control & 0x10 or start >= end:
        if start > end:
            raise _unreadable(f"the adaptation field at {base} runs past its packet")
        return None
    return pid, start, end, bool(flags & 0x40)


def _tables(stream: bytes | memoryview, start: int, end: int, pid: int) -> list[Patch]:
    """The edits of the sections that start in this packet's payload (after its pointer)."""
    pos = start + 1 + stream[start]
    patches: list[Patch] = []
    while pos < end and stream[pos] != _STUFFING:
        table = stream[pos]
        if table not in (_PAT, _PMT, _SDT_ACTUAL, _SDT_OTHER) or (
            table in (_SDT_ACTUAL, _SDT_OTHER) and pid != _SDT_PID
        ):
            raise _unreadable(f"it carries a table that may hold text or dates (id {table:#04x})")
        if pos + 3 > end:
            break  # a section header cut by the packet: continued in the next one
        section_end = pos + 3 + ((stream[pos + 1] & 0x0F) << 8 | stream[pos + 2])
        if table in (_SDT_ACTUAL, _SDT_OTHER):
            if section_end > end:
                raise _unreadable("a service description section spans packets")
            patches += _service_names(stream, pos, section_end)
        pos = section_end
    return patches


def _service_names(stream: bytes | memoryview, pos: int, section_end: int) -> list[Patch]:
    """The SDT section at ``pos`` with its provider and service names blanked, CRC redone."""
    section = bytearray(stream[pos:section_end])
    at, services_end = 11, len(section) - 4
    while at + 5 <= services_end:
        loop_end = at + 5 + ((section[at + 3] & 0x0F) << 8 | section[at + 4])
        at += 5
        while at < loop_end:
            tag, length = section[at], section[at + 1]
            if tag != _SERVICE_DESCRIPTOR:
                raise _unreadable(f"its service table holds descriptor {tag:#04x}")
            body = at + 2
            provider = section[body + 1]
            name_at = body + 2 + provider
            _blank(section, body + 2, provider)
            _blank(section, name_at + 1, section[name_at])
            at = body + length
        if at != loop_end:
            raise _unreadable("a service descriptor runs past its service")
    section[-4:] = crc32_mpeg(bytes(section[:-4])).to_bytes(4, "big")
    return [(pos, bytes(section))]


def _blank(section: bytearray, start: int, length: int) -> None:
    section[start : start + length] = b" " * length


def _unreadable(why: str) -> UnreadableInput:
    return UnreadableInput(f"MPEG-2 transport stream: {why}; cannot check it for text")


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = (crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return table


_CRC_TABLE = _crc_table()


def crc32_mpeg(data: bytes) -> int:
    """The CRC of MPEG-2 sections (polynomial 04C11DB7, not reflected, no final XOR)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = (crc << 8 & 0xFFFFFFFF) ^ _CRC_TABLE[(crc >> 24) ^ byte]
    return crc
