"""Blank rectangles of native pixel data: where a filter says known devices write text.

The mask is deid's: every pixel starts kept; the regions are applied in recipe order, a
``coordinates`` region clearing its rectangle and a ``keepcoordinates`` one restoring it;
what ends cleared is set to zero in every frame and every sample. Native pixel data of
whole bytes per sample is blanked in place. Compressed and chroma-subsampled pixel data is
first decoded to native samples by pydicom's decoders (:func:`decode_to_native`; Pillow and
GDCM), as deid's cleaner does: the output is then uncompressed, and says so. What cannot be
decoded or blanked is refused with the reason, never passed on with the text still in it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

from anonymizer.screening import Region
from anonymizer.tail import ZeroRun, zero_bytes

#: Photometric interpretations whose chroma samples are shared between columns.
SUBSAMPLED = frozenset({"YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420"})
#: Transfer syntaxes whose decoded pixels are not the original's: LossyImageCompression
#: stays 01 once they have been decoded.
_LOSSY = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline
        "1.2.840.10008.1.2.4.51",  # JPEG Extended
        "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000 (lossy allowed)
        "1.2.840.10008.1.2.4.203",  # HTJ2K (lossy allowed)
    }
)


class CannotBlank(ValueError):
    """The pixel data cannot be blanked in place; the message says why."""


@dataclass(frozen=True)
class Geometry:
    """What locates a pixel in native pixel data."""

    frames: int
    rows: int
    columns: int
    samples: int
    planar: int
    bytes_per_sample: int

    @property
    def length(self) -> int:
        return self.frames * self.rows * self.columns * self.samples * self.bytes_per_sample

    @classmethod
    def of(cls, ds: Dataset) -> Geometry:
        """Read from the image pixel module of ``ds`` (raises :class:`CannotBlank`)."""
        photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
        if photometric in SUBSAMPLED:
            raise CannotBlank(f"{photometric} pixels share chroma between columns")
        bits = int(ds.get("BitsAllocated", 0) or 0)
        if bits <= 0 or bits % 8:
            raise CannotBlank(f"BitsAllocated {bits} is not whole bytes per sample")
        try:
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            return cls(
                frames=max(frames, 1),
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                samples=int(ds.get("SamplesPerPixel", 1) or 1),
                planar=int(ds.get("PlanarConfiguration", 0) or 0),
                bytes_per_sample=bits // 8,
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise CannotBlank(f"the image pixel module is incomplete: {exc}") from exc


def decode_to_native(ds: Dataset, syntax: str) -> None:
    """Replace ``ds``'s pixel data (in ``syntax``) by its decoded samples, native and
    interleaved, little endian, colour as RGB; the image pixel module follows.

    Raises :class:`CannotBlank` when pydicom has no decoder installed for ``syntax`` (the
    MPEG video syntaxes, HTJ2K) or the data does not decode (12-bit JPEG Extended: neither
    GDCM nor Pillow decodes it through pydicom).
    """
    from pydicom.pixels import get_decoder

    rgb = _jpeg_as_rgb(ds, syntax)
    if rgb is not None:
        _replace_pixels(ds, rgb, "RGB", 8, syntax)
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise CannotBlank("pydicom has no decoder for this transfer syntax") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise CannotBlank(f"no decoder for it is installed ({missing})")
    view = Dataset(ds)  # the same elements, with the syntax the decoder asks for
    view.file_meta = FileMetaDataset()
    view.file_meta.TransferSyntaxUID = UID(syntax)
    try:
        array, changed = decoder.as_array(view)
    except Exception as exc:  # the plug-ins raise what their libraries raise
        raise CannotBlank(f"the pixel data does not decode: {exc}") from exc
    data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    bits = int(changed.get("bits_allocated", ds.get("BitsAllocated", 8)))
    photometric = changed.get("photometric_interpretation", ds.PhotometricInterpretation)
    _replace_pixels(ds, data, str(photometric), bits, syntax)


def _replace_pixels(ds: Dataset, data: bytes, photometric: str, bits: int, syntax: str) -> None:
    """``ds`` with ``data`` as its native, interleaved pixel data, and the image pixel
    module saying so."""
    ds.PhotometricInterpretation = photometric
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        ds.PlanarConfiguration = 0
    if syntax in _LOSSY:
        ds.LossyImageCompression = "01"
    ds[0x7FE00010] = DataElement(
        0x7FE00010, "OB" if bits <= 8 else "OW", data + b"\0" * (len(data) % 2)
    )


#: JPEG processes whose colour frames libjpeg (through Pillow) converts to RGB as it
#: decodes them, in C. pydicom's decoder asks for the YCbCr samples and converts them in
#: NumPy afterwards: three times as long for an ultrasound still (16 vs 6 ms). The two
#: differ by one in about one sample in 5,000 (rounding); both are the standard's formula.
_LIBJPEG_RGB = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"})
_YBR_FULL = frozenset({"YBR_FULL", "YBR_FULL_422"})


def _jpeg_as_rgb(ds: Dataset, syntax: str) -> bytes | None:
    """The frames of 8-bit colour JPEG pixel data decoded to interleaved RGB by libjpeg;
    None where pydicom's decoder decides (other syntaxes, an Adobe colour transform, any
    frame that does not decode to what the header says: its error is pydicom's)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if syntax not in _LIBJPEG_RGB or photometric not in _YBR_FULL:
        return None
    if int(ds.get("SamplesPerPixel", 1) or 1) != 3 or int(ds.get("BitsAllocated", 0)) != 8:
        return None
    try:
        from PIL import Image
        from pydicom.encaps import generate_frames

        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
        decoded = []
        for frame in generate_frames(ds.PixelData, number_of_frames=frames):
            with Image.open(io.BytesIO(frame), formats=("JPEG",)) as image:
                if image.mode != "RGB" or image.size != (columns, rows):
                    return None
                if "adobe_transform" in image.info:
                    return None
                decoded.append(image.tobytes())
    except Exception:  # pydicom's decoder reports what is wrong
        return None
    out = b"".join(decoded)  # one frame: that frame's bytes, not a copy
    return out if len(out) == frames * rows * columns * 3 else None


