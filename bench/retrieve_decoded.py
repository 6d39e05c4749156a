"""Retrieve benchmark: a JPEG Lossless CT study moved as stored vs. decoded for a workstation.

    python bench/retrieve_decoded.py [--ct 100] [--repeat 3] [--markdown] [--json]

The CT set (512x512, 16-bit) is compressed once with DCMTK's ``dcmcjpeg`` (JPEG Lossless
SV1, as archives store CT) and stored, as compressed, into a gridpacs node and into Orthanc.
Two DCMTK ``storescp`` receive: ``ANY`` accepts every transfer syntax (the study arrives
as stored), ``RAW`` only uncompressed ones (its default, a workstation without codecs:
each image must be decoded on the way). Interleaved round after round, DCMTK ``movescu``
moves the whole study from each server to each receiver. Medians of the rounds: seconds,
instances per second, and the share of the as-stored speed left when decoding.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from corpus import ingest_set
from grid_move import MoveRun, clear, move
from machine import describe
from peers import (
    STORESCP,
    Server,
    _running,
    exclusive_run,
    free_port,
    orthanc_config,
    terminate_on_sigterm,
)
from pydicom import dcmread
from report import Report, show
from rich.console import Console
from rich.progress import track
from storescu import STORESCU

ORTHANC = "/usr/sbin/Orthanc"
RECEIVERS = {"ANY": "every syntax (as stored)", "RAW": "uncompressed only (decoded)"}


def compressed_copy(files: list[Path], target: Path) -> list[Path]:
    """``files`` as JPEG Lossless SV1, written by DCMTK (cached next to the originals)."""
    target.mkdir(parents=True, exist_ok=True)
    out = []
    for path in track(files, description="dcmcjpeg", transient=True):
        encoded = target / path.name
        if not encoded.exists():
            subprocess.run(["dcmcjpeg", str(path), str(encoded)], check=True)
        out.append(encoded)
    return out


def store_compressed(server: Server, folder: Path) -> None:
    """``storescu`` proposing JPEG Lossless (``-xs``): the bytes are stored as compressed."""
    argv = [STORESCU, "-xs", "-aec", server.ae_title, "+sd", "127.0.0.1", str(server.port),
            str(folder)]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"storing into {server.ae_title} failed:\n{result.stderr[-2000:]}")


@contextmanager
def receiver(workdir: Path, ae_title: str) -> Iterator[Server]:
    """A DCMTK ``storescp``; ``ANY`` accepts every transfer syntax (``+xa``)."""
    port = free_port()
    received = workdir / "received"
    received.mkdir(parents=True, exist_ok=True)
    argv = [STORESCP, "-aet", ae_title, *(["+xa"] if ae_title == "ANY" else []),
            "-od", str(received), str(port)]  # fmt: skip
    with _running(f"storescp-{ae_title}", ae_title, port, argv, workdir, None) as server:
        yield server


@contextmanager
def gridpacs(workdir: Path, destinations: dict[str, int]) -> Iterator[Server]:
    port = free_port()
    argv = [
        sys.executable, "-m", "gridpacs", "node", "serve", "--ae-title", "GRIDPACS",
        "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(workdir / "data"),
        "--log-level", "WARNING",
    ]  # fmt: skip
    for ae, dest_port in destinations.items():
        argv += ["--destination", f"{ae}=127.0.0.1:{dest_port}"]
    with _running("gridpacs", "GRIDPACS", port, argv, workdir, None) as server:
        yield server


@contextmanager
def orthanc(workdir: Path, destinations: dict[str, int]) -> Iterator[Server]:
    port = free_port()
    config = orthanc_config(workdir, port, free_port())
    config["DicomModalities"] = {ae: [ae, "127.0.0.1", p] for ae, p in destinations.items()}
    config["DicomAlwaysAllowMove"] = True
    config["DicomAssociationCloseDelay"] = 0
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    with _running("orthanc", "ORTHANC", port, [ORTHANC, str(path)], workdir, None) as server:
        yield server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=int, default=100, help="instances of 512x512 16-bit")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    terminate_on_sigterm()
    console = Console(stderr=True)
    dataset = ingest_set("ct", opts.ct)
    plain = sorted(p for part in dataset.parts for p in part.iterdir())
    study_uid = dataset.studies[0].study_uid
    files = compressed_copy(plain, dataset.parts[0].parent / "jpeg-lossless")
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    results: dict[tuple[str, str], list[MoveRun]] = {}
    with exclusive_run("retrieve_decoded"), tempfile.TemporaryDirectory(prefix="rd-") as tmp:
        work = Path(tmp)
        with ExitStack() as stack:
            scps = {ae: stack.enter_context(receiver(work / ae, ae)) for ae in RECEIVERS}
            ports = {ae: scp.port for ae, scp in scps.items()}
            (work / "gridpacs").mkdir()
            (work / "orthanc").mkdir()
            servers = {
                "gridpacs": stack.enter_context(gridpacs(work / "gridpacs", ports)),
                "orthanc": stack.enter_context(orthanc(work / "orthanc", ports)),
            }
            staging = work / "staging"
            staging.mkdir()
            for path in files:
                (staging / path.name).symlink_to(path)
            for server in servers.values():
                store_compressed(server, staging)
            order = [(s, r) for s in servers for r in RECEIVERS]
            for round_no in range(opts.repeat):
                shift = round_no % len(order)
                for name, ae in order[shift:] + order[:shift]:
                    received = work / ae / "received"
                    clear(received)
                    run = move(servers[name].port, servers[name].ae_title, study_uid, ae)
                    got = sorted(received.iterdir())
                    syntaxes = {str(dcmread(p, stop_before_pixels=True).file_meta
                                    .TransferSyntaxUID) for p in got[:3]}  # fmt: skip
                    console.print(
                        f"round {round_no + 1} {name} → {ae}: {len(got)}/{len(files)} in "
                        f"{run.seconds:.2f} s, arrived as {sorted(syntaxes)}"
                    )
                    if len(got) != len(files):
                        console.print(f"[red]{name} → {ae} incomplete:[/red] {run.errors}")
                    results.setdefault((name, ae), []).append(run)
    machine = describe()
    report = Report(
        title=f"C-MOVE of a {len(files)}-instance JPEG Lossless CT study ({megabytes:.0f} MB) "
        f"to DCMTK storescp, medians of {opts.repeat} interleaved rounds",
        columns=["server", "receiver accepts", "s", "instances/s", "vs as stored"],
        caption=f"{machine['cpu']}, {machine['nproc']} cores, load {machine['loadavg']}, "
        f"{machine['date']}",
    )
    for name in servers:
        stored = statistics.median(r.seconds for r in results[(name, "ANY")])
        for ae, label in RECEIVERS.items():
            secs = statistics.median(r.seconds for r in results[(name, ae)])
            report.add_row(name, label, f"{secs:.2f}", f"{len(files) / secs:.0f}",
                           f"{stored / secs:.0%}")  # fmt: skip
    if opts.json:
        print(json.dumps({f"{s}/{r}": [x.__dict__ for x in v] for (s, r), v in results.items()}))
    show(report, opts.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
