"""Text burned into pixels: screened by a recipe's ``%filter``, blanked where devices write it.

The instances are native ultrasound images whose top rows carry a patient banner as pixel
bytes (:func:`tests.factories.make_ultrasound`): the checks search the output *bytes* for
that text, and compare every pixel outside the blanked rectangles with the input's.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import (
    MPEG2MPML,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from anonymizer import (
    Deidentifier,
    PixelsFlagged,
    PixelsNotCleanable,
    RecipeError,
    load_profile,
)
from anonymizer.blanking import CannotBlank, Geometry, blank
from anonymizer.errors import BurnedInAnnotation
from anonymizer.files import HEAD_BYTES, anonymize_file, anonymize_tree
from anonymizer.profiles import CLEAN_PIXEL_DATA, HEADER_OPTIONS
from anonymizer.screening import FilterItem, PixelScreen, Region, Verdict, _decide, _Facts
from tests.anonymizer.conftest import SITE_A, both_paths, written_from_head
from tests.anonymizer.corpus import Corpus, find_leaks
from tests.factories import (
    BANNER_TEXT,
    as_jpeg_baseline,
    make_dataset,
    make_ultrasound,
    to_bytes,
)

#: A site's own recipe: where its (fictional) scanner writes the banner, in deid's syntax.
SITE_FILTERS = """FORMAT dicom

%filter graylist

LABEL Philips banner # the top 20 rows
  contains Modality US
  + contains Manufacturer Philips
  coordinates 0,0,160,20

LABEL ACME flags only
  contains Manufacturer ACME

%filter blacklist

LABEL Screen saves
  contains ImageType SAVE
  || contains SeriesDescription Report
"""


def _recipe(tmp_path: Path, text: str = SITE_FILTERS, name: str = "deid.site") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _site(tmp_path: Path, **kwargs: Any) -> Deidentifier:
    return Deidentifier(load_profile(extra_recipes=[_recipe(tmp_path)]), SITE_A, **kwargs)


def _pixels(data: bytes) -> np.ndarray:
    return np.frombuffer(dcmread(io.BytesIO(data)).PixelData, dtype=np.uint8)


def _expected(ds: Dataset, rows: int) -> np.ndarray:
    """``ds``'s pixel bytes with the top ``rows`` rows of every frame and plane zeroed."""
    frames, samples = int(ds.NumberOfFrames), int(ds.SamplesPerPixel)
    planar = int(ds.get("PlanarConfiguration", 0))
    bytes_per = int(ds.BitsAllocated) // 8
    pixels = np.frombuffer(ds.PixelData, dtype=np.uint8).copy()
    if samples > 1 and planar == 1:
        pixels.reshape(frames, samples, ds.Rows, -1)[:, :, :rows] = 0
    else:
        pixels.reshape(frames, ds.Rows, ds.Columns * samples * bytes_per)[:, :rows] = 0
    return pixels


@pytest.mark.parametrize(
    ("samples", "planar"), [(3, 0), (3, 1), (1, 0)], ids=["rgb", "rgb-planar", "mono"]
)
def test_a_scanner_banner_is_blanked_in_every_frame_and_plane(
    tmp_path: Path, samples: int, planar: int
) -> None:
    ds = make_ultrasound(samples=samples, planar=planar, frames=3)
    ds.BurnedInAnnotation = "YES"  # cleaned where it is known to be: accepted
    source = to_bytes(ds)
    assert BANNER_TEXT[:12] in source
    for path, output in both_paths(_site(tmp_path), source).items():
        assert BANNER_TEXT[:12] not in output, path
        assert np.array_equal(_pixels(output), _expected(ds, rows=20)), path
        out = dcmread(io.BytesIO(output))
        assert out.BurnedInAnnotation == "NO"
        assert "Clean Pixel Data Option" not in out.DeidentificationMethod  # site filters only


def test_sixteen_bit_pixels_are_blanked_by_whole_samples(tmp_path: Path) -> None:
    ds = make_dataset(rows=40, columns=160)
    ds.Modality, ds.Manufacturer, ds.NumberOfFrames = "US", "Philips", 1
    ds.PixelData = (BANNER_TEXT * 400)[: 40 * 160 * 2]
    [output] = set(both_paths(_site(tmp_path), to_bytes(ds)).values())
    assert np.array_equal(_pixels(output), _expected(ds, rows=20))
    assert BANNER_TEXT[:12] in output[-20 * 320 :]  # the rows below: untouched


