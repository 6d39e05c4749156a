"""Real compressed streams with text in them, wrapped as DICOM instances (for the tests).

JPEG and JPEG 2000 written by Pillow with EXIF and comments, as a camera or a capture
station writes them.
"""

from __future__ import annotations

import io

from PIL import Image
from pydicom import dcmread
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import UID

from tests.factories import make_dataset, to_bytes

PLANTED = [b"SMITH^JOHN MRN-4711", b"DR WHO", b"PATIENT DOE JANE", b"J2K CAPTION SMITH"]
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
