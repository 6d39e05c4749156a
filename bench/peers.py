"""Start and stop the servers the benchmarks compare, and watch their memory.

Three DICOM receivers run as real processes on 127.0.0.1, each on a free port with a fresh
working directory: the gridpacs node (through its user-facing CLI), Orthanc (Debian package,
default SQLite index, generated JSON configuration) and DCMTK ``storescp`` (writes files,
indexes nothing: the ceiling of what a receiver on this machine can do).

Every process gets ``TCP_NODELAY=1`` in its environment: Debian DCMTK (and Orthanc, which
links it) leave Nagle's algorithm on otherwise, and a figure taken with it measures the
delayed-ACK timer (~88 ms per instance), not the software (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ORTHANC = "/usr/sbin/Orthanc"
STORESCP = "/usr/bin/storescp"
STARTUP_TIMEOUT_S = 60.0


class PeerError(RuntimeError):
    """A server did not start, or died while it was being measured."""


def terminate_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so context managers stop the servers on the way out."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def nodelay_env() -> dict[str, str]:
    """The current environment plus ``TCP_NODELAY=1`` (read by DCMTK at socket creation)."""
    return {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running receiver: where to reach it and the process to watch."""

    name: str
    ae_title: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path

    @property
    def pid(self) -> int:
        """Process id of the server itself (not of a wrapper)."""
        return self.process.pid

    def rss_kib(self) -> int:
        """Resident set size now, in KiB, from ``/proc/<pid>/status``."""
        return read_rss_kib(self.pid)

    def cpu_s(self) -> float:
        """CPU seconds the server has used so far."""
        return read_cpu_s(self.pid)

    def check_alive(self) -> None:
        """Raise with the log tail when the server has exited."""
        if self.process.poll() is not None:
            raise PeerError(
                f"{self.name} exited with {self.process.returncode}; log tail:\n"
                + log_tail(self.log_path)
            )


def read_rss_kib(pid: int) -> int:
    """``VmRSS`` of ``pid`` in KiB (0 once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def read_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # Fields 14 and 15 of proc(5), counted after the ")" closing the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_tail(path: Path, lines: int = 15) -> str:
    """Last lines of a server log, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PeerError(f"{what} exited with {process.returncode} before it was ready")
        if ready():
            return
        time.sleep(0.05)
    raise PeerError(f"{what} not ready after {STARTUP_TIMEOUT_S:.0f} s")


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _log_contains(path: Path, needle: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return needle in path.read_text(errors="replace")
        except FileNotFoundError:
            return False

    return check


def _die_with_parent() -> None:
    # Runs in the child before exec: if the benchmark dies, even by SIGKILL, the kernel sends
    # its servers SIGTERM instead of leaving them orphaned on the shared machine.
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@contextmanager
def exclusive_run(name: str) -> Iterator[None]:
    """Refuse to run while another benchmark run holds ``bench/out/bench.lock``.

    Two runs at once on this 2-core machine would measure each other.
    """
    import fcntl

    lock_path = Path(__file__).resolve().parent / "out" / "bench.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise PeerError(f"another benchmark run holds {lock_path}: {lock.read()}") from None
        lock.truncate(0)
        lock.write(f"{name} pid {os.getpid()}")
        lock.flush()
        yield


def stop_process(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s`` if it is still there."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace_s)


@contextmanager
def _running(
    name: str,
    ae_title: str,
    port: int,
    argv: list[str],
    workdir: Path,
    ready_log: str | None,
    source: Path = REPO_ROOT,
) -> Iterator[Server]:
    log_path = workdir / f"{name}.log"
    env = nodelay_env()
    if source != REPO_ROOT:
        env["PYTHONPATH"] = str(source)
    with open(log_path, "wb") as log:
        # The log goes to a file, never a pipe: a pipe nobody drains blocks a chatty server.
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=source,
            preexec_fn=_die_with_parent,
        )
    server = Server(name, ae_title, port, process, workdir, log_path)
    try:
        check = _log_contains(log_path, ready_log) if ready_log else (lambda: _port_answers(port))
        try:
            _wait_until(check, process, name)
        except PeerError as exc:
            raise PeerError(f"{exc}; log tail:\n{log_tail(log_path)}") from exc
        yield server
    finally:
        stop_process(process)


@contextmanager
def storescp(workdir: Path) -> Iterator[Server]:
    """DCMTK ``storescp`` writing every received instance under ``workdir/received``."""
    port = free_port()
    received = workdir / "received"
    received.mkdir(parents=True, exist_ok=True)
    argv = [STORESCP, "-aet", "STORESCP", "-od", str(received), str(port)]
    with _running("storescp", "STORESCP", port, argv, workdir, None) as server:
        yield server


def orthanc_config(workdir: Path, dicom_port: int, http_port: int) -> dict[str, object]:
    """Orthanc's configuration: defaults, except ports, paths and what a benchmark needs.

    The index stays the default SQLite one; compression is off so Orthanc stores bytes as
    received, like the node; any calling AE may store and query (no modality list needed).
    """
    storage = workdir / "storage"
    return {
        "Name": "bench",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "StorageCompression": False,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowEcho": True,
        "Plugins": [],
    }


@contextmanager
def orthanc(workdir: Path) -> Iterator[Server]:
    """Orthanc (Debian ``/usr/sbin/Orthanc``) with a fresh storage and SQLite index."""
    port = free_port()
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(orthanc_config(workdir, port, free_port()), indent=2))
    with _running("orthanc", "ORTHANC", port, [ORTHANC, str(config_path)], workdir, None) as srv:
        yield srv


