"""Removing a study: a gridpacs node given an IHE IOCM rejection note vs Orthanc's REST DELETE.

    python bench/rejection.py [--instances 500] [--repeat 3] [--markdown] [--json]

Each round starts a fresh gridpacs node (``--rejecting-ae PACSADMIN``) and a fresh Orthanc
(Debian's), stores the same study of 64x64 CT instances into both with DCMTK ``storescu``
(untimed), then times what removes the whole study:

* gridpacs: one ``storescu`` of a rejection note (KOS titled 113001 listing every
  instance), from the start of ``storescu`` to its exit: the index transaction, the blob
  deletions (packed records punched out of their packs, then tombstones: a few syncs per
  pack) and storing the note itself;
* Orthanc: ``DELETE /studies/{id}`` over its REST API (the id looked up untimed).

Disk space is measured too: the blocks allocated under each server's working directory
(``st_blocks``, as ``du`` counts: blobs, index, logs) before the study is stored, after,
and after the removal. "took" is what storing the study added (for gridpacs this includes
pack files made ahead of need, zero-filled), "freed" what the removal gave back (net of
what the index grew by in recording the rejection).

DCMTK has no deletion. Both servers are then asked for the study's instances (C-FIND,
IMAGE level) to check that nothing but the note is left. Medians of the rounds, and the
instances removed per second.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from machine import describe
from peers import (
    Server,
    _running,
    exclusive_run,
    free_port,
    orthanc_config,
    terminate_on_sigterm,
)
from report import Report, show
from rich.console import Console
from storescu import STORESCU

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.factories import StudySpec, make_dataset, make_rejection_note  # noqa: E402

ORTHANC = "/usr/sbin/Orthanc"
FINDSCU = "/usr/bin/findscu"
ADMIN = "PACSADMIN"


@contextmanager
def gridpacs(workdir: Path) -> Iterator[Server]:
    port = free_port()
    argv = [
        sys.executable, "-m", "gridpacs", "node", "serve", "--ae-title", "GRIDPACS",
        "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(workdir / "data"),
        "--rejecting-ae", ADMIN, "--log-level", "WARNING",
    ]  # fmt: skip
    with _running("gridpacs", "GRIDPACS", port, argv, workdir, None) as server:
        yield server


@contextmanager
def orthanc(workdir: Path) -> Iterator[tuple[Server, int]]:
    port, http = free_port(), free_port()
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(orthanc_config(workdir, port, http), indent=2))
    with _running("orthanc", "ORTHANC", port, [ORTHANC, str(path)], workdir, None) as server:
        yield server, http


def storescu(server: Server, paths: list[Path], calling_ae: str = "STORESCU") -> float:
    """Seconds of one ``storescu`` of ``paths``; exits the bench on a failure."""
    argv = [STORESCU, "-aet", calling_ae, "-aec", server.ae_title, "127.0.0.1",
            str(server.port), *map(str, paths)]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"storescu to {server.name} failed:\n{result.stderr[-2000:]}")
    return seconds


def images_left(server: Server, study_uid: str) -> int:
    """How many instances of the study a C-FIND (IMAGE level) still finds."""
    argv = [FINDSCU, "-v", "-S", "-aec", server.ae_title, "-k", "QueryRetrieveLevel=IMAGE",
            "-k", f"StudyInstanceUID={study_uid}", "-k", "SOPInstanceUID",
            "127.0.0.1", str(server.port)]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    return (result.stdout + result.stderr).count("Find Response:")  # pending ones (-v)


def orthanc_delete(http: int, study_uid: str) -> float:
    """Seconds of Orthanc's ``DELETE /studies/{id}`` (the lookup is not timed)."""
    base = f"http://127.0.0.1:{http}"
    lookup = urllib.request.Request(f"{base}/tools/lookup", data=study_uid.encode(),
                                    method="POST")  # fmt: skip
    with urllib.request.urlopen(lookup, timeout=30) as answer:
        [found] = [f for f in json.load(answer) if f["Type"] == "Study"]
    request = urllib.request.Request(f"{base}/studies/{found['ID']}", method="DELETE")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as answer:
        answer.read()
    return time.perf_counter() - started


