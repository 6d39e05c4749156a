"""Video instances through the anonymizer and through deid's pipeline, side by side.

Three clips of about 10 MB (640x480 noise, 250 frames at 8 Mbit/s, so the encoders cannot
shrink them): H.264 and MPEG-2 elementary streams, and H.264 in an MPEG-2 transport stream
(DICOM's container for H.264). Each carries the planted text of the video tests (recorder
SEI, captions, MPEG-2 user data, the transport stream's service names). Each instance is
de-identified file to file, one at a time, interleaved, by:

- **ours**: the engine as ``bench/anonymize.py``'s ``engine`` side runs it (read, de-identify
  the header, find and overwrite the text in the stream, write);
- **deid**: deid's ``replace_identifiers`` on the same recipe, which de-identifies the header
  and copies the pixel data as it is.

Prints the median milliseconds per instance and whether any planted string is left in the
output. Run: ``python bench/video_text.py [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from anonymize import SECRET, deid_functions, deidentify_file  # noqa: E402

from anonymizer import Deidentifier, load_profile  # noqa: E402
from anonymizer._deid import run_reference_pipeline  # noqa: E402
from tests.anonymizer.video_streams import (  # noqa: E402
    H264_MPEG,
    MPEG2_MAIN,
    PLANTED,
    SERVICE_TEXT,
    in_transport_stream,
    instance_of,
    noisy_clip,
    with_text,
)


def theirs(source: Path, out: Path) -> Path:
    written = run_reference_pipeline([source], list(load_profile().recipes), deid_functions(), out)
    assert written == 1
    [target] = list(out.iterdir())
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    h264, mpeg2 = noisy_clip("H.264"), noisy_clip("MPEG-2")
    clips = {
        "H.264 elementary": (with_text("H.264", h264), H264_MPEG),
        "MPEG-2 elementary": (with_text("MPEG-2", mpeg2), MPEG2_MAIN),
        "H.264 transport stream": (in_transport_stream(with_text("H.264", h264), "H.264"),
                                   H264_MPEG),
    }  # fmt: skip
    deid = Deidentifier(load_profile(), SECRET)
    planted = PLANTED + SERVICE_TEXT
    print(f"# video text benchmark  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  "
          f"{os.cpu_count()} CPUs  load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'clip':<24}{'MB':>6}{'ours ms':>10}{'deid ms':>10}{'ratio':>8}"
          f"{'  text left: ours / deid'}")  # fmt: skip
    with tempfile.TemporaryDirectory(dir="/tmp") as scratch:
        for name, (stream, syntax) in clips.items():
            source = Path(scratch) / "in.dcm"
            source.write_bytes(instance_of(stream, syntax))
            times: dict[str, list[float]] = {"ours": [], "deid": []}
            left: dict[str, bool] = {}
            for round_ in range(args.repeat):
                for side in times:
                    out = Path(scratch) / f"{side}-{round_}"
                    out.mkdir()
                    started = time.perf_counter()
                    target = (deidentify_file(deid, source, out) if side == "ours"
                              else theirs(source, out))  # fmt: skip
                    times[side].append(time.perf_counter() - started)
                    data = target.read_bytes()
                    left[side] = any(text in data for text in planted)
                    shutil.rmtree(out)
            mine, deids = (statistics.median(times[s]) * 1000 for s in ("ours", "deid"))
            print(f"{name:<24}{source.stat().st_size / 1e6:>6.1f}{mine:>10.1f}{deids:>10.1f}"
                  f"{deids / mine:>7.1f}x  {'yes' if left['ours'] else 'no'} / "
                  f"{'yes' if left['deid'] else 'no'}")  # fmt: skip


if __name__ == "__main__":
    main()
