"""Benchmark: a study through a processing stream vs. the same work done by hand.

Plain script (not a test) printing a table. One catalog and one node run as processes, the
node with the example stream ``invert`` (``docs/examples/streams/invert``) whose results go
back to the sender; DCMTK ``storescu`` sends as ``STORESCP`` and DCMTK ``storescp`` receives
the results. For each study size, interleaved per round:

* ``by hand``  — what a user would do without gridpacs, on the same files: ``storescu`` the
  study to a DICOM receiver (the ``storescp``), run ``invert.py`` on the files, ``storescu``
  the outputs back. The sum is the floor any stream system pays (two transfers + the
  algorithm).
* ``gridpacs`` — ``storescu`` the study to the node's ``INVERT`` AE title, then wait until
  every derived instance has arrived at the ``storescp``: end to end (store durably, trigger,
  submit, place, lease, gather the input, run, derive, store, publish, route). The job's
  timestamps in the catalog split it: association end → job created (trigger: persisted,
  published, submitted), created → placed, placed → started (the worker's long poll), and
  started → finished (input, command, derived series, storage, routing).

    python bench/streams.py [--sizes 1,20,100] [--image 256] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from bench.peers import (  # noqa: E402
    Server,
    _running,
    exclusive_run,
    free_port,
    nodelay_env,
    storescp,
)
from catalog.jobs.records import Job  # noqa: E402
from catalog.jobs_client import JobsClient  # noqa: E402
from tests.factories import StudySpec, make_dataset  # noqa: E402

STORESCU = "/usr/bin/storescu"
INVERT = ROOT / "docs" / "examples" / "streams" / "invert" / "invert.py"
STREAMS = ROOT / "docs" / "examples" / "streams"
STEPS = ("step_input", "step_command", "step_derived", "step_stored", "step_routed")


def make_study(folder: Path, count: int, image: int, tag: str) -> str:
    spec = StudySpec(patient_id=f"BENCH-{tag}", patient_name="BENCH^STREAM")
    folder.mkdir(parents=True)
    for n in range(1, count + 1):
        make_dataset(spec, instance_number=n, rows=image, columns=image).save_as(
            folder / f"{n:05d}.dcm", enforce_file_format=True
        )
    return spec.study_uid


def send(folder: Path, called: str, port: int) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [STORESCU, "-aet", "STORESCP", "-aec", called, "127.0.0.1", str(port), "+sd", str(folder)],
        capture_output=True,
        env=nodelay_env(),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed: {done.stderr.decode()[-500:]}")
    return time.perf_counter() - started


def by_hand(study: Path, work: Path, scp: Server) -> dict[str, float]:
    inbound = send(study, "STORESCP", scp.port)
    (work / "output").mkdir(parents=True)
    env = {
        **os.environ,
        "GRIDPACS_INPUT_DIR": str(study),
        "GRIDPACS_OUTPUT_DIR": str(work / "output"),
    }
    started = time.perf_counter()
    subprocess.run([sys.executable, str(INVERT)], env=env, check=True, capture_output=True)
    run = time.perf_counter() - started
    outbound = send(work / "output", "STORESCP", scp.port)
    return {"in": inbound, "run": run, "out": outbound, "total": inbound + run + outbound}


def _arrived(received: Path, already: set[Path], count: int) -> bool:
    return len(set(received.iterdir()) - already) >= count


def through_stream(
    study: Path, study_uid: str, count: int, node: Server, scp: Server, jobs: JobsClient
) -> dict[str, float]:
    received = scp.workdir / "received"
    before = set(received.iterdir())
    t0 = time.time()
    started = time.perf_counter()
    inbound = send(study, "INVERT", node.port)
    t_released = time.time()
    deadline = time.monotonic() + 300
    while not _arrived(received, before, count):
        if time.monotonic() > deadline:
            raise RuntimeError("the derived series did not arrive within 300 s")
        time.sleep(0.02)
    e2e = time.perf_counter() - started
    job = _job(jobs, study_uid)
    assert job.created_at and job.placed_at and job.started_at and job.finished_at
    steps = _steps(jobs.get_job_logs(job.id).logs.decode())
    return {
        **steps,
        "in": inbound,
        "e2e": e2e,
        "trigger": job.created_at.timestamp() - t_released,
        "place": (job.placed_at - job.created_at).total_seconds(),
        "lease": (job.started_at - job.placed_at).total_seconds(),
        "run": (job.finished_at - job.started_at).total_seconds(),
        "t0": t0,
    }


_STEP = re.compile(r"^gridpacs: (input|command|derived|stored|routed)\b.* in ([0-9.]+) s", re.M)


def _steps(logs: str) -> dict[str, float]:
    """Seconds of each step of the attempt, from the node's notes in the job's logs."""
    return {f"step_{name}": float(seconds) for name, seconds in _STEP.findall(logs)}


def _job(jobs: JobsClient, study_uid: str) -> Job:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for job in jobs.list_jobs(stream="invert", limit=1000):
            if job.study_instance_uid == study_uid and job.finished_at is not None:
                return job
        time.sleep(0.1)
    raise RuntimeError(f"no finished job for {study_uid}")


@contextmanager
def grid(workdir: Path, scp: Server) -> Iterator[tuple[Server, JobsClient]]:
    cport = free_port()
    catalog_argv = [
        sys.executable,
        "-m",
        "gridpacs",
        "catalog",
        "serve",
        "--name",
        "bench",
        "--port",
        str(cport),
        "--db-url",
        f"sqlite:///{workdir / 'catalog.sqlite'}",
        "--insecure",
    ]
    with _running("catalog", "", cport, catalog_argv, workdir, "catalog_listening"):
        port = free_port()
        config = workdir / "node.toml"
        config.write_text(
            f'name = "bench"\ndata_dir = "{workdir / "node"}"\nstreams_dir = "{STREAMS}"\n'
            f'[dicom]\nae_title = "BENCHNODE"\nport = {port}\n'
            f'[dicom.destinations]\nSTORESCP = {{ host = "127.0.0.1", port = {scp.port} }}\n'
            f'[catalog]\naddresses = ["127.0.0.1:{cport}"]\ninsecure = true\n'
            "publish_identified = true\n"
        )
        argv = [sys.executable, "-m", "gridpacs", "node", "serve", "--config", str(config)]
        with (
            _running("node", "BENCHNODE", port, argv, workdir, "event=node_ready") as node,
            JobsClient([f"127.0.0.1:{cport}"]) as jobs,
        ):
            yield node, jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,20,100")
    parser.add_argument("--image", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[int, dict[str, list[dict[str, float]]]] = {
        n: {"hand": [], "stream": []} for n in sizes
    }
    machine = describe()
    with exclusive_run("streams"), tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp:
        work = Path(tmp)
        (work / "scp").mkdir()
        with storescp(work / "scp") as scp, grid(work, scp) as (node, jobs):
            for round_ in range(args.repeat):
                for n in sizes:
                    for side in ("hand", "stream") if round_ % 2 == 0 else ("stream", "hand"):
                        tag = f"{n}-{round_}-{side}"
                        study = work / "studies" / tag
                        uid = make_study(study, n, args.image, tag)
                        if side == "hand":
                            results[n]["hand"].append(by_hand(study, work / "hand" / tag, scp))
                        else:
                            results[n]["stream"].append(
                                through_stream(study, uid, n, node, scp, jobs)
                            )
                        shutil.rmtree(study)
    machine["loadavg_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    report(results, machine, args)


def _median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def report(
    results: dict[int, dict[str, list[dict[str, float]]]],
    machine: dict[str, str],
    args: argparse.Namespace,
) -> None:
    table: list[dict[str, Any]] = []
    for n, sides in results.items():
        hand, stream = sides["hand"], sides["stream"]
        table.append(
            {
                "instances": n,
                "hand_in_s": _median(hand, "in"),
                "hand_run_s": _median(hand, "run"),
                "hand_out_s": _median(hand, "out"),
                "hand_total_s": _median(hand, "total"),
                "stream_in_s": _median(stream, "in"),
                "stream_e2e_s": _median(stream, "e2e"),
                "trigger_s": _median(stream, "trigger"),
                "place_s": _median(stream, "place"),
                "lease_s": _median(stream, "lease"),
                "run_s": _median(stream, "run"),
                **{f"{k}_s": _median(stream, k) for k in STEPS},
            }
        )
    if args.json:
        print(
            json.dumps(
                {"machine": machine, "image": args.image, "repeat": args.repeat, "rows": table},
                indent=2,
            )
        )
        return
    print(f"machine: {machine}")
    print(f"images {args.image}x{args.image} 16-bit, medians of {args.repeat} interleaved rounds")
    header = (
        "| instances | by hand: in + run + out = total (s) | gridpacs: in (s) | "
        "gridpacs end to end (s) | ratio | trigger | place | lease | run (s) |"
    )
    print(header)
    print("|" + "---|" * 9)
    for r in table:
        print(
            f"| {r['instances']} | {r['hand_in_s']:.2f} + {r['hand_run_s']:.2f} + "
            f"{r['hand_out_s']:.2f} = {r['hand_total_s']:.2f} | {r['stream_in_s']:.2f} | "
            f"{r['stream_e2e_s']:.2f} | {r['stream_e2e_s'] / r['hand_total_s']:.2f} | "
            f"{r['trigger_s']:.2f} | {r['place_s']:.2f} | {r['lease_s']:.2f} | {r['run_s']:.2f} |"
        )
    print()
    print("gridpacs run, by step (s, from the job's logs):")
    print("| instances | input | command | derive | store | route |")
    print("|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['instances']} | " + " | ".join(f"{r[f'{k}_s']:.2f}" for k in STEPS) + " |")


if __name__ == "__main__":
    main()
