"""Benchmark: files/s of the Basic profile, gridpacs vs deid's own pipeline.

Plain script (not a test) printing a table. Every side reads the same Part 10 files,
applies the same recipe (``anonymizer/profiles/deid.basic``, with the same HMAC pseudonym
functions plugged into deid's ``func:`` lookups) and writes one output file per input:

* ``engine``   — our engine in one process, each output written straight into place with
  no temporary file and no fsync, the way deid's pipeline writes (only the head of each
  input is read; the header goes out with ``writev``, native pixel data is copied by the
  kernel, as in the CLI): the engine-to-engine comparison;
* ``cli j1``   — :func:`anonymizer.batch.run_batch` with ``jobs=1``, the code path of
  ``gridpacs anonymize --jobs 1`` (unnamed outputs, CT-size ones written with O_DIRECT by
  writer threads, made durable in group commits by a committer thread: one ``syncfs`` per
  batch, linked at their names, the directory fsynced once);
* ``cli jN``   — the same with ``jobs=<CPUs>`` worker processes (``gridpacs anonymize``'s
  default), pool start-up included. Both cli sides run in a separate process as light as
  the CLI's (``bench/anonymize_cli.py``), timed there: forking workers from this process,
  with deid's pipeline run in it, copied a heap several times the CLI's;
* ``deid``     — deid's ``replace_identifiers`` pipeline, one process.

Runs are interleaved (engine, cli j1, cli jN, deid, engine, …) so every side sees the same
noise on a shared machine; the table shows medians of files/s by wall clock and by CPU
time (this process plus its reaped worker processes), and the ratios to deid's medians.

    python bench/anonymize.py [--small 1000] [--ct 200] [--repeat 3] [--jobs N]
                              [--dir /dev/shm] [--baseline DIR] [--keep-outputs] [--json]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import mmap
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("MESSAGELEVEL", "-1")  # deid's logger: quiet (read at its import)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anonymizer import Deidentifier, load_profile  # noqa: E402
from anonymizer._deid import run_reference_pipeline  # noqa: E402
from anonymizer.batch import default_jobs  # noqa: E402
from anonymizer.files import deidentify_source, open_source, write_instance  # noqa: E402
from anonymizer.pseudonyms import Pseudonymizer  # noqa: E402
from anonymizer.uncached import ALIGN, THREADS  # noqa: E402
from tests.factories import StudySpec, make_dataset, to_bytes  # noqa: E402

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


def _cpu() -> float:
    """CPU seconds of this process and of its children already reaped (pool workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


#: (wall, CPU) seconds measured by the runner itself, or None: timed around the call.
Times = tuple[float, float]
Runner = Callable[[list[Path], Path], "Times | None"]


def deidentify_file(deid: Deidentifier, path: Path, out: Path) -> Path:
    """One file through our engine into a plain file in ``out`` (no temporary file, no
    fsync: the way deid's pipeline writes); returns the output's path."""
    with open_source(path) as source:
        result = deidentify_source(deid, source)
        target = out / f"{result.sop_instance_uid}.dcm"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_instance(fd, result, source)
        finally:
            os.close(fd)
    return target


def engine_runner() -> Runner:
    """Our engine, file in and plain file out, in this process."""

    def run(files: list[Path], out: Path) -> None:
        deid = Deidentifier(load_profile(), SECRET)
        for path in files:
            deidentify_file(deid, path, out)

    return run


class CliProcess:
    """``bench/anonymize_cli.py`` started once: the cli sides run there (see its docstring)."""

    def __init__(self, tree: Path = ROOT) -> None:
        script = tree / "bench" / "anonymize_cli.py"
        env = {**os.environ, "PYTHONPATH": str(tree)}  # that tree's anonymizer, not ours
        self.proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip

    def run(self, secret_file: Path, files: list[Path], out: Path, jobs: int) -> Times:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {"secret": str(secret_file), "files": [str(f) for f in files],
                   "out": str(out), "jobs": jobs}  # fmt: skip
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        assert not answer["n_failed"], f"{answer['n_failed']} failed, first: {answer['failed']}"
        return answer["wall"], answer["cpu"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def cli_runner(cli: CliProcess, secret_file: Path, jobs: int) -> Runner:
    """What ``gridpacs anonymize --jobs N`` runs once its arguments are parsed, timed in a
    process as light as the CLI's."""

    def run(files: list[Path], out: Path) -> Times:
        return cli.run(secret_file, files, out, jobs)

    return run


def deid_runner() -> Runner:
    """deid's replace_identifiers on the same recipe."""

    def run(files: list[Path], out: Path) -> None:
        written = run_reference_pipeline(files, list(load_profile().recipes), deid_functions(), out)
        assert written == len(files), f"deid wrote {written} of {len(files)}"

    return run


def measure(
    files: list[Path], scratch: Path, repeat: int, runners: dict[str, Runner], keep: bool = False
) -> dict[str, Any]:
    """Interleaved runs; medians of files/s by wall clock and by CPU time, ratios to deid.

    ``keep``: outputs stay until every round is done (each run writes a new folder, as a
    user's would) and the file system is synced after each run and the outputs' pages
    dropped from the page cache, untimed, so no run starts with another's unwritten data
    or with less free memory than the first run had (on this project's virtual machine,
    page-cache writes slow down several times once the guest needs memory it has not
    touched before: kept outputs' pages made every later page-cache writer, deid included,
    pay for the earlier runs). Without it each run's outputs are removed right after
    it: on an ext4 without a journal (this machine's /tmp) the next run's file creations
    then skip over the inodes just freed (ext4 does not reuse an inode for a minute or so
    after its deletion without a journal), ~0.1-1 ms per new file, whatever side runs.
    """
    wall: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    outputs = []
    for round_ in range(repeat):
        for n, (name, runner) in enumerate(runners.items()):
            out = scratch / f"out-{round_}-{n}"
            out.mkdir()
            started, cpu_started = time.perf_counter(), _cpu()
            times = runner(files, out)
            if times is None:
                times = (time.perf_counter() - started, _cpu() - cpu_started)
            wall[name].append(len(files) / times[0])
            cpu[name].append(len(files) / times[1])
            assert len(list(out.iterdir())) == len(files), name
            if keep:
                outputs.append(out)
                os.sync()
                _drop_cached(out)
            else:
                shutil.rmtree(out)
    for out in outputs:
        shutil.rmtree(out)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "files": len(files),
        "files_per_s": {k: round(v, 1) for k, v in med.items()},
        "ratio": {k: round(v / med["deid"], 1) for k, v in med.items()},
        "files_per_cpu_s": {k: round(v, 1) for k, v in med_cpu.items()},
        "cpu_ratio": {k: round(v / med_cpu["deid"], 1) for k, v in med_cpu.items()},
        "runs_wall": {k: [round(v, 1) for v in vs] for k, vs in wall.items()},
    }


def creation_cost(directory: Path, count: int = 200) -> float:
    """Median µs to create (and close) one empty file in a new ``directory``; the files stay
    until the scratch folder goes (deleting them would slow the next creations here).

    On an ext4 without a journal this moves from ~10 µs to ~250 µs in the half minute after
    many deletions (the allocator skips inodes freed recently), for every side alike:
    printed so a run's file-system state is on record beside its figures.
    """
    directory.mkdir()
    times = []
    for n in range(count):
        started = time.perf_counter()
        fd = os.open(directory / str(n), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def write_ceiling(directory: Path, size: int, count: int = 400) -> float | None:
    """Files/s of ``count`` new files of ``size`` bytes written as the CLI writes CT outputs
    (whole blocks with ``O_DIRECT``, the partial last one through the cache, by
    :data:`~anonymizer.uncached.THREADS` threads), then one ``sync``: what the disk allows
    with no de-identification, copy or commit at all (None where ``O_DIRECT`` is refused).
    The files stay until the scratch folder goes, like :func:`creation_cost`'s: freed
    inodes would slow the next creations on an ext4 without a journal.
    """
    directory.mkdir()
    flags = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC
    whole = size // ALIGN * ALIGN
    opened: list[int] = []

    def write(first: int, n: int) -> None:
        buffer = mmap.mmap(-1, size + ALIGN)  # page-aligned
        buffer.write(bytes(range(256)) * (len(buffer) // 256))
        with memoryview(buffer) as view:
            for number in range(first, first + n):
                fd = os.open(directory / str(number), flags, 0o600)
                opened.append(fd)
                os.pwrite(fd, view[:whole], 0)
                fcntl.fcntl(fd, fcntl.F_SETFL, os.O_RDWR)  # O_DIRECT off for the last block
                os.pwrite(fd, view[whole:size], whole)
        buffer.close()

    each = count // THREADS
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(write, range(0, each * THREADS, each), [each] * THREADS))
        os.sync()
    except OSError:
        return None
    finally:
        for fd in opened:
            os.close(fd)
    return each * THREADS / (time.perf_counter() - started)


def _drop_cached(directory: Path) -> None:
    """Drop the (clean, synced) cached pages of every file in ``directory``."""
    for path in directory.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000, help="64x64 instances")
    parser.add_argument("--ct", type=int, default=200, help="512x512 16-bit instances")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=default_jobs(), help="workers of cli jN")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--keep-outputs",
        action="store_true",
        help="keep every run's outputs until the corpus is done, sync after each run "
        "(see measure())",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout (e.g. `git archive main | tar -x -C DIR`): its cli sides run "
        "too, as 'base j1' and 'base jN', interleaved with ours in the same rounds",
    )
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
        secret_file = scratch / "site.secret"
        secret_file.write_text(SECRET.hex())
        secret_file.chmod(0o600)  # the CLI refuses a secret others may read
        clis = [CliProcess()]
        runners = {
            "engine": engine_runner(),
            "cli j1": cli_runner(clis[0], secret_file, 1),
            f"cli j{args.jobs}": cli_runner(clis[0], secret_file, args.jobs),
        }
        if args.baseline is not None:
            clis.append(CliProcess(args.baseline.resolve()))
            runners["base j1"] = cli_runner(clis[1], secret_file, 1)
            runners[f"base j{args.jobs}"] = cli_runner(clis[1], secret_file, args.jobs)
        runners["deid"] = deid_runner()
        create_us = [creation_cost(scratch / "probe-start")]
        ct_size = len(to_bytes(make_dataset(rows=512, columns=512)))
        ceilings = [write_ceiling(scratch / "probe-write-start", ct_size)] if args.ct else []
        try:
            for label, count, size in (
                ("small 64x64", args.small, 64),
                ("CT 512x512", args.ct, 512),
            ):
                if count > 0:
                    files = make_corpus(scratch / label.split()[0], count, size)
                    os.sync()  # the corpus on disk before any run: none flushes it
                    results[label] = measure(files, scratch, args.repeat, runners,
                                             args.keep_outputs)  # fmt: skip
            create_us.append(creation_cost(scratch / "probe-end"))
            if args.ct > 0:
                ceilings.append(write_ceiling(scratch / "probe-write-end", ct_size))
        finally:
            for cli in clis:
                cli.close()
    load = os.getloadavg()
    machine: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": [round(x, 1) for x in load],
        "dir": args.dir or tempfile.gettempdir(),
        "keep_outputs": args.keep_outputs,
        "file_creation_us_p50": [round(x, 1) for x in create_us],  # before, after the runs
        "ct_write_ceiling_files_per_s": [None if c is None else round(c) for c in ceilings],
    }
    if args.json:
        print(json.dumps({"machine": machine, "results": results}, indent=2))
        return
    print(f"# anonymize benchmark  {machine['date']}  {machine['cpus']} CPUs  "
          f"{machine['platform']}  load {load[0]:.1f}  files in {machine['dir']}"
          f"{'  outputs kept' if args.keep_outputs else ''}")  # fmt: skip
    print(f"# file creation there, p50: {create_us[0]:.0f} µs before the runs, "
          f"{create_us[-1]:.0f} µs after")  # fmt: skip
    if ceilings:
        shown = ["refused" if c is None else f"{c:,.0f}" for c in ceilings]
        print(f"# CT files/s the disk takes with no CPU work ({THREADS} threads writing new "
              f"files directly, one sync): {shown[0]} before the runs, "
              f"{shown[-1]} after")  # fmt: skip
    header = (
        f"{'corpus':<13}{'files':>6}  {'side':<9}{'f/s':>9}{'ratio':>8}{'f/cpu-s':>10}{'ratio':>8}"
    )
    print(header)
    print("-" * len(header))
    for label, r in results.items():
        for side in r["files_per_s"]:
            print(
                f"{label:<13}{r['files']:>6}  {side:<9}{r['files_per_s'][side]:>9}"
                f"{r['ratio'][side]:>7}x{r['files_per_cpu_s'][side]:>10}{r['cpu_ratio'][side]:>7}x"
            )
    print("wall runs (files/s):", json.dumps({k: v["runs_wall"] for k, v in results.items()}))


if __name__ == "__main__":
    main()