@contextmanager
def gridpacs_node(
    workdir: Path, source: Path = REPO_ROOT, extra: Sequence[str] = ()
) -> Iterator[Server]:
    """A gridpacs node started exactly as a user would, with a fresh data directory.

    ``source`` is the source tree it runs from: another checkout (an exported older
    commit) measures before/after in the same run (``ingest.py --baseline``).
    """
    port = free_port()
    argv = [
        sys.executable, "-m", "gridpacs", "node", "serve",
        "--ae-title", "GRIDPACS", "--host", "127.0.0.1", "--port", str(port),
        "--data-dir", str(workdir / "data"), *extra,
    ]  # fmt: skip
    name = "gridpacs" if source == REPO_ROOT else "baseline"
    with _running(name, "GRIDPACS", port, argv, workdir, "event=node_ready", source) as server:
        yield server


@contextmanager
def gridpacs_scraped(workdir: Path) -> Iterator[Server]:
    """The node with Prometheus metrics on, scraped every second while it runs (Prometheus
    itself scrapes every 15 s by default): what monitoring costs ingest."""
    metrics_port = free_port()
    with gridpacs_node(workdir, extra=["--metrics-port", str(metrics_port)]) as server:
        stop = threading.Event()

        def scrape() -> None:
            while not stop.wait(1.0):
                with contextlib.suppress(OSError):
                    url = f"http://127.0.0.1:{metrics_port}/metrics"
                    with urllib.request.urlopen(url, timeout=5) as reply:
                        reply.read()

        scraper = threading.Thread(target=scrape, daemon=True)
        scraper.start()
        try:
            yield server
        finally:
            stop.set()
            scraper.join()


def baseline_node(source: Path) -> Callable[[Path], AbstractContextManager[Server]]:
    """A :func:`gridpacs_node` factory running the node from the source tree ``source``."""
    return lambda workdir: gridpacs_node(workdir, source.resolve())


# The receivers by the name used on the command line, in the order they are measured.
@contextmanager
def gridpacs_unaudited(workdir: Path) -> Iterator[Server]:
    """The node with its audit trail off (``[audit] enabled = false``): what the trail costs."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "unaudited.toml"
    config.write_text("[audit]\nenabled = false\n")
    with gridpacs_node(workdir, extra=["--config", str(config)]) as server:
        yield server


SERVERS: dict[str, Callable[[Path], AbstractContextManager[Server]]] = {
    "gridpacs": gridpacs_node,
    "gridpacs-unaudited": gridpacs_unaudited,
    "gridpacs-metrics": gridpacs_scraped,
    "orthanc": orthanc,
    "storescp": storescp,
}


@dataclass
class RssSampler:
    """Samples a process's RSS in a background thread while a measurement runs."""

    pid: int
    interval_s: float = 0.02
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self.samples.append((time.perf_counter(), read_rss_kib(self.pid)))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.samples.append((time.perf_counter(), read_rss_kib(self.pid)))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append((time.perf_counter(), read_rss_kib(self.pid)))

    def at_fraction(self, fraction: float) -> int:
        """RSS (KiB) at ``fraction`` (0..1) of the sampled time span."""
        t0, t1 = self.samples[0][0], self.samples[-1][0]
        target = t0 + fraction * (t1 - t0)
        return min(self.samples, key=lambda s: abs(s[0] - target))[1]

    def peak(self) -> int:
        """Largest RSS seen (KiB)."""
        return max(kib for _, kib in self.samples)
