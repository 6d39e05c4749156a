"""Benchmark: files/s of the Basic profile, gridpacs engine vs deid's own pipeline.

Plain script (not a test) printing a table. Both sides read the same Part 10 files from
disk, apply the same recipe (``anonymizer/profiles/deid.basic``, with the same HMAC
pseudonym functions plugged into deid's ``func:`` lookups) and write one output file per
input. Runs are interleaved (ours, deid, ours, deid, …) so both see the same noise on a
shared machine; the table shows medians of files/s by wall clock and by CPU time of the
process (steadier when other jobs share the cores), and the ratios of the medians.

    python bench/anonymize.py [--small 1000] [--ct 200] [--repeat 3] [--dir /dev/shm] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MESSAGELEVEL", "-1")  # deid's logger: quiet (read at its import)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anonymizer import Deidentifier, load_profile  # noqa: E402
from anonymizer._deid import run_reference_pipeline  # noqa: E402
from anonymizer.pseudonyms import Pseudonymizer  # noqa: E402
from tests.factories import StudySpec, make_dataset  # noqa: E402

SECRET = bytes(range(32))


def make_corpus(directory: Path, count: int, size: int) -> list[Path]:
    """``count`` instances of ``size``x``size`` 16-bit pixels, 10 per series, 5 patients."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    specs: dict[int, StudySpec] = {}
    for n in range(count):
        series = n // 10
        if series not in specs:
            patient = series % 5
            specs[series] = StudySpec(
                patient_id=f"PAT{patient:04d}", patient_name=f"DOE^PATIENT{patient}"
            )
        ds = make_dataset(specs[series], instance_number=n + 1, rows=size, columns=size)
        path = directory / f"{n:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def deid_functions() -> dict[str, Any]:
    """The recipe's ``func:`` values for deid, computing the same pseudonyms as ours."""
    pseudo = Pseudonymizer(SECRET)

    def fn(compute: Any) -> Any:
        return lambda dicom, value, field, item: compute(str(field.element.value))

    return {
        "uid": fn(pseudo.uid),
        "pseudonym": fn(pseudo.patient_id),
        "dummy": fn(lambda _: "ANONYMIZED"),
        "clean": fn(lambda text: text),
        "date_shift": fn(pseudo.date_shift_days),
    }


def run_ours(files: list[Path], out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) for our engine, file in and file out."""
    deid = Deidentifier(load_profile(), SECRET)
    wall, cpu = time.perf_counter(), time.process_time()
    for path in files:
        result = deid.deidentify_part10(path.read_bytes())
        with (out / f"{result.sop_instance_uid}.dcm").open("wb") as handle:
            handle.writelines(result.parts)
    return time.perf_counter() - wall, time.process_time() - cpu


def run_deid(files: list[Path], out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) for deid's replace_identifiers on the same recipe."""
    recipes = list(load_profile().recipes)
    wall, cpu = time.perf_counter(), time.process_time()
    written = run_reference_pipeline(files, recipes, deid_functions(), out)
    elapsed = time.perf_counter() - wall, time.process_time() - cpu
    assert written == len(files), f"deid wrote {written} of {len(files)}"
    return elapsed


def measure(files: list[Path], scratch: Path, repeat: int) -> dict[str, Any]:
    """Interleaved runs; medians of files/s by wall clock and by CPU time."""
    wall: dict[str, list[float]] = {"gridpacs": [], "deid": []}
    cpu: dict[str, list[float]] = {"gridpacs": [], "deid": []}
    for round_ in range(repeat):
        for name, runner in (("gridpacs", run_ours), ("deid", run_deid)):
            out = scratch / f"{name}-{round_}"
            out.mkdir()
            seconds, cpu_seconds = runner(files, out)
            wall[name].append(len(files) / seconds)
            cpu[name].append(len(files) / cpu_seconds)
            shutil.rmtree(out)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "files": len(files),
        "gridpacs_files_per_s": round(med["gridpacs"], 1),
        "deid_files_per_s": round(med["deid"], 1),
        "ratio": round(med["gridpacs"] / med["deid"], 1),
        "gridpacs_files_per_cpu_s": round(med_cpu["gridpacs"], 1),
        "deid_files_per_cpu_s": round(med_cpu["deid"], 1),
        "cpu_ratio": round(med_cpu["gridpacs"] / med_cpu["deid"], 1),
        "runs_wall": {k: [round(v, 1) for v in vs] for k, vs in wall.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000, help="64x64 instances")
    parser.add_argument("--ct", type=int, default=200, help="512x512 16-bit instances")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--dir",
        default=None,
        help="where inputs and outputs are written (default: the system temp dir; "
        "/dev/shm takes the disk's file-creation cost out of both sides)",
    )
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="gridpacs-bench-anon-", dir=args.dir) as tmp:
        scratch = Path(tmp)
        for label, count, size in (("small 64x64", args.small, 64), ("CT 512x512", args.ct, 512)):
            files = make_corpus(scratch / label.split()[0], count, size)
            results[label] = measure(files, scratch, args.repeat)
    load = os.getloadavg()
    machine: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": [round(x, 1) for x in load],
        "dir": args.dir or tempfile.gettempdir(),
    }
    if args.json:
        print(json.dumps({"machine": machine, "results": results}, indent=2))
        return
    print(f"# anonymize benchmark  {machine['date']}  {machine['cpus']} CPUs  "
          f"{machine['platform']}  load {load[0]:.1f}  files in {machine['dir']}")  # fmt: skip
    header = (
        f"{'corpus':<13}{'files':>6}{'gridpacs f/s':>14}{'deid f/s':>10}{'ratio':>8}"
        f"{'gridpacs f/cpu-s':>18}{'deid f/cpu-s':>14}{'ratio':>8}"
    )
    print(header)
    print("-" * len(header))
    for label, r in results.items():
        print(
            f"{label:<13}{r['files']:>6}{r['gridpacs_files_per_s']:>14}"
            f"{r['deid_files_per_s']:>10}{r['ratio']:>7}x"
            f"{r['gridpacs_files_per_cpu_s']:>18}{r['deid_files_per_cpu_s']:>14}"
            f"{r['cpu_ratio']:>7}x"
        )
    print("wall runs (files/s):", json.dumps({k: v["runs_wall"] for k, v in results.items()}))


if __name__ == "__main__":
    main()
