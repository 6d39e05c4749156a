"""Time C-FIND queries with DCMTK ``findscu`` (a C++ SCU) on one association.

pynetdicom's SCU polls its queues with 1 ms sleeps and decodes every pending response in
Python, which weighs on queries with many matches; ``findscu`` cross-checks that the figure
is the server's. All queries go as files in one ``findscu -v`` run; each query is timed from
its "Sending Find Request" line to its "Received Final Find Response" line (the lines are
unbuffered, as with ``storescu``).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from peers import Server, nodelay_env
from pydicom.dataset import Dataset

FINDSCU = "/usr/bin/findscu"


def run_findscu(
    server: Server, identifiers: list[Dataset], timeout_s: float = 600.0
) -> list[tuple[float, int, str | None]]:
    """Latency (ms), match count and error of each identifier, in order."""
    results: list[tuple[float, int, str | None]] = []
    with tempfile.TemporaryDirectory(prefix="findscu-") as tmp:
        files = []
        for n, ds in enumerate(identifiers):
            path = Path(tmp) / f"{n:05d}.dcm"
            ds.save_as(path, implicit_vr=True, little_endian=True)
            files.append(str(path))
        argv = [FINDSCU, "-v", "-S", "-aet", "BENCHSCU", "-aec", server.ae_title,
                "-to", "30", "-td", "120", "127.0.0.1", str(server.port), *files]  # fmt: skip
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=nodelay_env()
        )
        assert process.stdout is not None
        started, matches = 0.0, 0
        for raw in process.stdout:
            line = raw.decode(errors="replace")
            if "Sending Find Request" in line:
                started, matches = time.perf_counter(), 0
            elif "Received Final Find Response" in line:
                ms = (time.perf_counter() - started) * 1000
                results.append((ms, matches, None if "(Success)" in line else line.strip()))
            elif "Find Response:" in line and "(Pending)" in line:
                matches += 1
        process.wait(timeout=timeout_s)
    missing = len(identifiers) - len(results)
    results += [(0.0, 0, "no final response from findscu")] * missing
    return results
