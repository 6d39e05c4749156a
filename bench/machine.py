"""Describe the machine a figure was taken on, including how much an fsync costs right now.

On these shared machines the cost of an fsync swings from ~0.3 ms to ~10 ms with the
neighbours' load, and a receiver that acknowledges only durable data (the node) pays it on
every instance while one that does not (storescp, Orthanc's files) does not: a throughput
figure means little without the fsync cost measured in the same run.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version


def _first(pattern: str, text: str) -> str:
    found = re.search(pattern, text, re.MULTILINE)
    return found.group(1).strip() if found else "?"


def _tool_version(argv: list[str], pattern: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "?"
    return _first(pattern, out)


def describe() -> dict[str, str]:
    """CPU, cores, memory, load, date and the versions of the software compared."""
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
        cpu = _first(r"^model name\s*:\s*(.+)$", cpuinfo.read())
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        mem_kib = int(_first(r"^MemTotal:\s*(\d+)", meminfo.read()))
    with open("/proc/loadavg", encoding="ascii") as loadavg:
        load = " ".join(loadavg.read().split()[:3])
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "nproc": str(os.cpu_count()),
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "loadavg": load,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "orthanc": _tool_version(["/usr/sbin/Orthanc", "--version"], r"Orthanc\s+(\S+)"),
        "dcmtk": _tool_version(["/usr/bin/storescu", "--version"], r"storescu v(\S+)"),
        "pynetdicom": version("pynetdicom"),
        "pydicom": version("pydicom"),
    }


def fsync_ms(directory: str, count: int = 40, size: int = 12_000) -> tuple[float, float]:
    """p50 and p90 (ms) of write + fsync of a small file + fsync of its directory."""
    data = os.urandom(size)
    times: list[float] = []
    with tempfile.TemporaryDirectory(dir=directory, prefix="fsync-probe-") as tmp:
        dir_fd = os.open(tmp, os.O_RDONLY)
        try:
            for n in range(count):
                started = time.perf_counter()
                fd = os.open(os.path.join(tmp, str(n)), os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.fsync(dir_fd)
                times.append((time.perf_counter() - started) * 1000)
        finally:
            os.close(dir_fd)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.9)]
