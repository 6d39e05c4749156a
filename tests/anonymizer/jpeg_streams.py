"""Real compressed streams with text in them, wrapped as DICOM instances (for the tests).

JPEG and JPEG 2000 written by Pillow with EXIF and comments, as a camera or a capture
station writes them; JPEG-LS written by DCMTK's ``dcmcjpls``, one scan per colour component.
Text between scans and after the end of the image is spliced into real streams.
"""

from __future__ import annotations

import io
import random
import subprocess
from pathlib import Path

from PIL import Image
from pydicom import dcmread
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import UID

from tests.factories import make_dataset, to_bytes

PLANTED = [b"SMITH^JOHN MRN-4711", b"DR WHO", b"PATIENT DOE JANE", b"J2K CAPTION SMITH"]
#: Planted between scans (a comment, an application segment) and after the end of image.
BETWEEN_SCANS = [b"SCAN2 NOTE ROE RICHARD", b"APP4 OPERATOR NGUYEN", b"TRAILER MRN-0815"]
SIDE = 64
PIXELS = bytes((x * 3 + y * 5) % 256 for y in range(SIDE) for x in range(SIDE))


def jpeg_with_text(comment: bool = True) -> bytes:
    image = Image.frombytes("L", (SIDE, SIDE), PIXELS)
    exif = Image.Exif()
    exif[0x010E] = PLANTED[0].decode()  # ImageDescription
    exif[0x013B] = PLANTED[1].decode()  # Artist
    out = io.BytesIO()
    extra = {"comment": PLANTED[2]} if comment else {}
    image.save(out, "JPEG", exif=exif.tobytes(), quality=95, **extra)
    return out.getvalue()


def j2k_with_text() -> bytes:
    out = io.BytesIO()
    Image.frombytes("L", (SIDE, SIDE), PIXELS).save(
        out, "JPEG2000", no_jp2=True, irreversible=False, comment=PLANTED[3].decode()
    )
    return out.getvalue()


def progressive_jpeg_with_text() -> bytes:
    """A progressive JPEG (a scan per pass) with a comment and an application segment
    before its second scan, and text after its end of image."""
    out = io.BytesIO()
    Image.frombytes("L", (SIDE, SIDE), PIXELS).save(out, "JPEG", quality=95, progressive=True)
    return with_text_between_scans(out.getvalue())


def with_text_between_scans(stream: bytes, *, between: bool = True) -> bytes:
    """``stream`` with a COM and an APP4 segment before its second scan (unless not
    ``between``), and a trailer after its EOI. The second SOS is found as a decoder finds
    it: ``FF DA`` cannot occur inside entropy-coded data (of either JPEG or JPEG-LS)."""
    comment, application, trailer = BETWEEN_SCANS
    assert stream.endswith(b"\xff\xd9")
    if not between:
        return stream + trailer
    second = stream.index(b"\xff\xda", stream.index(b"\xff\xda") + 2)
    spliced = (stream[:second] + _segment(0xFE, comment) + _segment(0xE4, application)
               + stream[second:])  # fmt: skip
    return spliced + trailer


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def jpeg_ls_instance(folder: Path, *, between_scans: bool) -> tuple[bytes, bytes]:
    """(A JPEG-LS instance whose one frame holds three scans — one per colour component —
    with text after its end and, if ``between_scans``, between them; the uncompressed
    pixels it decodes to).

    ISO 14495 allows tables and comments before each scan, but the CharLS inside DCMTK
    refuses to decode them there: only the frame with text after its end decodes.
    The pixels are noise, so the entropy-coded data holds ``FF`` followed by bytes below
    ``80``: data in JPEG-LS, a marker to a reader of ISO 10918 streams."""
    rng = random.Random(7)
    ds = make_dataset(rows=SIDE, columns=SIDE)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = rng.randbytes(SIDE * SIDE * 3)
    plain, compressed = folder / "ls-plain.dcm", folder / "ls.dcm"
    plain.write_bytes(to_bytes(ds))
    run = subprocess.run(["dcmcjpls", "+in", str(plain), str(compressed)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    encoded = dcmread(compressed)
    frame = b"".join(list(generate_fragments(encoded.PixelData))[1:]).rstrip(b"\x00")
    assert frame.count(b"\xff\xda") == 3
    spliced = with_text_between_scans(frame, between=between_scans)
    encoded.PixelData = encapsulate([spliced], has_bot=True)
    out = io.BytesIO()
    encoded.save_as(out, enforce_file_format=True)
    return out.getvalue(), bytes(ds.PixelData)


def instance_of(frames: list[bytes], syntax: str, *, split_at: int | None = None) -> bytes:
    """A Part 10 file holding ``frames``; ``split_at`` cuts each frame into two fragments
    there (an offset table then says where each frame starts)."""
    ds = make_dataset(rows=SIDE, columns=SIDE)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.NumberOfFrames = len(frames)
    if split_at is None:
        ds.PixelData = encapsulate(frames, has_bot=True)
    else:
        ds.PixelData = _split(frames, split_at)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    return to_bytes(ds)


def _split(frames: list[bytes], at: int) -> bytes:
    """Encapsulated frames of two fragments each, with a basic offset table."""
    items, offsets, position = [], [], 0
    for frame in frames:
        frame = frame + b"\x00" * (len(frame) % 2)
        offsets.append(position)
        for part in (frame[:at], frame[at:]):
            items.append(b"\xfe\xff\x00\xe0" + len(part).to_bytes(4, "little") + part)
            position += 8 + len(part)
    table = b"".join(o.to_bytes(4, "little") for o in offsets)
    return b"\xfe\xff\x00\xe0" + len(table).to_bytes(4, "little") + table + b"".join(items)


def frames_of(data: bytes) -> list[bytes]:
    ds = dcmread(io.BytesIO(data))
    fragments = list(generate_fragments(ds.PixelData))[1:]  # the offset table item first
    per_frame = len(fragments) // int(ds.NumberOfFrames)
    return [b"".join(fragments[n : n + per_frame]) for n in range(0, len(fragments), per_frame)]
