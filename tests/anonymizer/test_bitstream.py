"""Text inside compressed pixel data: EXIF, captions and comments are blanked in place.

The streams are real: JPEG and JPEG 2000 written by Pillow (with EXIF and comments, as a
camera or a capture station writes them), progressive JPEG and JPEG-LS (DCMTK) with text
spliced between their scans and after their end; the blanked outputs are decoded by Pillow
and by DCMTK's ``dcmdjpeg`` / ``dcmdjpls`` to the same pixels as the inputs.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit

from anonymizer import Deidentifier, load_profile
from anonymizer.bitstream import scrub_encapsulated
from anonymizer.files import anonymize_tree
from tests.anonymizer.conftest import SITE_A, both_paths
from tests.anonymizer.jpeg_streams import (
    BETWEEN_SCANS,
    PLANTED,
    SIDE,
    frames_of,
    instance_of,
    j2k_with_text,
    jpeg_ls_instance,
    jpeg_with_text,
    progressive_jpeg_with_text,
)


@pytest.fixture(scope="module")
def deid() -> Deidentifier:
    return Deidentifier(load_profile(), SITE_A)


@pytest.mark.parametrize(
    "syntax, frames, split_at",
    [
        (JPEGBaseline8Bit, [jpeg_with_text()], None),
        (
            JPEGBaseline8Bit,
            [jpeg_with_text(), jpeg_with_text()],
            30,
        ),  # headers spanning two fragments
        (JPEG2000Lossless, [j2k_with_text(), j2k_with_text()], None),
        (JPEGExtended12Bit, [progressive_jpeg_with_text()], 200),  # text between scans
    ],
    ids=["jpeg", "jpeg-split-fragments", "j2k", "jpeg-progressive"],
)
def test_text_in_the_bit_stream_is_blanked_on_every_path(
    deid: Deidentifier, syntax: str, frames: list[bytes], split_at: int | None
) -> None:
    data = instance_of(frames, syntax, split_at=split_at)
    assert any(text in data for text in PLANTED + BETWEEN_SCANS)
    fast = deid._direct(data, None)  # the fast path overwrites it too, copying around it
    assert fast is not None and fast.data == deid.deidentify_general(data).data
    outputs = both_paths(deid, data)
    for path, output in outputs.items():
        assert [t for t in PLANTED + BETWEEN_SCANS if t in output] == [], path
        before, after = dcmread(io.BytesIO(data)), dcmread(io.BytesIO(output))
        assert len(after.PixelData) == len(before.PixelData)  # lengths, offsets unchanged
        for old, new in zip(frames_of(data), frames_of(output), strict=True):
            assert Image.open(io.BytesIO(new)).tobytes() == Image.open(io.BytesIO(old)).tobytes()
    # Once blank, nothing is left to blank: a re-send gives the same bytes.
    assert scrub_encapsulated(dcmread(io.BytesIO(outputs["bytes"])).PixelData, syntax) is None
    assert deid.deidentify_part10(outputs["bytes"]).data != outputs["bytes"]  # new UIDs, but
    again = dcmread(io.BytesIO(deid.deidentify_part10(outputs["bytes"]).data)).PixelData
    assert again == dcmread(io.BytesIO(outputs["bytes"])).PixelData  # the same pixels


def test_pixel_data_the_fast_path_cannot_copy_as_it_is_is_blanked_by_the_general_path(
    deid: Deidentifier,
) -> None:
    # Non-zero reserved bytes in the Pixel Data header: the fast path would write the
    # element anew, from the input's value; the general path writes it blanked.
    data = bytearray(instance_of([jpeg_with_text()], JPEGBaseline8Bit))
    header = data.index(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff")
    data[header + 6 : header + 8] = b"\x01\x00"
    assert deid._direct(bytes(data), None) is None
    output = deid.deidentify_bytes(bytes(data))
    assert [t for t in PLANTED if t in output] == []


def test_dcmtk_decodes_the_blanked_jpeg_to_the_same_pixels(
    deid: Deidentifier, tmp_path: Path
) -> None:
    source = tmp_path / "in.dcm"
    source.write_bytes(instance_of([jpeg_with_text()], JPEGBaseline8Bit))
    output = tmp_path / "out.dcm"
    output.write_bytes(deid.deidentify_part10(source.read_bytes()).data)
    decoded = {}
    for name in ("in", "out"):
        plain = tmp_path / f"{name}-plain.dcm"
        run = subprocess.run(["dcmdjpeg", str(tmp_path / f"{name}.dcm"), str(plain)],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert run.returncode == 0, run.stderr
        decoded[name] = dcmread(plain).PixelData
    assert decoded["out"] == decoded["in"] and len(decoded["in"]) == SIDE * SIDE


def test_text_between_jpeg_ls_scans_is_blanked_and_nothing_else_changes(
    deid: Deidentifier, tmp_path: Path
) -> None:
    data, _ = jpeg_ls_instance(tmp_path, between_scans=True)
    frame = dcmread(io.BytesIO(data)).PixelData
    assert all(text in frame for text in BETWEEN_SCANS)
    # FF then a byte below 80 is data in JPEG-LS; read as ISO 10918 it would be a marker.
    assert any(0 < frame[at + 1] < 0x80 for at in range(len(frame) - 1) if frame[at] == 0xFF)
    comment, application, trailer = (frame.index(text) for text in BETWEEN_SCANS)
    may_change = {application - 3}  # the APP4 marker code, now COM
    for text, at in zip(BETWEEN_SCANS, (comment, application, trailer), strict=True):
        may_change |= set(range(at, at + len(text)))
    for path, output in both_paths(deid, data).items():
        blanked = dcmread(io.BytesIO(output)).PixelData
        assert [t for t in BETWEEN_SCANS if t in blanked] == [], path
        changed = {at for at, (old, new) in enumerate(zip(frame, blanked, strict=True))
                   if old != new}  # fmt: skip
        assert changed and changed <= may_change, path  # the scans' data is untouched
        assert blanked[application - 3] == 0xFE


def test_dcmtk_decodes_a_jpeg_ls_frame_blanked_after_its_three_scans(
    deid: Deidentifier, tmp_path: Path
) -> None:
    data, pixels = jpeg_ls_instance(tmp_path, between_scans=False)
    assert BETWEEN_SCANS[2] in data
    for path, output in both_paths(deid, data).items():
        assert BETWEEN_SCANS[2] not in output, path
        (tmp_path / f"{path}.dcm").write_bytes(output)
        plain = tmp_path / f"{path}-plain.dcm"
        run = subprocess.run(["dcmdjpls", str(tmp_path / f"{path}.dcm"), str(plain)],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert dcmread(plain).PixelData == pixels, path


def test_a_jpeg_without_text_keeps_the_fast_path_and_its_bytes(deid: Deidentifier) -> None:
    plain = jpeg_with_text(comment=False)
    end = plain.index(b"\xff\xdb")  # strip the EXIF segment Pillow was given: JFIF stays
    start = plain.index(b"\xff\xe1")
    frame = plain[:start] + plain[end:]
    data = instance_of([frame], JPEGBaseline8Bit)
    fast = deid._direct(data, None)
    assert fast is not None
    assert fast.data == deid.deidentify_general(data).data
    assert dcmread(io.BytesIO(fast.data)).PixelData == dcmread(io.BytesIO(data)).PixelData


def test_pixel_data_that_cannot_be_checked_is_refused_alone(
    deid: Deidentifier, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a-good.dcm").write_bytes(instance_of([jpeg_with_text()], JPEGBaseline8Bit))
    garbled = bytearray(jpeg_with_text())
    garbled[2:4] = b"??"  # no marker after SOI: the header cannot be read
    (folder / "b-garbled.dcm").write_bytes(instance_of([bytes(garbled)], JPEGBaseline8Bit))
    (folder / "c-no-frame.dcm").write_bytes(
        instance_of([b"\x00\x01" + jpeg_with_text()], JPEGBaseline8Bit)
    )
    outcomes = {o.source.name: o for o in anonymize_tree(deid, sorted(folder.iterdir()),
                                                         tmp_path / "out")}  # fmt: skip
    assert outcomes["a-good.dcm"].ok
    for name in ("b-garbled.dcm", "c-no-frame.dcm"):
        assert outcomes[name].error_kind == "UnreadableInput"
        assert "cannot check it for text" in str(outcomes[name].error), name
    assert len(list((tmp_path / "out").iterdir())) == 1
