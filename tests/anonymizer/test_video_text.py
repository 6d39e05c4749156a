"""Text inside MPEG-2, H.264 and HEVC pixel data is overwritten in place; pictures unchanged.

Real streams from FFmpeg's MPEG-2 encoder, x264 and x265 (PyAV), with text planted where
recorders put it (:mod:`tests.anonymizer.video_streams`); each is de-identified on the byte
and the data-set paths, searched for every planted string and for the encoder's own banner,
and decoded by FFmpeg to the same pictures as the input.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.encaps import generate_fragments

from anonymizer import Deidentifier, load_profile, mpegts
from anonymizer.bitstream import scrub_encapsulated
from anonymizer.errors import UnreadableInput
from anonymizer.files import anonymize_tree
from tests.anonymizer.conftest import SITE_A, both_paths
from tests.anonymizer.corpus import all_option_sets
from tests.anonymizer.video_streams import (
    ENCODER_TEXT,
    H264_MPEG,
    HEVC_MAIN,
    MPEG2_MAIN,
    PLANTED,
    SERVICE_TEXT,
    decoded,
    decoded_ts,
    encoded,
    in_transport_stream,
    instance_of,
    kept_messages,
    noisy_clip,
    with_text,
)

CODECS = {"H.264": H264_MPEG, "HEVC": HEVC_MAIN, "MPEG-2": MPEG2_MAIN}


@pytest.fixture(scope="module")
def deid() -> Deidentifier:
    return Deidentifier(load_profile(), SITE_A)


def _stream(data: bytes) -> bytes:
    return b"".join(list(generate_fragments(dcmread(io.BytesIO(data)).PixelData))[1:])


@pytest.mark.parametrize("fragment", [None, 1000], ids=["one-fragment", "1000-byte-fragments"])
@pytest.mark.parametrize("codec", list(CODECS))
def test_text_in_a_video_stream_is_overwritten_and_the_pictures_stay(
    deid: Deidentifier, codec: str, fragment: int | None
) -> None:
    stream = with_text(codec)
    banner = ENCODER_TEXT[codec]
    assert all(text in stream for text in PLANTED[:3])
    assert banner in stream  # the encoder's own user data, there before anything planted
    data = instance_of(stream, CODECS[codec], fragment=fragment)
    fast = deid._direct(data, None)  # the fast path overwrites it too, copying around it
    assert fast is not None and fast.data == deid.deidentify_general(data).data
    outputs = both_paths(deid, data)
    for path, output in outputs.items():
        assert [t for t in PLANTED if t in output] == [], path
        if banner:
            assert banner not in output, path
        blanked = _stream(output)
        assert len(blanked) == len(_stream(data))  # fragments and offsets keep their lengths
        assert decoded(blanked, codec) == decoded(_stream(data), codec)
        if codec != "MPEG-2":
            for message in kept_messages(codec):  # SEI that is not text stays as it was
                assert message in blanked
    # Nothing left to overwrite: a second pass changes no pixel data.
    assert (
        scrub_encapsulated(dcmread(io.BytesIO(outputs["bytes"])).PixelData, CODECS[codec]) is None
    )


@pytest.mark.parametrize("codec", list(CODECS))
def test_an_encoders_own_stream_changes_only_in_its_banner(deid: Deidentifier, codec: str) -> None:
    stream = encoded(codec)
    if codec == "MPEG-2":  # FFmpeg's MPEG-2 encoder writes no user data
        data = instance_of(stream, MPEG2_MAIN)
        assert deid._direct(data, None) is not None
        output = deid.deidentify_part10(data).data
        assert _stream(output) == _stream(data)
    else:  # x264 and x265 always write their banner: only it changes
        data = instance_of(stream, CODECS[codec])
        output = deid.deidentify_part10(data).data
        before, after = _stream(data), _stream(output)
        banner = before.index(ENCODER_TEXT[codec])
        nal = before.rindex(b"\x00\x00\x01", 0, banner) + 3, before.index(b"\x00\x00\x01", banner)
        changed = [n for n, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
        assert ENCODER_TEXT[codec] not in after and changed
        assert nal[0] + 16 < changed[0] and changed[-1] < nal[1]  # its SEI NAL unit only
        assert decoded(after, codec) == decoded(before, codec)


@pytest.mark.parametrize(
    "codec, stream, reason",
    [
        ("MPEG-2", b"\x00\x00\x01\xba" + bytes(range(1, 40)), "a program stream"),
        ("H.264", b"\x47" + bytes(187) * 3, "not an elementary stream"),  # one sync byte only
        ("H.264", b"\x00\x00\x01\x86\x01\x02", "not a NAL unit header"),  # forbidden bit set
        ("HEVC", b"\x00\x00\x01\x4e\x01\x05\xff", "runs past its NAL unit"),  # truncated SEI
    ],
    ids=["mpeg2-program-stream", "lone-sync-byte", "forbidden-bit", "truncated-sei"],
)
def test_a_video_stream_that_cannot_be_checked_is_refused(
    deid: Deidentifier, codec: str, stream: bytes, reason: str, tmp_path: Path
) -> None:
    data = instance_of(stream, CODECS[codec])
    with pytest.raises(UnreadableInput, match=reason):
        deid.deidentify_part10(data)
    source = tmp_path / "clip.dcm"
    source.write_bytes(data)
    outcomes = list(anonymize_tree(deid, [source], tmp_path / "out"))
    assert [o.error_kind for o in outcomes] == ["UnreadableInput"]
    assert not any((tmp_path / "out").rglob("*.dcm"))  # nothing unchecked is written


def test_no_profile_lets_video_text_through() -> None:
    # Bit-stream text is not an attribute: no option of Table E.1-1 may keep it.
    data = {codec: instance_of(with_text(codec), syntax) for codec, syntax in CODECS.items()}
    for options in all_option_sets():
        deid = Deidentifier(load_profile(options=options), SITE_A)
        for codec, instance in data.items():
            output = deid.deidentify_part10(instance).data
            assert [t for t in PLANTED if t in output] == [], (codec, options)


@pytest.mark.parametrize(
    "codec, m2ts, fragment",
    [("H.264", False, None), ("HEVC", False, None), ("MPEG-2", False, None),
     ("H.264", True, None), ("HEVC", False, 1000)],
    ids=["h264", "hevc", "mpeg2", "h264-m2ts", "hevc-1000-byte-fragments"],
)  # fmt: skip
def test_text_in_a_transport_stream_is_overwritten_and_the_pictures_stay(
    deid: Deidentifier, codec: str, m2ts: bool, fragment: int | None
) -> None:
    # DICOM's container for H.264 and HEVC: video packets between tables, the SEI and user
    # data cut across packets, the room and hospital in the service table.
    stream = in_transport_stream(with_text(codec), codec, m2ts=m2ts)
    assert all(text in stream for text in SERVICE_TEXT)
    data = instance_of(stream, CODECS[codec], fragment=fragment)
    for path, output in both_paths(deid, data).items():
        assert [t for t in PLANTED + SERVICE_TEXT if t in output] == [], path
        if ENCODER_TEXT[codec]:
            assert ENCODER_TEXT[codec] not in output, path
        blanked = _stream(output)
        assert len(blanked) == len(_stream(data))
        assert decoded_ts(blanked) == decoded_ts(_stream(data))
        assert _sections_with_bad_crc(blanked) == []  # FFmpeg would drop such a table


def _sections_with_bad_crc(stream: bytes) -> list[int]:
    """Offsets of the service table sections whose CRC does not hold (computed bit by bit,
    apart from the anonymizer's table-driven CRC)."""
    bad = []
    for at in range(len(stream)):
        if stream[at] == 0x47 and stream[at + 1] & 0x1F == 0 and stream[at + 2] == 0x11:
            section = at + 5 + stream[at + 4]
            length = 3 + ((stream[section + 1] & 0x0F) << 8 | stream[section + 2])
            crc = 0xFFFFFFFF
            for byte in stream[section : section + length]:
                for bit in range(7, -1, -1):
                    top = (crc >> 31) ^ (byte >> bit & 1)
                    crc = (crc << 1 & 0xFFFFFFFF) ^ (0x04C11DB7 if top else 0)
            if crc != 0:  # the CRC over a section and its own CRC is zero
                bad.append(at)
    return bad


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: in_transport_stream(encoded("H.264"), "H.264", audio=True), "not video"),
        (lambda: encoded("H.264", "mp4"), "MP4 file"),
    ],
    ids=["transport-stream-with-audio", "mp4"],
)
def test_a_container_that_cannot_be_checked_is_refused(
    deid: Deidentifier, make: Callable[[], bytes], reason: str
) -> None:
    # A voice can name the patient; an MP4 file is not read here.
    with pytest.raises(UnreadableInput, match=reason):
        deid.deidentify_part10(instance_of(make(), H264_MPEG))


