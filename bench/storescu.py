"""Send files with Debian DCMTK ``storescu`` and time the association, not the process.

``storescu -v`` prints one line per step, unbuffered; the time between "Requesting
Association" and "Releasing Association" is the transfer itself, without process start-up and
the scan of the input files, which would otherwise weigh on the fast receivers. One
association carries all the files of one ``storescu`` run (DCMTK's default).
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from peers import Server, nodelay_env

STORESCU = "/usr/bin/storescu"


@dataclass(frozen=True)
class StoreRun:
    """Outcome of one ``storescu`` run (or of several run in parallel, combined)."""

    succeeded: int
    failed: int
    association_s: float
    wall_s: float
    returncode: int
    errors: tuple[str, ...] = ()


class StorescuProcess:
    """One ``storescu`` sending directories (recursively) to a server on one association."""

    def __init__(self, server: Server, directories: list[Path], timeout_s: float) -> None:
        self._timeout_s = timeout_s
        argv = [
            STORESCU, "-v", "-aet", "STORESCU", "-aec", server.ae_title,
            "-ta", "30", "-td", str(int(timeout_s)), "+sd", "+r",
            "127.0.0.1", str(server.port), *map(str, directories),
        ]  # fmt: skip
        self.started = time.perf_counter()
        self._assoc_start: float | None = None
        self._assoc_end: float | None = None
        self._ok = 0
        self._failed = 0
        self._errors: list[str] = []
        self._process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=nodelay_env()
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if "Received Store Response (Success)" in line:
                self._ok += 1
            elif "Received Store Response" in line:
                self._failed += 1
                self._errors.append(line)
            elif "Requesting Association" in line:
                self._assoc_start = time.perf_counter()
            elif "Releasing Association" in line:
                self._assoc_end = time.perf_counter()
            elif line.startswith(("E:", "F:")) and len(self._errors) < 20:
                self._errors.append(line)

    def wait(self) -> StoreRun:
        """Block until ``storescu`` exits (killing it after the timeout) and report."""
        try:
            returncode = self._process.wait(timeout=self._timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            returncode = self._process.wait()
            self._errors.append(f"storescu killed after {self._timeout_s:.0f} s")
        ended = time.perf_counter()
        self._reader.join()
        start = self._assoc_start or self.started
        end = self._assoc_end or ended
        return StoreRun(self._ok, self._failed, end - start, ended - self.started, returncode,
                        tuple(self._errors))  # fmt: skip


def send(server: Server, directories: list[Path], timeout_s: float = 600.0) -> StoreRun:
    """Send every file under ``directories`` on one association and time it."""
    return StorescuProcess(server, directories, timeout_s).wait()


def send_parallel(
    server: Server, groups: list[list[Path]], timeout_s: float = 3600.0
) -> StoreRun:
    """One ``storescu`` per group of directories, all at once; timed first start to last exit."""
    started = time.perf_counter()
    runs = [run.wait() for run in [StorescuProcess(server, g, timeout_s) for g in groups]]
    wall = time.perf_counter() - started
    return StoreRun(
        succeeded=sum(r.succeeded for r in runs),
        failed=sum(r.failed for r in runs),
        association_s=wall,
        wall_s=wall,
        returncode=max(r.returncode for r in runs),
        errors=tuple(e for r in runs for e in r.errors),
    )
