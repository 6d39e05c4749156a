"""Burned-in text: ultrasound instances screened and blanked, ours vs deid's DicomCleaner.

The instances are native RGB ultrasound images of a scanner deid's packaged recipe knows
(Philips iU22, 600x800: a banner in the top 59 rows), with the banner's text as pixel
bytes (``tests.factories.make_ultrasound``): stills of one frame, native and JPEG Baseline
(as scanners send them; decoded, blanked and written native by both cleaners), and cine
loops of 20 frames; and CT slices with no text anywhere, for what screening costs where
nothing is cleaned (deid's cleaner then only detects: it writes nothing).
Each is de-identified file to file, one at a time, interleaved, by:

- **ours, header**: the Basic profile, no pixel screening (what a route does without
  ``clean-pixel-data``), for reference;
- **ours, +pixels**: the Basic profile with ``clean-pixel-data``: deid's filters evaluated
  on the header, the banner blanked in every frame, the header de-identified, written;
- **deid cleaner**: deid's ``DicomCleaner`` with its default recipe (detect, clean, save):
  pixels only, the header is left as it was.

Prints the median milliseconds per instance, the ratio deid/ours, and whether any pixel of
the banner's rows is left lit in the decoded output. Run:
``python bench/pixel_text.py [--stills 20] [--cines 3] [--cts 50] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("MESSAGELEVEL", "-1")  # deid's logger: quiet (read at its import)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from anonymize import SECRET, deidentify_file  # noqa: E402
from pydicom import dcmread  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402

from anonymizer import Deidentifier, load_profile  # noqa: E402
from anonymizer._deid import ReferenceCleaner  # noqa: E402
from tests.factories import (  # noqa: E402
    as_jpeg_baseline,
    make_dataset,
    make_ultrasound,
    to_bytes,
)

Side = Callable[[Path, Path], Path | None]
BANNER_ROWS = 59
CT = "CT 512x512, no text"


def ours(deid: Deidentifier) -> Side:
    return lambda source, out: deidentify_file(deid, source, out)


def deid_cleaner(scratch: Path) -> Side:
    cleaners: dict[Path, ReferenceCleaner] = {}

    def run(source: Path, out: Path) -> Path | None:
        cleaner = cleaners.get(out) or cleaners.setdefault(out, ReferenceCleaner(out))
        return cleaner.clean(source)

    return run


def _instance(frames: int, jpeg: bool) -> Dataset:
    """An ultrasound of ``frames`` frames with the banner (JPEG or native); a CT slice
    (frames 0) with no text."""
    if not frames:
        ct = make_dataset(rows=512, columns=512)
        ct.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]  # else deid's blacklist takes it
        return ct
    ds = make_ultrasound(rows=600, columns=800, frames=frames, banner_rows=BANNER_ROWS)
    return as_jpeg_baseline(ds) if jpeg else ds


def banner_left(path: Path) -> bool:
    """Whether any pixel of the banner's rows is still lit, in the decoded output (a JPEG's
    bytes never show the text as such)."""
    pixels = dcmread(path).pixel_array
    return bool(pixels.reshape(-1, 600, 800, 3)[:, :BANNER_ROWS].any())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stills", type=int, default=20)
    parser.add_argument("--cines", type=int, default=3)
    parser.add_argument("--cts", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sides: dict[str, Side] = {
        "ours, header": ours(Deidentifier(load_profile(), SECRET)),
        "ours, +pixels": ours(Deidentifier(load_profile(options=["clean-pixel-data"]), SECRET)),
    }
    print(f"# pixel text benchmark  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  "
          f"{os.cpu_count()} CPUs  load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'instance':<22}{'MB':>6}{'side':>16}{'ms':>9}{'deid/ours':>11}  text left")
    with tempfile.TemporaryDirectory(prefix="gridpacs-bench-pixels-", dir="/tmp") as tmp:
        scratch = Path(tmp)
        sides["deid cleaner"] = deid_cleaner(scratch)
        corpora = (("US still 800x600", args.stills, 1, False),
                   ("US still JPEG", args.stills, 1, True),
                   ("US cine 20x800x600", args.cines, 20, False),
                   (CT, args.cts, 0, False))  # fmt: skip
        for name, count, frames, jpeg in corpora:
            if count <= 0:
                continue
            folder = scratch / name.replace(" ", "_")
            folder.mkdir()
            files = []
            for n in range(count):
                files.append(folder / f"{n}.dcm")
                files[-1].write_bytes(to_bytes(_instance(frames, jpeg)))
            times: dict[str, list[float]] = {side: [] for side in sides}
            left: dict[str, bool] = dict.fromkeys(sides, False)
            for round_ in range(args.repeat):
                for side, run in sides.items():
                    out = scratch / f"out-{round_}-{side.replace(' ', '_').replace(',', '')}"
                    out.mkdir()
                    for source in files:
                        started = time.perf_counter()
                        target = run(source, out)
                        times[side].append(time.perf_counter() - started)
                        left[side] |= name != CT and banner_left(target or source)
                    shutil.rmtree(out)
            medians = {side: statistics.median(t) * 1000 for side, t in times.items()}
            size = files[0].stat().st_size / 1e6
            for side, ms in medians.items():
                ratio = medians["deid cleaner"] / ms
                shown = "-" if name == CT else "yes" if left[side] else "no"
                print(f"{name:<22}{size:>6.1f}{side:>16}{ms:>9.1f}{ratio:>10.1f}x  {shown}")


if __name__ == "__main__":
    main()