def _one_packet(payload: bytes, pid: int = 0x100) -> bytes:
    """One transport stream packet starting a unit on ``pid``, its payload padded."""
    header = bytes([0x47, 0x40 | pid >> 8, pid & 0xFF, 0x10])
    return header + payload + b"\xff" * (184 - len(payload))


@pytest.mark.parametrize(
    "packet, reason",
    [
        # a video PES header with a PTS and an extension holding 16 bytes of private data
        (_one_packet(b"\x00\x00\x01\xe0\x00\x00\x80\x81\x16" + b"\x21\x00\x01\x00\x01"
                     + b"\x80" + b"DOE^JANE 19750312" [:16] + b"\x00\x00\x00\x01\x09\xf0"),
         "private data"),
        # a time and date table (PID 0x14): the recording's date
        (_one_packet(b"\x00\x70\x70\x05\xe8\x7e\x12\x30\x00", pid=0x14), "0x70"),
    ],
    ids=["pes-private-data", "time-and-date-table"],
)  # fmt: skip
def test_transport_stream_fields_that_cannot_be_checked_are_refused(
    deid: Deidentifier, packet: bytes, reason: str
) -> None:
    stream = packet * 2
    with pytest.raises(UnreadableInput, match=reason):
        deid.deidentify_part10(instance_of(stream, H264_MPEG))