def test_without_filters_or_a_match_the_pixels_are_untouched(tmp_path: Path) -> None:
    ds = make_ultrasound(manufacturer="Siemens")
    source = to_bytes(ds)
    for deid in (Deidentifier(load_profile(), SITE_A), _site(tmp_path)):
        [output] = set(both_paths(deid, source).values())
        assert _pixels(output).tobytes() == ds.PixelData
        assert "BurnedInAnnotation" not in dcmread(io.BytesIO(output))


def test_a_blacklist_and_a_group_with_no_rectangle_refuse_with_the_label(tmp_path: Path) -> None:
    deid = _site(tmp_path)
    saved = make_ultrasound(manufacturer="Siemens")
    saved.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    report = make_ultrasound(manufacturer="Siemens")
    report.SeriesDescription = "Dose Report"  # the second line alone: `||` is OR
    acme = make_ultrasound(manufacturer="ACME Imaging")
    for ds, label in ((saved, "Screen saves"), (report, "Screen saves"), (acme, "ACME flags")):
        with pytest.raises(PixelsFlagged, match=label):
            deid.deidentify_bytes(to_bytes(ds))
        with pytest.raises(PixelsFlagged, match=label):
            deid.deidentify(ds)
    # The caller may accept them: nothing is cleaned, nothing refused.
    allowed = _site(tmp_path, allow_burned_in=True)
    assert _pixels(allowed.deidentify_bytes(to_bytes(acme))).tobytes() == acme.PixelData


def test_a_whitelist_decides_first_and_burned_in_yes_is_still_refused(tmp_path: Path) -> None:
    recipe = _recipe(
        tmp_path,
        "FORMAT dicom\n%filter whitelist\nLABEL trusted\n  contains Manufacturer Philips\n"
        + SITE_FILTERS.split("\n", 1)[1],
    )
    deid = Deidentifier(load_profile(extra_recipes=[recipe]), SITE_A)
    ds = make_ultrasound()
    assert _pixels(deid.deidentify_bytes(to_bytes(ds))).tobytes() == ds.PixelData
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotation, match="BurnedInAnnotation is YES"):
        deid.deidentify_bytes(to_bytes(ds))


def _jpeg_ultrasound() -> Dataset:
    return as_jpeg_baseline(make_ultrasound(frames=2))


def test_compressed_pixels_are_decoded_blanked_and_written_native(tmp_path: Path) -> None:
    ds = _jpeg_ultrasound()
    decoded = get_decoder(JPEGBaseline8Bit).as_array(ds)[0]  # what any reader shows
    assert decoded[:, :20].any()
    [output] = set(both_paths(_site(tmp_path), to_bytes(ds)).values())
    out = dcmread(io.BytesIO(output))
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (out.PhotometricInterpretation, out.PlanarConfiguration) == ("RGB", 0)
    assert out.LossyImageCompression == "01" and out.BurnedInAnnotation == "NO"
    pixels = out.pixel_array
    assert not pixels[:, :20].any()
    # Decoded to RGB by libjpeg, which rounds one sample in thousands the other way.
    differs = np.abs(pixels[:, 20:].astype(int) - decoded[:, 20:].astype(int))
    assert differs.max() <= 1 and np.count_nonzero(differs) < differs.size / 1000


