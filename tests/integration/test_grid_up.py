"""`gridpacs up` as a new user runs it: a catalog and two nodes, mTLS, one command."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.factories import StudySpec, make_dataset
from tests.integration.processes import free_port, gridpacs_cli
from tests.integration.test_grid_catalog import _grid_find_soon, _store, _wait_for

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def test_up_starts_a_grid_where_one_node_finds_the_others_study(tmp_path: Path) -> None:
    base, catalog = free_port(), free_port()
    while abs(base - catalog) < 3 or abs(base + 20 - catalog) < 3:
        catalog = free_port()
    out = tmp_path / "up.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gridpacs", "up", "--dir", str(tmp_path / "grid"),
             "--base-port", str(base), "--catalog-port", str(catalog)],
            cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    try:
        _wait_for(lambda: "Ctrl-C stops everything" in out.read_text(), 60, "the grid table")
        text = out.read_text()
        assert "SITEA" in text and "SITEB" in text and "mTLS" in text
        spec = StudySpec(patient_id="UP-1")
        assert _store(base, "SITEA", [make_dataset(spec)]) == [0]
        found = _wait_for(
            lambda: _grid_find_soon(base + 1, "STUDY", PatientID="UP-1", StudyInstanceUID=""),
            30, "the study to be findable through the other node",
        )  # fmt: skip
        assert found[0].RetrieveAETitle == "SITEA"
        assert f"http://127.0.0.1:{base + 20}/metrics" in text  # printed, and served:
        node_metrics = _get(f"http://127.0.0.1:{base + 20}/metrics")
        assert 'gridpacs_node_events_total{event="c_store",status="0x0000"} 1.0' in node_metrics
        catalog_metrics = _get(f"http://127.0.0.1:{catalog + 20}/metrics")
        assert 'method="/gridpacs.catalog.v1.CatalogService/PublishChanges"' in catalog_metrics
        assert (tmp_path / "grid" / "pki" / "ca" / "ca.crt").exists()
        _researcher_retrieves(tmp_path, catalog, found[0].StudyInstanceUID)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 0, out.read_text()[-3000:]
    time.sleep(0.2)
    # every child is gone: the ports can be listened on again (as a server would, REUSEADDR)
    for port in (base, base + 1, catalog, base + 20, base + 21, catalog + 20):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return str(reply.read().decode())


def _researcher_retrieves(tmp_path: Path, catalog_port: int, study_uid: str) -> None:
    """The grid `up` prints how a researcher gets a certificate, a token and the study."""
    grid = tmp_path / "grid"
    pepper, grant_key = grid / "pki" / "token.pepper", grid / "pki" / "grant" / "grant.key"
    assert pepper.stat().st_mode & 0o077 == 0 and grant_key.stat().st_mode & 0o077 == 0

    def run(*args: str) -> str:
        proc = gridpacs_cli(*args)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc.stdout

    alice = tmp_path / "alice"
    run("pki", "issue", "--ca", str(grid / "pki" / "ca"), "--out", str(alice),
        "--name", "alice", "--client-only")  # fmt: skip
    token = json.loads(
        run("token", "create", "--db-url", f"sqlite:///{grid / 'catalog-1.sqlite'}",
            "--pepper-file", str(pepper), "--user", "alice", "--grant", "local=admin", "--json")
    )["token"]  # fmt: skip
    out = tmp_path / "fetched"
    run("retrieve", "--catalog", f"127.0.0.1:{catalog_port}", "--token", token,
        "--ca", str(alice / "ca.crt"), "--cert", str(alice / "alice.crt"),
        "--key", str(alice / "alice.key"), "--study", study_uid, "--out", str(out))  # fmt: skip
    [fetched] = list((out / study_uid).rglob("*.dcm"))
    assert b"UP-1" in fetched.read_bytes()