def _payloads_one_by_one(stream: bytes, size: int) -> dict[int, list[tuple[int, int]]]:
    """Each video PID's payload spans, read packet by packet as a decoder does (the
    reference for the anonymizer's vectorized reading): adaptation field skipped, the PES
    header skipped where a unit starts, tables and null packets left out."""
    first = size - 188
    videos: dict[int, list[tuple[int, int]]] = {}
    for base in range(first, len(stream) - 187, size):
        pid = (stream[base + 1] & 0x1F) << 8 | stream[base + 2]
        control = stream[base + 3]
        start = base + 4 + (1 + stream[base + 4] if control & 0x20 else 0)
        if pid == 0x1FFF or not control & 0x10 or start >= base + 188:
            continue
        if stream[base + 1] & 0x40 and stream[start : start + 3] == b"\x00\x00\x01":
            videos.setdefault(pid, [])
            start += 9 + stream[start + 8]
        if pid in videos:
            videos[pid].append((start, base + 188))
    return videos


@pytest.mark.parametrize(
    "codec, m2ts",
    [*((codec, False) for codec in CODECS), ("H.264", True)],
    ids=[*CODECS, "H.264-m2ts"],
)
def test_the_transport_streams_video_bytes_are_found_packet_for_packet(
    codec: str, m2ts: bool
) -> None:
    # Packet headers are read all at once; the spans must be those of a plain packet loop.
    stream = in_transport_stream(with_text(codec), codec, m2ts=m2ts)
    videos, _ = mpegts.video_streams(stream)
    assert videos == list(_payloads_one_by_one(stream, 192 if m2ts else 188).values())


def test_a_long_clips_video_bytes_are_found_packet_for_packet() -> None:
    # Noise keeps the encoder busy: hundreds of plain packets between PES starts.
    clip = noisy_clip("H.264", frames=10, size=(320, 240), bit_rate=4_000_000)
    stream = in_transport_stream(with_text("H.264", clip), "H.264")
    videos, _ = mpegts.video_streams(stream)
    assert videos == list(_payloads_one_by_one(stream, 188).values())
    full = sum(1 for start, end in videos[0] if end - start == 184)
    assert full > 0.9 * len(stream) / 188  # nearly all of them plain, read in bulk


def _plain_packet(pid: int = 0x100) -> bytes:
    """A packet continuing a stream on ``pid``: no unit start, payload only."""
    return bytes([0x47, pid >> 8, pid & 0xFF, 0x10]) + b"\x00" * 184


_AUDIO_START = _one_packet(b"\x00\x00\x01\xc0\x00\x00\x80\x00\x00", pid=0x101)
_SDT_START = _one_packet(bytes([0, 0x42, 0xF0, 0x0C]) + bytes(11) + bytes(4), pid=0x11)


@pytest.mark.parametrize(
    "packets, reason",
    [
        ([_plain_packet()], "PID 256 starts in the middle"),
        ([_plain_packet(), _AUDIO_START], "PID 256 starts in the middle"),
        ([_AUDIO_START, _plain_packet()], "not video"),
        ([_SDT_START, _plain_packet(0x11)], "service description section spans packets"),
        ([_SDT_START, _AUDIO_START, _plain_packet(0x11)], "not video"),
    ],
    ids=[
        "unknown-pid",
        "unknown-pid-then-audio",
        "audio-then-unknown-pid",
        "service-table-continued",
        "audio-before-the-continuation",
    ],
)
def test_the_first_packet_that_cannot_be_read_gives_the_reason(
    deid: Deidentifier, packets: list[bytes], reason: str
) -> None:
    # Plain packets are judged in bulk, the others one by one: the refusal still names the
    # first packet in the stream that cannot be read.
    with pytest.raises(UnreadableInput, match=reason):
        deid.deidentify_part10(instance_of(b"".join(packets) * 2, H264_MPEG))
