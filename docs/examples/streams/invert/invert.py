"""A tiny stream "algorithm": input/*.dcm -> output/*.dcm with inverted grey levels.

It shows the contract a stream command follows (docs/streams.md): read the DICOM files of
``$GRIDPACS_INPUT_DIR`` (or ./input), write DICOM files to ``$GRIDPACS_OUTPUT_DIR`` (or
./output), print progress to stdout, exit 0 on success. The node gives the outputs new
UIDs and references to the source, so the algorithm may keep the input's UIDs.

Options for tests and demos: ``--sleep SECONDS`` (before writing, prints a heartbeat each
second), ``--slow-attempts N`` (sleep only in the first N attempts) and ``--exit-code N``
(fail after printing to stdout and stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from pydicom import dcmread


def invert(path: Path, out_dir: Path) -> None:
    ds = dcmread(path)
    grey = ds.get("SamplesPerPixel", 1) == 1 and ds.get("BitsAllocated") in (8, 16)
    if "PixelData" in ds and grey:
        arr = ds.pixel_array
        ds.PixelData = (arr.max() + arr.min() - arr).astype(arr.dtype).tobytes()
    ds.SeriesDescription = f"{ds.get('SeriesDescription', '')} inverted".strip()[:64]
    ds.save_as(out_dir / path.name, enforce_file_format=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--slow-attempts", type=int, default=0)
    args = parser.parse_args()
    attempt = int(os.environ.get("GRIDPACS_ATTEMPT", "1"))
    if args.slow_attempts and attempt > args.slow_attempts:
        args.sleep = 0.0
    in_dir = Path(os.environ.get("GRIDPACS_INPUT_DIR", "input"))
    out_dir = Path(os.environ.get("GRIDPACS_OUTPUT_DIR", "output"))
    inputs = sorted(in_dir.rglob("*.dcm"))
    print(
        f"invert: {len(inputs)} input files, job {os.environ.get('GRIDPACS_JOB_ID', '?')}",
        flush=True,
    )
    deadline = time.monotonic() + args.sleep
    while time.monotonic() < deadline:
        print("invert: working", flush=True)
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    if args.exit_code:
        print("invert: failing on purpose", flush=True)
        print(f"invert: error: exit code {args.exit_code} requested", file=sys.stderr)
        return args.exit_code
    for path in inputs:
        invert(path, out_dir)
    print(f"invert: wrote {len(inputs)} files", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
