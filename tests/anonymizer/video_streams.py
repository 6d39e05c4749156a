"""Real MPEG-2, H.264 and HEVC elementary streams with text planted where recorders put it.

The streams are encoded by FFmpeg's own MPEG-2 encoder, x264 and x265 (through PyAV), so
they carry what real encoders write: x264 and x265 put their version and command line in a
``user_data_unregistered`` SEI message. The text planted on top of that:
- H.264 and HEVC: a ``user_data_unregistered`` SEI message whose payload holds zero bytes,
  so the NAL unit needs emulation prevention bytes; a ``user_data_registered_itu_t_t35``
  (caption) message after a recovery point message and a reserved message whose bytes need
  escaping, both of which must survive byte for byte; and,
  in H.264, a NAL unit of an unspecified type;
- MPEG-2: a user data block after the sequence header.
"""

from __future__ import annotations

import io
import re
from fractions import Fraction

import av
import numpy as np
from pydicom.encaps import encapsulate
from pydicom.uid import UID

from tests.factories import make_dataset, to_bytes

SIDE, FRAMES = 64, 12
PLANTED = (b"DOE^JANE", b"MRN-7734421", b"ENDOSCOPY ROOM 3 DR HOUSE", b"19750312")
ENCODER_TEXT = {"H.264": b"x264 - core", "HEVC": b"x265", "MPEG-2": b""}
_FORMATS = {"H.264": ("h264", "libx264"), "HEVC": ("hevc", "libx265"),
            "MPEG-2": ("mpeg2video", "mpeg2video")}  # fmt: skip
_UUID = bytes(range(0x11, 0x21))  # no zero byte
#: A recovery point SEI payload: count 0, no exact match, no broken link, then alignment.
_RECOVERY = {"H.264": b"\x84", "HEVC": b"\x90"}
_RESERVED = b"\x00\x00\x01\x00\x00\x02"  # a reserved SEI payload type's bytes
H264_MPEG = "1.2.840.10008.1.2.4.102"
HEVC_MAIN = "1.2.840.10008.1.2.4.107"
MPEG2_MAIN = "1.2.840.10008.1.2.4.100"


