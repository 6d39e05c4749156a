"""`gridpacs up` as a new user runs it: a catalog and two nodes, mTLS, one command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.factories import StudySpec, make_dataset
from tests.integration.processes import free_port
from tests.integration.test_grid_catalog import _grid_find_soon, _store, _wait_for

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def test_up_starts_a_grid_where_one_node_finds_the_others_study(tmp_path: Path) -> None:
    base, catalog = free_port(), free_port()
    while abs(base - catalog) < 3:
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
        assert (tmp_path / "grid" / "pki" / "ca" / "ca.crt").exists()
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
    for port in (base, base + 1, catalog):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()