def _encoded_by_dcmtk(tmp_path: Path, ds: Dataset, tool: str, *options: str) -> Dataset:
    """``ds`` compressed by DCMTK's ``tool`` (``dcmcjpeg``, ``dcmcjpls``), as an archive
    or a modality writes it."""
    plain, encoded = tmp_path / "plain.dcm", tmp_path / "encoded.dcm"
    plain.write_bytes(to_bytes(ds))
    run = subprocess.run([tool, *options, str(plain), str(encoded)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return dcmread(encoded)


def _twelve_bit(ds: Dataset) -> Dataset:
    """``ds`` (8-bit, one sample) as 12 bits stored in 16: a CR or CT detector's depth."""
    pixels = np.frombuffer(ds.PixelData, dtype=np.uint8).astype("<u2") * 16 + 7
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


@pytest.mark.parametrize(
    ("samples", "bits", "tool", "options", "syntax", "lossy"),
    [
        (3, 8, "dcmcjpeg", ("+e1",), "1.2.840.10008.1.2.4.70", False),
        (3, 8, "dcmcjpeg", ("+el", "+sv", "6"), "1.2.840.10008.1.2.4.57", False),
        (1, 12, "dcmcjpeg", ("+e1",), "1.2.840.10008.1.2.4.70", False),
        (3, 8, "dcmcjpls", ("+el",), "1.2.840.10008.1.2.4.80", False),
        (1, 12, "dcmcjpls", ("+el",), "1.2.840.10008.1.2.4.80", False),
        (3, 8, "dcmcjpls", ("+en", "+md", "2"), "1.2.840.10008.1.2.4.81", True),
    ],
    ids=[
        "jpeg-sv1-rgb",
        "jpeg-lossless-sv6-rgb",
        "jpeg-sv1-12bit",
        "jpeg-ls-rgb",
        "jpeg-ls-12bit",
        "jpeg-ls-near-lossless-rgb",
    ],
)
def test_an_archives_lossless_syntaxes_are_decoded_and_blanked(
    tmp_path: Path, samples: int, bits: int, tool: str, options: tuple[str, ...],
    syntax: str, lossy: bool,
) -> None:  # fmt: skip
    # JPEG Lossless and JPEG-LS are what archives and CR/DX modalities store: flagged for
    # cleaning, they are decoded (GDCM, through pydicom), blanked and written native,
    # never refused for want of a decoder.
    original = make_ultrasound(samples=samples, frames=2)
    if bits == 12:
        original = _twelve_bit(original)
    encoded = _encoded_by_dcmtk(tmp_path, original, tool, *options)
    assert encoded.file_meta.TransferSyntaxUID == syntax
    source = to_bytes(encoded)
    if bits == 8:
        assert BANNER_TEXT not in source  # compressed, the text is not in the bytes …
    [output] = set(both_paths(_site(tmp_path), source).values())
    assert BANNER_TEXT not in output  # … nor, decoded, in the output's
    out = dcmread(io.BytesIO(output))
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.BurnedInAnnotation == "NO"
    assert out.get("LossyImageCompression") == ("01" if lossy else None)
    assert (out.BitsAllocated, out.BitsStored) == (original.BitsAllocated, original.BitsStored)
    assert out.PhotometricInterpretation == original.PhotometricInterpretation
    pixels, before = out.pixel_array, original.pixel_array
    assert not pixels[:, :20].any() and before[:, :20].any()
    below = np.abs(pixels[:, 20:].astype(int) - before[:, 20:].astype(int))
    if lossy:  # within the deviation the encoder was allowed
        assert below.max() <= 2
    else:  # every pixel outside the banner exactly as the modality sent it
        assert not below.any()


def test_native_chroma_subsampled_pixels_are_decoded_to_rgb_and_blanked(tmp_path: Path) -> None:
    ds = make_ultrasound(frames=1, columns=160)
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = ds.PixelData[: 120 * 160 * 2]  # two bytes a pixel: Y Y Cb Cr per pair
    # Without filters it passes as it is (it was once taken for truncated pixel data).
    basic = Deidentifier(load_profile(), SITE_A)
    assert basic._direct(to_bytes(ds), None) is not None  # the fast path takes it too
    [plain] = set(both_paths(basic, to_bytes(ds)).values())
    assert _pixels(plain).tobytes() == ds.PixelData
    [output] = set(both_paths(_site(tmp_path), to_bytes(ds)).values())
    out = dcmread(io.BytesIO(output))
    assert out.PhotometricInterpretation == "RGB"
    assert not out.pixel_array[:20].any() and out.pixel_array[20:].any()


def test_pixels_that_cannot_be_decoded_are_refused_with_the_reason(tmp_path: Path) -> None:
    deid = _site(tmp_path, allow_burned_in=True)  # refused even so: the text is known
    broken = _jpeg_ultrasound()
    broken.PixelData = encapsulate([b"\xff\xd8" + BANNER_TEXT + b"\xff\xd9"] * 2)
    video = make_ultrasound(frames=1)
    video.PixelData = encapsulate([b"\x00\x00\x01\xb3" + BANNER_TEXT])
    video.file_meta.TransferSyntaxUID = MPEG2MPML
    # 12-bit JPEG Extended (older CT and MR): neither GDCM nor Pillow decodes it here.
    twelve = _encoded_by_dcmtk(tmp_path, _twelve_bit(make_ultrasound(samples=1)), "dcmcjpeg", "+ee")
    htj2k = _jpeg_ultrasound()
    htj2k.file_meta.TransferSyntaxUID = HTJ2KLossless
    for ds, reason in (
        (broken, "JPEG Baseline.*does not decode"),
        (video, "MPEG2.*no decoder"),
        (twelve, "JPEG Extended.*12-bit precision"),
        (htj2k, "High-Throughput JPEG 2000.*no decoder for it is installed"),
    ):
        with pytest.raises(PixelsNotCleanable, match=reason):
            deid.deidentify_bytes(to_bytes(ds))


def test_pixel_data_shorter_than_its_geometry_is_not_blanked() -> None:
    # The Part 10 reader refuses a truncated file first; the blanker checks on its own.
    geometry = Geometry(frames=2, rows=10, columns=10, samples=1, planar=0, bytes_per_sample=1)
    with pytest.raises(CannotBlank, match="150 bytes, 200 expected"):
        blank(bytes(150), geometry, [Region(keep=False, box=(0, 0, 5, 5))])
    assert blank(bytes(200), geometry, [Region(keep=True)]) is None  # nothing cleared


#: A banner in part of the width only: a zero run per row, not one per frame.
CORNER_FILTERS = (
    "FORMAT dicom\n%filter graylist\nLABEL corner\n  contains Modality US\n"
    "  coordinates 30,0,100,20\n"
)


def _from_all_paths(deid: Deidentifier, source: bytes) -> bytes:
    """The output of the fast path (from memory and from a file head, its pixels left in
    the source) after checking it is the general path's, byte for byte."""
    expected = deid.deidentify_general(source).data
    fast = deid._direct(source, None)
    assert fast is not None  # the fast path takes what a filter cleans
    assert fast.data == expected
    head = deid.deidentify_head(source[:HEAD_BYTES], len(source))
    assert head is not None and head.source_tail is not None
    assert head.source_tail.zeros  # the banner's bytes: written as zeros, never read
    assert written_from_head(head, source) == expected
    return expected


@pytest.mark.parametrize(
    ("samples", "planar", "bits", "implicit"),
    [(3, 0, 8, False), (3, 1, 8, False), (1, 0, 8, True), (1, 0, 16, False)],
    ids=["rgb", "rgb-planar", "mono-implicit", "mono-16"],
)
@pytest.mark.parametrize("filters", [SITE_FILTERS, CORNER_FILTERS], ids=["full-width", "corner"])
def test_the_fast_path_blanks_native_pixels_as_the_general_path_does(
    tmp_path: Path, samples: int, planar: int, bits: int, implicit: bool, filters: str
) -> None:
    columns = 160 * bits // 8  # 16 bits: the banner's bytes, two to a sample
    ds = make_ultrasound(samples=samples, planar=planar, frames=24, rows=60, columns=columns)
    ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 160, bits, bits, bits - 1
    ds.BurnedInAnnotation = "YES"
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    source = to_bytes(ds)
    assert len(source) > HEAD_BYTES  # the pixels run past the head
    deid = Deidentifier(load_profile(extra_recipes=[_recipe(tmp_path, filters)]), SITE_A)
    output = _from_all_paths(deid, source)
    out = dcmread(io.BytesIO(output))
    assert out.BurnedInAnnotation == "NO"
    geometry = Geometry.of(ds)
    box = (0, 0, 160, 20) if filters == SITE_FILTERS else (30, 0, 100, 20)
    expected = blank(ds.PixelData, geometry, [Region(keep=False, box=box)])
    assert expected is not None and out.PixelData == bytes(expected)
    if filters == SITE_FILTERS:
        assert BANNER_TEXT[:12] not in output


def test_files_written_from_a_head_get_the_banner_as_zeros(tmp_path: Path) -> None:
    """Both writers of a file-to-file run: through the page cache (one file, durable on
    its own) and around it (a batch, large outputs written with O_DIRECT)."""
    ds = make_ultrasound(frames=40)  # 2.3 MB: above the direct writer's threshold
    source = tmp_path / "in" / "cine.dcm"
    source.parent.mkdir()
    source.write_bytes(to_bytes(ds))
    deid = _site(tmp_path)
    expected = deid.deidentify_general(source.read_bytes()).data
    assert BANNER_TEXT[:12] in source.read_bytes() and BANNER_TEXT[:12] not in expected
    one = anonymize_file(deid, source, tmp_path / "one")
    [batch] = list(anonymize_tree(deid, [source], tmp_path / "batch"))
    for outcome in (one, batch):
        assert outcome.error is None and outcome.target is not None
        assert outcome.target.read_bytes() == expected


def test_filters_on_the_pixel_data_itself_are_left_to_the_general_path(tmp_path: Path) -> None:
    recipe = _recipe(
        tmp_path,
        "FORMAT dicom\n%filter graylist\nLABEL any image\n  present PixelData\n"
        "  coordinates 0,0,160,20\n",
    )
    deid = Deidentifier(load_profile(extra_recipes=[recipe]), SITE_A)
    source = to_bytes(make_ultrasound())
    assert deid._direct(source, None) is None
    assert BANNER_TEXT[:12] not in deid.deidentify_bytes(source)
    site = _site(tmp_path)  # and pixels that must be decoded first
    assert site._direct(to_bytes(_jpeg_ultrasound()), None) is None


def _blanked_by_mask(pixels: bytes, g: Geometry, regions: list[Region]) -> bytes:
    """The reference: deid's boolean mask, region by region, over every frame and plane."""
    cleared = np.zeros((g.rows, g.columns), dtype=bool)
    for region in regions:
        if region.box is None:
            cleared[:, :] = not region.keep
        else:
            x0, y0, x1, y1 = (max(0, v) for v in region.box)
            cleared[y0:y1, x0:x1] = not region.keep
    out = np.frombuffer(pixels, dtype=np.uint8).copy()
    image = out[: g.length]
    if g.samples > 1 and g.planar == 1:
        shaped = image.reshape(g.frames * g.samples, g.rows, g.columns, g.bytes_per_sample)
    else:
        shaped = image.reshape(g.frames, g.rows, g.columns, g.samples * g.bytes_per_sample)
    shaped[:, cleared] = 0
    return out.tobytes()


def test_blanking_zeroes_what_deids_mask_clears_in_every_geometry() -> None:
    import random

    rnd = random.Random(7)
    for _ in range(500):
        g = Geometry(
            frames=rnd.randint(1, 3), rows=rnd.randint(1, 12), columns=rnd.randint(1, 12),
            samples=rnd.choice([1, 3]), planar=rnd.randint(0, 1),
            bytes_per_sample=rnd.choice([1, 2]),
        )  # fmt: skip
        regions = []
        for _ in range(rnd.randint(0, 4)):
            x0, y0 = rnd.randint(-2, 12), rnd.randint(-2, 12)
            box = (x0, y0, x0 + rnd.randint(0, 14), y0 + rnd.randint(0, 14))
            regions.append(Region(rnd.random() < 0.3, None if rnd.random() < 0.1 else box))
        pixels = rnd.randbytes(g.length + rnd.randint(0, 1))  # a pad byte, sometimes
        blanked = blank(pixels, g, regions)
        expected = _blanked_by_mask(pixels, g, regions)
        assert (pixels if blanked is None else bytes(blanked)) == expected, (g, regions)


def test_keep_regions_come_back_after_a_blank_all(tmp_path: Path) -> None:
    # deid's ultrasound recipe blanks everything but the scanning regions the header names.
    recipe = _recipe(
        tmp_path,
        "FORMAT dicom\n%filter graylist\n"
        "LABEL Blank image\n  coordinates all\n"
        "LABEL Keep ultrasound regions\n  present SequenceOfUltrasoundRegions\n"
        "  keepcoordinates from:SequenceOfUltrasoundRegions\n",
    )
    ds = make_ultrasound(samples=1)
    region = Dataset()
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 10, 25
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 149, 109  # inclusive corners
    ds.SequenceOfUltrasoundRegions = Sequence([region])
    deid = Deidentifier(load_profile(extra_recipes=[recipe]), SITE_A)
    [output] = set(both_paths(deid, to_bytes(ds)).values())
    got = _pixels(output).reshape(2, 120, 160).copy()
    before = np.frombuffer(ds.PixelData, dtype=np.uint8).reshape(2, 120, 160)
    inside = (slice(None), slice(25, 110), slice(10, 150))
    assert np.array_equal(got[inside], before[inside])
    got[inside] = 0
    assert not got.any()


def test_deids_packaged_filters_blank_a_known_scanner_and_mark_the_option() -> None:
    ds = make_ultrasound(rows=600, columns=800, frames=1, banner_rows=59)
    deid = Deidentifier(load_profile(options=[CLEAN_PIXEL_DATA]), SITE_A)
    [output] = set(both_paths(deid, to_bytes(ds)).values())
    assert BANNER_TEXT[:12] not in output
    assert np.array_equal(_pixels(output), _expected(ds, rows=59))
    out = dcmread(io.BytesIO(output))
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113101"]
    assert "Clean Pixel Data Option" in out.DeidentificationMethod
    # deid's blacklist, tried after its known devices: an image of no known device and
    # with no ImageType may be anything (a scanned form).
    unknown = make_ultrasound(manufacturer="Nobody", model="X1")
    del unknown.ImageType
    with pytest.raises(PixelsFlagged, match="Missing ImageType"):
        deid.deidentify_bytes(to_bytes(unknown))


def _satisfying(item: FilterItem) -> Dataset | None:
    """A header meeting every criterion of an AND-only item of contains/equals lines."""
    ds = Dataset()
    for clause in item.clauses:
        if clause.joiner == "or" or "or" in clause.operators:
            return None
        for condition in clause.conditions:
            tag = tag_for_keyword(condition.field)
            if condition.action not in ("contains", "equals") or tag is None or tag >> 16 == 2:
                return None
            text = (condition.value or "").strip()  # `equals` is literal, `contains` a regex
            if condition.action == "contains":
                text = re.split(r"\|", text)[0].strip()
                if re.escape(text) != text.replace(" ", "\\ "):
                    return None  # a regex (`DERIVED+SECONDARY`): no plain value meets it
            vr = dictionary_VR(tag)
            if vr in ("US", "SS", "IS", "UL") and not text.isdigit():
                return None  # e.g. `equals Rows 600|768`, which neither deid nor we match
            value: Any = int(text) if vr in ("US", "SS", "IS", "UL") else text
            if condition.field in ds and str(ds[condition.field].value) != str(value):
                value = f"{ds[condition.field].value} {value}"  # two `contains` on one field
            setattr(ds, condition.field, value)
    ds.ImageType = ds.get("ImageType", "ORIGINAL")
    return ds


def test_every_known_device_of_deids_recipe_is_cleaned_where_deid_cleans_it() -> None:
    """Our reading of deid's packaged graylist agrees with deid's own detector, item by
    item: for a header built to meet each item, both find it and name its rectangles."""
    from deid.config import DeidRecipe
    from deid.dicom.pixels.detect import has_burned_pixels
    from pydicom.dataset import FileMetaDataset

    os.environ.setdefault("MESSAGELEVEL", "-1")
    profile = load_profile(options=[CLEAN_PIXEL_DATA])
    recipe = DeidRecipe("dicom")
    checked = 0
    for item in profile.screen.items:
        boxes = {region.box for region in item.regions if not region.keep}
        ds = _satisfying(item) if item.group == "graylist" and boxes else None
        if ds is None:
            continue
        verdict = profile.screen.verdict(ds)
        if verdict.group == "whitelist":
            continue  # deid's whitelist (a Sensation 64 CT) decides first, for both
        assert verdict.group == "graylist" and item.label in verdict.labels, item.label
        assert boxes <= {region.box for region in verdict.regions}, item.label
        wrapped = FileDataset("x", ds, file_meta=FileMetaDataset(), preamble=b"\0" * 128)
        found = has_burned_pixels(wrapped, deid=recipe)
        theirs = {
            tuple(int(v) for v in coordinate.split(","))
            for result in found["results"]
            if result["group"] == "graylist"
            for _, coordinate in result["coordinates"]
        }
        assert boxes <= theirs, item.label
        checked += 1
    assert checked >= 80  # of deid's 109 graylist items: AND-only, plain values (85 in 0.4.13)


def _every_item_in_order(screen: PixelScreen, ds: Dataset) -> Verdict:
    """The verdict as the recipes read: each run of a group, every item evaluated."""
    facts = _Facts(ds)
    runs: dict[tuple[str, str], list[FilterItem]] = {}
    for item in screen.items:
        runs.setdefault((item.recipe, item.group), []).append(item)
    for (_, group), items in runs.items():
        matched = [item for item in items if item.holds(facts)]
        if matched:
            return _decide(group, matched, ds)
    return Verdict()


def test_the_compiled_screen_decides_as_every_item_evaluated_in_order(tmp_path: Path) -> None:
    # Items are skipped by a failing first condition and conditions evaluated once: the
    # verdict, labels and rectangles in their order, must not change.
    interleaved = _recipe(  # items of two first conditions, in alternation: order matters
        tmp_path,
        "FORMAT dicom\n%filter graylist\n"
        "LABEL by maker\n  contains Manufacturer Philips\n  coordinates 0,0,10,10\n"
        "LABEL by modality\n  contains Modality US\n  coordinates 0,20,10,30\n"
        "LABEL by maker again\n  contains Manufacturer Philips\n  + contains Modality US\n"
        "  keepcoordinates 0,0,5,5\n",
        name="deid.interleaved",
    )
    profile = load_profile(
        options=[CLEAN_PIXEL_DATA], extra_recipes=[interleaved, _recipe(tmp_path)]
    )
    screen = profile.screen
    headers = [ds for ds in map(_satisfying, screen.items) if ds is not None]
    acme = make_ultrasound(manufacturer="ACME Imaging")
    saved = make_ultrasound(manufacturer="Siemens")
    saved.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    ct = make_dataset()
    ct.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    headers += [make_ultrasound(), acme, saved, make_dataset(), ct, make_ultrasound(model="x")]
    groups = set()
    for ds in headers:
        verdict = screen.verdict(ds)
        assert verdict == _every_item_in_order(screen, ds)
        groups.add(verdict.group)
    assert groups >= {"whitelist", "blacklist", "graylist", None}
    labels = screen.verdict(make_ultrasound()).labels
    assert labels == ("by maker", "by modality", "by maker again")


def test_the_header_leak_corpus_stays_clean_with_pixel_cleaning(
    corpora: list[tuple[Corpus, bytes]],
) -> None:
    profile = load_profile(options=[*HEADER_OPTIONS[1:], CLEAN_PIXEL_DATA])
    deid = Deidentifier(profile, SITE_A)
    for corpus, data in corpora:
        ds = dcmread(io.BytesIO(data))
        ds.ImageType = ["ORIGINAL", "PRIMARY"]  # else deid's blacklist refuses it
        source = to_bytes(ds)
        for output in both_paths(deid, source).values():
            assert find_leaks(output, corpus, profile.table) == [], corpus.charset.name


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ("LABEL x\n  startswith Modality US\n", "not a filter criterion"),
        ("  contains Modality US\nLABEL x\n", "before the first LABEL"),
        ("LABEL x\n  contains Modality\n", "needs a field and a value"),
        ("LABEL x\n  contains Modality US\n  coordinates 0,0,10\n", "x0,y0,x1,y1"),
        ("LABEL x\n  contains Modality US\n  coordinates 0,-5,10,10\n", "negative"),
    ],
)
def test_a_broken_filter_is_reported(tmp_path: Path, filters: str, message: str) -> None:
    recipe = _recipe(tmp_path, "FORMAT dicom\n%filter graylist\n" + filters)
    with pytest.raises(RecipeError, match=message):
        load_profile(extra_recipes=[recipe])
    unnamed = _recipe(tmp_path, "FORMAT dicom\n%filter\nLABEL x\n  present Modality\n", "deid.x")
    with pytest.raises(RecipeError, match="a filter section is named"):
        load_profile(extra_recipes=[unnamed])
