"""``gridpacs jobs``: tables and JSON against a real catalog server (in-process CLI runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from catalog.app import CatalogApp, build_app
from catalog.config import CatalogConfig
from catalog.jobs.records import Outcome
from catalog.jobs_cli import app as jobs_app
from catalog.jobs_client import JobsClient
from tests.catalog.builders import Outbox, StudyBuilder
from tests.catalog.jobs_helpers import report

pytestmark = pytest.mark.timeout(60)
runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(sqlite_url: str) -> Iterator[CatalogApp]:
    app = build_app(CatalogConfig(name="cat-cli", port=0, db_url=sqlite_url, insecure=True))
    outbox = Outbox("site-a")
    for patient, date in (("P1", "20240101"), ("P2", "20240101"), ("P3", "20230101")):
        study = StudyBuilder(patient, study_date=date)
        app.service.apply_changes("site-a", outbox.added(study.instances(1)))
    app.start()
    try:
        yield app
    finally:
        app.stop(grace=0)


def _jobs(app: CatalogApp, *args: str) -> tuple[int, str]:
    result = runner.invoke(jobs_app, [*args, "--catalog", f"127.0.0.1:{app.port}"])
    return result.exit_code, result.output


def test_submit_list_show_logs_cancel_retry(served: CatalogApp) -> None:
    worker = JobsClient([f"127.0.0.1:{served.port}"])
    worker.report_worker(report("site-a", max_jobs=1))

    code, out = _jobs(served, "submit", "--stream", "segment", "--study-date", "20240101", "--json")
    assert code == 0, out
    submitted = json.loads(out)
    assert len(submitted) == 2 and {j["state"] for j in submitted} == {"queued"}
    assert submitted[0]["priority"] == "normal" and submitted[0]["attempt"] == 0
    first, second = (j["id"] for j in submitted)

    lease = worker.lease_job("site-a", 5)
    assert lease is not None and lease.job.id == first
    worker.finish_job(
        first, lease.token, Outcome(succeeded=False, exit_code=7, error="exit 7", logs=b"oops\n")
    )
    lease = worker.lease_job("site-a", 5)
    assert lease is not None and lease.job.attempt == 2
    worker.finish_job(first, lease.token, Outcome(succeeded=False, exit_code=7, logs=b"again\n"))

    code, out = _jobs(served, "list")
    assert code == 0 and "2 job(s)" in out
    assert "failed" in out and "2/2" in out and "segment" in out

    code, out = _jobs(served, "list", "--state", "failed", "--json")
    assert [j["id"] for j in json.loads(out)] == [first]

    code, out = _jobs(served, "show", first)
    assert code == 0 and "site-a" in out and "2 of 2" in out and "started" in out
    code, out = _jobs(served, "show", first, "--json")
    shown = json.loads(out)
    assert shown["state"] == "failed" and shown["exit_code"] == 7 and shown["finished_at"]

    assert _jobs(served, "logs", first) == (0, "again\n")
    assert _jobs(served, "logs", first, "--attempt", "1") == (0, "oops\n")
    code, out = _jobs(served, "logs", first, "--json")
    assert json.loads(out) == {"job": first, "attempt": 2, "logs": "again\n"}

    code, out = _jobs(served, "cancel", second)
    assert code == 0 and f"job {second}: cancelled" in out
    code, out = _jobs(served, "retry", first, "--json")
    assert json.loads(out)["state"] == "queued"

    code, out = _jobs(served, "retry", first)
    assert code == 2 and "FAILED_PRECONDITION" in out
    code, out = _jobs(served, "show", "999")
    assert code == 2 and "NOT_FOUND" in out
    code, out = _jobs(served, "submit", "--stream", "segment")
    assert code == 2 and "give --study or a filter" in out
    code, out = _jobs(served, "submit", "--stream", "nope", "--study", "1.2.3")
    assert code == 2 and "no node offers stream 'nope'" in out
    code, out = _jobs(served, "submit", "--stream", "segment", "--study", "1.2.3", "--urgent")
    assert code == 0 and "1 job(s) submitted to segment" in out
    worker.close()


def test_the_gridpacs_command_mounts_jobs(served: CatalogApp) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRIDPACS_CATALOG": f"127.0.0.1:{served.port}"}
    done = subprocess.run(
        [sys.executable, "-m", "gridpacs", "jobs", "list", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
