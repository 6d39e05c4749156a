"""This machine's load as the worker reports it: CPU busy %, available memory.

psutil is used when it is installed; otherwise Linux's /proc is read directly (the node
adds no dependency for two numbers).
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Any

_psutil: Any
try:
    _psutil = importlib.import_module("psutil")
except ImportError:
    _psutil = None


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies since boot from the first line of /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


def memory_available_mb() -> int:
    if _psutil is not None:
        return int(_psutil.virtual_memory().available // (1024 * 1024))
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


class CpuSampler:
    """CPU busy percentage since the previous call (the first call: since boot)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = (0, 0) if _psutil is not None else _cpu_times()

    def percent(self) -> float:
        if _psutil is not None:
            return float(_psutil.cpu_percent(interval=None))
        with self._lock:
            busy, total = _cpu_times()
            last_busy, last_total = self._last
            self._last = (busy, total)
        if total <= last_total:
            return 0.0
        return round(100.0 * (busy - last_busy) / (total - last_total), 1)
