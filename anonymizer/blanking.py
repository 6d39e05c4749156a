"""Blank rectangles of native pixel data: where a filter says known devices write text.

The mask is deid's: every pixel starts kept; the regions are applied in recipe order, a
``coordinates`` region clearing its rectangle and a ``keepcoordinates`` one restoring it;
what ends cleared is set to zero in every frame and every sample. Only native (uncompressed)
pixel data of whole bytes per sample can be blanked in place; anything else is refused with
the reason, never passed on with the text still in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from anonymizer.screening import Region

#: Photometric interpretations whose native samples are one per pixel per plane.
_SUBSAMPLED = frozenset({"YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420"})


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
        if photometric in _SUBSAMPLED:
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


def mask(regions: Sequence[Region], rows: int, columns: int) -> np.ndarray:
    """True where a pixel is to be cleared, after every region in order."""
    cleared = np.zeros((rows, columns), dtype=bool)
    for region in regions:
        if region.box is None:
            cleared[:, :] = not region.keep
            continue
        x0, y0, x1, y1 = (max(0, v) for v in region.box)
        cleared[y0:y1, x0:x1] = not region.keep
    return cleared


def blank(pixels: bytes, geometry: Geometry, regions: Sequence[Region]) -> bytearray | None:
    """A copy of ``pixels`` with the cleared area zeroed, or None when nothing is cleared.

    The mask is zeroed as runs of rows that clear the same columns, each a plain slice
    of every frame and plane (a boolean index over a cine loop costs ten times as much).
    Raises :class:`CannotBlank` when ``pixels`` is shorter than the geometry says (the
    frames it lacks cannot be checked; a trailing pad byte and longer data are fine).
    """
    if len(pixels) < geometry.length:
        raise CannotBlank(
            f"pixel data holds {len(pixels)} bytes, {geometry.length} expected for "
            f"{geometry.frames} frame(s) of {geometry.rows}x{geometry.columns}"
        )
    cleared = mask(regions, geometry.rows, geometry.columns)
    if not cleared.any():
        return None
    out = bytearray(pixels)
    g = geometry
    image = np.frombuffer(out, dtype=np.uint8, count=g.length)
    if g.samples > 1 and g.planar == 1:
        planes = image.reshape(g.frames * g.samples, g.rows, g.columns * g.bytes_per_sample)
        width = g.bytes_per_sample
    else:
        planes = image.reshape(g.frames, g.rows, g.columns * g.samples * g.bytes_per_sample)
        width = g.samples * g.bytes_per_sample
    for top, bottom, runs in _row_runs(cleared):
        for left, right in runs:
            planes[:, top:bottom, left * width : right * width] = 0
    return out


def _row_runs(cleared: np.ndarray) -> list[tuple[int, int, tuple[tuple[int, int], ...]]]:
    """``(top, bottom, column runs)`` for each band of consecutive rows with the same runs
    (rectangles make few bands: the runs are found on the first row of each)."""
    rows = cleared.shape[0]
    starts = np.flatnonzero(np.any(cleared[1:] != cleared[:-1], axis=1)) + 1
    tops = [0, *starts.tolist()]
    bands = []
    for top, bottom in zip(tops, [*tops[1:], rows], strict=True):
        edges = np.diff(cleared[top].astype(np.int8), prepend=0, append=0)
        runs = tuple(
            zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(),
                strict=True)
        )  # fmt: skip
        if runs:
            bands.append((top, bottom, runs))
    return bands