def blank(pixels: bytes, geometry: Geometry, regions: Sequence[Region]) -> bytearray | None:
    """A copy of ``pixels`` with the cleared area zeroed, or None when nothing is cleared.

    Raises :class:`CannotBlank` when ``pixels`` is shorter than the geometry says (the
    frames it lacks cannot be checked; a trailing pad byte and longer data are fine).
    """
    check_length(len(pixels), geometry)
    runs = zero_runs(geometry, regions)
    if not runs:
        return None
    out = bytearray(pixels)
    with memoryview(out) as view:
        for start, length in runs:
            view[start : start + length] = zero_bytes(length)
    return out


def check_length(length: int, geometry: Geometry) -> None:
    """Raise :class:`CannotBlank` when pixel data of ``length`` bytes lacks frames."""
    if length < geometry.length:
        raise CannotBlank(
            f"pixel data holds {length} bytes, {geometry.length} expected for "
            f"{geometry.frames} frame(s) of {geometry.rows}x{geometry.columns}"
        )


def zero_runs(geometry: Geometry, regions: Sequence[Region]) -> tuple[ZeroRun, ...]:
    """The byte ranges of native pixel data that the regions clear, in every frame, plane
    and sample byte: sorted, disjoint, adjacent ones merged (a band across the whole width
    of every row is one run per frame).

    Found per band of rows that clear the same columns: a rectangle gives one band, and a
    boolean index over a cine loop would cost ten times as much. The same runs are zeroed
    in memory (:func:`blank`) and written as zeros over a copy made in the kernel
    (:class:`~anonymizer.tail.SourceTail`).
    """
    g = geometry
    if g.samples > 1 and g.planar == 1:
        planes, width = g.frames * g.samples, g.bytes_per_sample
    else:
        planes, width = g.frames, g.samples * g.bytes_per_sample
    row_bytes = g.columns * width
    bands = _row_runs(regions, g.rows, g.columns)
    if not bands:
        return ()
    starts, lengths = [], []
    for top, bottom, runs in bands:  # row by row, left to right: one frame's runs, sorted
        lefts = np.array([left for left, _ in runs], dtype=np.int64) * width
        widths = np.array([right - left for left, right in runs], dtype=np.int64) * width
        rows = np.arange(top, bottom, dtype=np.int64)[:, None] * row_bytes
        starts.append((rows + lefts).ravel())
        lengths.append(np.broadcast_to(widths, (bottom - top, len(runs))).ravel())
    frame_starts, frame_lengths = np.concatenate(starts), np.concatenate(lengths)
    plane = np.arange(planes, dtype=np.int64)[:, None] * (g.rows * row_bytes)
    first = (plane + frame_starts[None, :]).ravel()
    size = np.broadcast_to(frame_lengths, (planes, len(frame_lengths))).ravel()
    ends = first + size
    new = np.ones(len(first), dtype=bool)
    new[1:] = first[1:] != ends[:-1]  # a run that starts where the last ended joins it
    heads = np.flatnonzero(new)
    tails = np.append(heads[1:], len(first)) - 1
    return tuple(
        zip(first[heads].tolist(), (ends[tails] - first[heads]).tolist(), strict=True)
    )


def _row_runs(
    regions: Sequence[Region], rows: int, columns: int
) -> list[tuple[int, int, tuple[tuple[int, int], ...]]]:
    """``(top, bottom, column runs)`` of each band of rows that the regions clear alike.

    deid's mask: every pixel starts kept, each region in order clears its rectangle
    (``coordinates``) or restores it (``keepcoordinates``), ``all`` being the whole frame.
    The rows between consecutive rectangle edges are treated alike, so one row of each
    band is worked out, not the whole mask (a 600x800 mask took 0.2 ms).
    """
    boxes = [None if r.box is None else tuple(max(0, v) for v in r.box) for r in regions]
    edges = sorted({0, rows, *(min(b[y], rows) for b in boxes if b for y in (1, 3))})
    bands = []
    for top, bottom in pairwise(edges):
        if top >= bottom:
            continue
        row = np.zeros(columns, dtype=bool)
        for region, box in zip(regions, boxes, strict=True):
            if box is None:
                row[:] = not region.keep
            elif box[1] <= top and bottom <= box[3]:
                row[box[0] : box[2]] = not region.keep
        edges_of_row = np.diff(row.astype(np.int8), prepend=0, append=0)
        runs = tuple(
            zip(np.flatnonzero(edges_of_row == 1).tolist(),
                np.flatnonzero(edges_of_row == -1).tolist(), strict=True)
        )  # fmt: skip
        if runs:
            bands.append((top, bottom, runs))
    return bands