def encoded(codec: str, container_format: str | None = None) -> bytes:
    """A short clip of moving gradients, encoded by ``codec``'s real encoder (as an
    elementary stream, or in ``container_format``, e.g. ``mp4``)."""
    fmt, encoder = _FORMATS[codec]
    out = io.BytesIO()
    with av.open(out, "w", format=container_format or fmt) as container:
        stream = container.add_stream(encoder, rate=Fraction(25))
        stream.width = stream.height = SIDE
        stream.pix_fmt = "yuv420p"
        if encoder == "libx265":
            stream.options = {"x265-params": "log-level=error"}
        ramp = np.add.outer(np.arange(SIDE), np.arange(SIDE)).astype(np.uint8)
        for n in range(FRAMES):
            picture = np.stack([ramp + 8 * n] * 3, axis=-1).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def noisy_clip(
    codec: str, *, frames: int = 250, size: tuple[int, int] = (640, 480), bit_rate: int = 8_000_000
) -> bytes:
    """``frames`` pictures of noise encoded by FFmpeg's encoder for ``codec`` (H.264 or
    MPEG-2): the encoder never rests, so the stream is as long as its bit rate allows
    (the benchmark's ~10 MB clip by default)."""
    fmt, encoder = {"H.264": ("h264", "libx264"), "MPEG-2": ("mpeg2video", "mpeg2video")}[codec]
    width, height = size
    rng = np.random.default_rng(1)
    out = io.BytesIO()
    with av.open(out, "w", format=fmt) as container:
        stream = container.add_stream(encoder, rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = bit_rate
        for _ in range(frames):
            picture = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def decoded(stream: bytes, codec: str) -> list[bytes]:
    """Every picture of ``stream`` (its luma plane), decoded by FFmpeg."""
    fmt, _ = _FORMATS[codec]
    with av.open(io.BytesIO(stream), "r", format=fmt) as container:
        return [f.to_ndarray(format="gray").tobytes() for f in container.decode(video=0)]


def with_text(codec: str, stream: bytes | None = None) -> bytes:
    """``codec``'s real stream (``stream``, else :func:`encoded`'s) with :data:`PLANTED` text
    spliced in where recorders put it."""
    stream = stream if stream is not None else encoded(codec)
    if codec == "MPEG-2":
        gop = stream.index(b"\x00\x00\x01\xb8")  # after the sequence header and extension
        user_data = b"\x00\x00\x01\xb2" + b" ".join(PLANTED)
        return stream[:gop] + user_data + stream[gop:]
    first_slice = _first_slice(stream, codec)
    units = [_sei(codec, [(5, _UUID + PLANTED[0] + b"\x00\x00\x01" + PLANTED[1]),
                          (6, _RECOVERY[codec]),
                          (200, _RESERVED),  # zeros that need escaping, kept as they are
                          (4, b"\xb5\x00\x31" + PLANTED[2])])]  # fmt: skip
    if codec == "H.264":
        units.append(b"\x18" + PLANTED[3])  # nal_unit_type 24: unspecified
    spliced = b"".join(b"\x00\x00\x00\x01" + _escape(unit) for unit in units)
    return stream[:first_slice] + spliced + stream[first_slice:]


SERVICE_TEXT = (b"ENDO ROOM 3 DOE^JANE", b"ST ELSEWHERE RADIOLOGY")


def in_transport_stream(
    stream: bytes, codec: str, *, m2ts: bool = False, audio: bool = False
) -> bytes:
    """``stream`` muxed by FFmpeg into an MPEG-2 transport stream (as DICOM asks for H.264
    and HEVC), the recorder's room and the hospital named in its service table; 192-byte
    Blu-ray packets with ``m2ts``, a silent MP2 audio track with ``audio``."""
    fmt, _ = _FORMATS[codec]
    out = io.BytesIO()
    with av.open(io.BytesIO(stream), "r", format=fmt) as source:
        options = {"mpegts_m2ts_mode": "1"} if m2ts else {}
        with av.open(out, "w", format="mpegts", options=options) as container:
            container.metadata["service_name"] = SERVICE_TEXT[0].decode()
            container.metadata["service_provider"] = SERVICE_TEXT[1].decode()
            video = container.add_stream_from_template(source.streams.video[0])
            sound = container.add_stream("mp2", rate=48000) if audio else None
            packets = [p for p in source.demux(source.streams.video[0]) if p.size]
            for n, packet in enumerate(packets):
                packet.stream, packet.pts, packet.dts = video, n, n
                packet.time_base = Fraction(1, 25)
                container.mux(packet)
            if sound is not None:
                silence = av.AudioFrame(format="s16", layout="stereo", samples=1152)
                for plane in silence.planes:
                    plane.update(bytes(plane.buffer_size))
                silence.sample_rate = 48000
                for packet in [*sound.encode(silence), *sound.encode()]:
                    container.mux(packet)
    return out.getvalue()


def decoded_ts(stream: bytes) -> list[bytes]:
    """Every picture of the transport stream's video (its luma plane), decoded by FFmpeg."""
    with av.open(io.BytesIO(stream), "r", format="mpegts") as container:
        return [f.to_ndarray(format="gray").tobytes() for f in container.decode(video=0)]


def kept_messages(codec: str) -> list[bytes]:
    """The planted SEI messages that are not text, escaped, as they must come out."""
    return [b"\x06\x01" + _RECOVERY[codec], _escape(bytes([200, len(_RESERVED)]) + _RESERVED)]


def instance_of(stream: bytes, syntax: str, *, fragment: int | None = None) -> bytes:
    """A Part 10 video instance holding ``stream``, in one fragment or cut into fragments of
    ``fragment`` bytes (the stream is one frame, which may span fragments)."""
    ds = make_dataset(rows=SIDE, columns=SIDE)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.PlanarConfiguration = 0
    ds.NumberOfFrames = FRAMES
    stream += b"\x00" * (len(stream) % 2)
    if fragment is None:
        ds.PixelData = encapsulate([stream], has_bot=False)
    else:
        pieces = [stream[n : n + fragment] for n in range(0, len(stream), fragment)]
        items = b"".join(b"\xfe\xff\x00\xe0" + len(p).to_bytes(4, "little") + p for p in pieces)
        ds.PixelData = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + items
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    return to_bytes(ds)


def _first_slice(stream: bytes, codec: str) -> int:
    """Where the start code of the first coded picture's NAL unit begins."""
    pos = stream.index(b"\x00\x00\x01")
    while pos != -1:
        header = stream[pos + 3]
        kind = (header >> 1) & 0x3F if codec == "HEVC" else header & 0x1F
        if (codec == "HEVC" and kind < 32) or (codec == "H.264" and kind in (1, 5)):
            return pos - 1 if pos and stream[pos - 1] == 0 else pos
        pos = stream.find(b"\x00\x00\x01", pos + 3)
    raise AssertionError("no coded picture in the stream")


def _sei(codec: str, messages: list[tuple[int, bytes]]) -> bytes:
    """An SEI NAL unit (unescaped) holding ``messages`` (payload type, payload)."""
    header = b"\x4e\x01" if codec == "HEVC" else b"\x06"  # HEVC prefix SEI, layer 0, tid 1
    body = b"".join(bytes([kind, len(payload)]) + payload for kind, payload in messages)
    return header + body + b"\x80"


def _escape(unit: bytes) -> bytes:
    """Emulation prevention, written apart from the anonymizer's so a test can catch its bugs:
    ``03`` after each pair of zero bytes that a byte up to ``03`` follows."""
    return re.sub(rb"\x00\x00(?=[\x00-\x03])", b"\x00\x00\x03", unit)
