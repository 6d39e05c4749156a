"""Grid C-MOVE benchmark: a study held on another node vs. served locally vs. Orthanc.

    python bench/grid_move.py [--ct 200] [--repeat 3] [--plaintext] [--markdown]

One run starts a catalog replica and two gridpacs nodes (mTLS between them unless
``--plaintext``), Orthanc and a DCMTK ``storescp``. The CT set (512x512 16-bit) is stored once
on node A and once in Orthanc. Then, interleaved round after round, DCMTK ``movescu`` moves
the whole study to ``storescp``:

* ``grid``  — C-MOVE on node B's GRID AE: B finds the holder in the catalog and fetches
  every instance from node A over the peer service (gRPC, SHA-256 verified);
* ``local`` — C-MOVE on node A's own AE title: served from its own store;
* ``orthanc`` — C-MOVE on Orthanc.

Each line: association time of ``movescu`` (from "Requesting Association" to "Releasing"),
instances and MB per second, and the time to the first completed sub-operation (first
pending C-MOVE response after the request was sent). Medians of the rounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from corpus import DataSet, ingest_set
from machine import describe
from peers import (
    Server,
    _running,
    exclusive_run,
    free_port,
    nodelay_env,
    orthanc_config,
    storescp,
    terminate_on_sigterm,
)
from report import Report, show
from rich.console import Console
from storescu import send

MOVESCU = "/usr/bin/movescu"
ORTHANC = "/usr/sbin/Orthanc"


@dataclass(frozen=True)
class MoveRun:
    completed: int  # pending responses seen (one per finished sub-operation)
    seconds: float
    first_s: float
    returncode: int
    errors: tuple[str, ...]


def move(server_port: int, called_ae: str, study_uid: str, destination: str) -> MoveRun:
    """One ``movescu`` of a whole study; times read from its verbose output as it comes."""
    argv = [
        MOVESCU, "-v", "-S", "-aet", "MOVESCU", "-aec", called_ae, "-aem", destination,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
        "127.0.0.1", str(server_port),
    ]  # fmt: skip
    marks: dict[str, float] = {}
    errors: list[str] = []
    completed = 0
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=nodelay_env())  # fmt: skip
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        now = time.perf_counter()
        if "Requesting Association" in line:
            marks.setdefault("assoc", now)
        elif "Sending Move Request" in line:
            marks.setdefault("request", now)
        elif "Received Move Response" in line and "Pending" in line:
            marks.setdefault("first", now)
            completed += 1
        elif "Releasing Association" in line:
            marks["release"] = now
        elif line.startswith(("E:", "F:")) and len(errors) < 10:
            errors.append(line)
    code = proc.wait()
    end = marks.get("release", time.perf_counter())
    return MoveRun(
        completed=completed,
        seconds=end - marks.get("assoc", started),
        first_s=marks.get("first", end) - marks.get("request", started),
        returncode=code,
        errors=tuple(errors),
    )


# -- the grid -----------------------------------------------------------------------------------


@dataclass
class Tls:
    ca: Path
    certs: dict[str, tuple[Path, Path]]


def make_tls(workdir: Path, names: list[str]) -> Tls:
    from catalog.security import init_ca, issue

    init_ca(workdir / "ca", "bench")
    certs = {}
    for name in names:
        files = issue(workdir / "ca", workdir / f"tls-{name}", "127.0.0.1")
        certs[name] = (files.cert, files.key)
    return Tls(workdir / "ca" / "ca.crt", certs)


@contextmanager
def catalog(workdir: Path, tls: Tls | None) -> Iterator[str]:
    port = free_port()
    config = workdir / "catalog.toml"
    text = f'name = "cat1"\nport = {port}\ndb_url = "sqlite:///{workdir / "catalog.sqlite"}"\n'
    if tls is None:
        text += "insecure = true\n"
    else:
        cert, key = tls.certs["catalog"]
        text += f'[tls]\ncert = "{cert}"\nkey = "{key}"\nca = "{tls.ca}"\n'
    config.write_text(text)
    argv = [sys.executable, "-m", "gridpacs", "catalog", "serve", "--config", str(config)]
    with _running("catalog", "", port, argv, workdir, "listening on"):
        yield f"127.0.0.1:{port}"


@contextmanager
def grid_node(
    workdir: Path,
    name: str,
    ae: str,
    catalog_address: str,
    tls: Tls | None,
    destination: str,
    *,
    prefetch: int = 4,
) -> Iterator[Server]:
    port = free_port()
    data = workdir / name
    data.mkdir()
    link = (
        f'[catalog]\naddresses = ["{catalog_address}"]\npublish_identified = true\n'
        f"retrieve_prefetch = {prefetch}\n"
    )
    if tls is None:
        link += "insecure = true\n"
    else:
        cert, key = tls.certs[name]
        link += f'cert_file = "{cert}"\nkey_file = "{key}"\nca_file = "{tls.ca}"\n'
    config = data / "node.toml"
    config.write_text(f'name = "{name}"\n{link}')
    argv = [
        sys.executable, "-m", "gridpacs", "node", "serve", "--config", str(config),
        "--ae-title", ae, "--host", "127.0.0.1", "--port", str(port),
        "--data-dir", str(data / "data"), "--destination", destination,
        "--log-level", "WARNING",
    ]  # fmt: skip
    with _running(name, ae, port, argv, data, None) as server:
        yield server


@contextmanager
def orthanc_with_destination(workdir: Path, destination: tuple[str, int]) -> Iterator[Server]:
    port = free_port()
    config = orthanc_config(workdir, port, free_port())
    config["DicomModalities"] = {"dest": [destination[0], "127.0.0.1", destination[1]]}
    config["DicomAlwaysAllowMove"] = True  # movescu is not a declared modality
    config["DicomAssociationCloseDelay"] = 0  # do not hold storescp (one association at a time)
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    with _running("orthanc", "ORTHANC", port, [ORTHANC, str(path)], workdir, None) as server:
        yield server


def wait_published(catalog_address: str, tls: Tls | None, study_uid: str, count: int) -> None:
    from catalog.client import GrpcCatalogClient
    from catalog.records import QueryFilter

    creds = None
    if tls is not None:
        from catalog.security import channel_credentials

        cert, key = tls.certs["probe"]
        creds = channel_credentials(cert, key, tls.ca)
    deadline = time.monotonic() + 120
    with GrpcCatalogClient([catalog_address], credentials=creds, timeout=5) as client:
        while time.monotonic() < deadline:
            found = list(client.query_studies(QueryFilter(study_instance_uids=(study_uid,))))
            if found and found[0].number_of_instances == count:
                return
            time.sleep(0.2)
    raise SystemExit(f"the study was not published with {count} instances within 120 s")


def clear(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            path.unlink()


def keep_logs(work: Path) -> None:
    """Copy the servers' logs to bench/out/grid_move-logs/ (the work folder is deleted)."""
    target = Path(__file__).resolve().parent / "out" / "grid_move-logs"
    target.mkdir(parents=True, exist_ok=True)
    for log in work.rglob("*.log"):
        shutil.copyfile(log, target / f"{log.parent.name}-{log.name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=int, default=200, help="instances of 512x512 16-bit")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--plaintext", action="store_true", help="no mTLS on the grid links")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    terminate_on_sigterm()
    console = Console(stderr=True)
    dataset: DataSet = ingest_set("ct", opts.ct)
    study_uid = dataset.studies[0].study_uid
    machine = describe()
    results: dict[str, list[MoveRun]] = {"grid": [], "grid-noprefetch": [], "local": [],
                                         "orthanc": []}  # fmt: skip
    with exclusive_run("grid_move"), tempfile.TemporaryDirectory(prefix="grid-move-") as tmp:
        work = Path(tmp)
        tls = None if opts.plaintext else make_tls(work, ["catalog", "a", "b", "c", "probe"])
        with ExitStack() as stack:
            scp = stack.enter_context(storescp(work / "scp"))
            dest = f"STORESCP=127.0.0.1:{scp.port}"
            cat = stack.enter_context(catalog(work, tls))
            node_a = stack.enter_context(grid_node(work, "a", "SITEA", cat, tls, dest))
            node_b = stack.enter_context(grid_node(work, "b", "SITEB", cat, tls, dest))
            node_c = stack.enter_context(grid_node(work, "c", "SITEC", cat, tls, dest, prefetch=0))
            (work / "orthanc").mkdir()
            orth = stack.enter_context(
                orthanc_with_destination(work / "orthanc", ("STORESCP", scp.port))
            )
            for server in (node_a, orth):
                sent = send(server, dataset.parts)
                if sent.succeeded != dataset.instances:
                    raise SystemExit(f"storing into {server.name} failed: {sent.errors[:3]}")
            wait_published(cat, tls, study_uid, dataset.instances)
            received = work / "scp" / "received"
            targets = {
                "grid": (node_b.port, "GRID", "STORESCP"),
                "grid-noprefetch": (node_c.port, "GRID", "STORESCP"),
                "local": (node_a.port, "SITEA", "STORESCP"),
                "orthanc": (orth.port, "ORTHANC", "STORESCP"),
            }
            order = list(targets)
            for round_no in range(opts.repeat):
                shift = round_no % len(order)
                for name in order[shift:] + order[:shift]:
                    clear(received)
                    port, called, destination = targets[name]
                    run = move(port, called, study_uid, destination)
                    got = sum(1 for _ in received.iterdir())
                    console.print(
                        f"round {round_no + 1} {name}: {run.completed}/{dataset.instances} "
                        f"in {run.seconds:.2f} s, first after {run.first_s * 1000:.0f} ms "
                        f"({got} files)"
                    )
                    if run.returncode != 0 or got != dataset.instances:
                        console.print(f"[red]{name} failed:[/red] {run.errors}")
                    results[name].append(run)
            keep_logs(work)
    megabytes = dataset.total_bytes / 1e6
    report = Report(
        title=f"C-MOVE of one {dataset.instances}-instance CT study ({megabytes:.0f} MB) "
        f"to DCMTK storescp, medians of {opts.repeat} interleaved rounds",
        columns=["served by", "path", "s", "instances/s", "MB/s", "first sub-op ms", "vs local"],
        caption=f"{machine['cpu']}, {machine['nproc']} cores, load {machine['loadavg']}, "
        f"{machine['date']}; grid links {'plaintext' if opts.plaintext else 'mTLS'}",
    )
    local_s = statistics.median(r.seconds for r in results["local"])
    paths = {
        "grid": "node B GRID AE → catalog → node A peer service, prefetch 4",
        "grid-noprefetch": "same, prefetch 0 (sequential, as before)",
        "local": "node A own AE, own store",
        "orthanc": "Orthanc 1 process",
    }
    for name, runs in results.items():
        secs = statistics.median(r.seconds for r in runs)
        first = statistics.median(r.first_s for r in runs)
        report.add_row(
            name, paths[name], f"{secs:.2f}", f"{dataset.instances / secs:.0f}",
            f"{megabytes / secs:.1f}", f"{first * 1000:.0f}", f"{local_s / secs:.0%}",
        )  # fmt: skip
    if opts.json:
        print(json.dumps({k: [r.__dict__ for r in v] for k, v in results.items()}, indent=2))
    show(report, opts.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