def allocated(directory: Path) -> int:
    """Bytes of disk the files under ``directory`` occupy (blocks, not sizes)."""
    return sum(p.stat().st_blocks * 512 for p in directory.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    terminate_on_sigterm()
    console = Console(stderr=True)
    times: dict[str, list[float]] = {"gridpacs": [], "orthanc": []}
    freed: dict[str, list[float]] = {"gridpacs": [], "orthanc": []}
    took: dict[str, list[float]] = {"gridpacs": [], "orthanc": []}
    with exclusive_run("rejection"), tempfile.TemporaryDirectory(prefix="rej-") as tmp:
        work = Path(tmp)
        spec = StudySpec(patient_id="REJECT-BENCH")
        study = [make_dataset(spec, instance_number=n + 1) for n in range(opts.instances)]
        files = []
        for ds in study:
            path = work / "study" / f"{ds.SOPInstanceUID}.dcm"
            path.parent.mkdir(exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        note = work / "note.dcm"
        make_rejection_note(study).save_as(note, enforce_file_format=True)
        for round_no in range(opts.repeat):
            run = work / f"round-{round_no}"
            (run / "g").mkdir(parents=True)
            (run / "o").mkdir()
            with gridpacs(run / "g") as node, orthanc(run / "o") as (pacs, http):
                dirs = {"gridpacs": run / "g", "orthanc": run / "o"}
                empty = {name: allocated(d) for name, d in dirs.items()}
                storescu(node, files)
                storescu(pacs, files)
                full = {name: allocated(d) for name, d in dirs.items()}
                order = ["gridpacs", "orthanc"] if round_no % 2 == 0 else ["orthanc", "gridpacs"]
                for name in order:
                    if name == "gridpacs":
                        seconds = storescu(node, [note], calling_ae=ADMIN)
                        left = images_left(node, spec.study_uid)
                        expected = 1  # the note itself
                    else:
                        seconds = orthanc_delete(http, spec.study_uid)
                        left = images_left(pacs, spec.study_uid)
                        expected = 0
                    if left != expected:
                        raise SystemExit(f"{name}: {left} instances left, expected {expected}")
                    times[name].append(seconds)
                    freed[name].append((full[name] - allocated(dirs[name])) / 2**20)
                    took[name].append((full[name] - empty[name]) / 2**20)
                    console.print(f"round {round_no + 1} {name}: {seconds:.3f} s, took "
                                  f"{took[name][-1]:.1f} MiB, "
                                  f"freed {freed[name][-1]:.1f}")  # fmt: skip
    machine = describe()
    report = Report(
        title=f"Removing a study of {opts.instances} CT instances (64x64), medians of "
        f"{opts.repeat} rounds",
        columns=["server", "how", "s", "instances/s", "vs Orthanc", "MiB took", "MiB freed"],
        caption=f"{machine['cpu']}, {machine['nproc']} cores, load {machine['loadavg']}, "
        f"{machine['date']}",
    )
    orthanc_s = statistics.median(times["orthanc"])
    hows = {"gridpacs": "rejection note (storescu)", "orthanc": "REST DELETE /studies"}
    for name, how in hows.items():
        secs = statistics.median(times[name])
        report.add_row(name, how, f"{secs:.3f}", f"{opts.instances / secs:.0f}",
                       f"{orthanc_s / secs:.2f}x", f"{statistics.median(took[name]):.1f}",
                       f"{statistics.median(freed[name]):.1f}")  # fmt: skip
    if opts.json:
        print(json.dumps({"seconds": times, "took_mib": took, "freed_mib": freed}))
    show(report, opts.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
