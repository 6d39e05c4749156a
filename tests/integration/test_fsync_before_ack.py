"""Acknowledged means on disk: the blob and the index are fsync'd before each C-STORE response.

``kill -9`` (test_durability) cannot show this: the page cache survives a killed process, only
a power cut loses it. So the node runs under ``strace`` here, and the order of its system
calls is checked: for every C-STORE response it writes to the association's socket, a sync
of the blob and one of the index (``<data-dir>/index.sqlite*``) completed after the previous
response. The instances are small, so the node (packing by default) appends each to a pack:
the blob's sync is an ``fdatasync`` of ``<data-dir>/blobs/packs/<n>.pack``. Other syncs
under ``blobs/`` (a spare pack made in the background, a sidecar) do not count.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.factories import StudySpec, make_dataset
from tests.integration.processes import STOP_TIMEOUT_S, Node, NodeFactory
from tests.integration.scu import association, store

pytestmark = pytest.mark.timeout(120)

STORES = 5
_SYNC_DONE = re.compile(r"^(\d+)\s+(?:fsync|fdatasync)\(\d+<([^>]*)>\)\s+=\s+0")
_SYNC_START = re.compile(r"^(\d+)\s+(?:fsync|fdatasync)\(\d+<([^>]*)>\s+<unfinished")
_SYNC_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (?:fsync|fdatasync) resumed>.*=\s+0")
_SEND = re.compile(
    r"^\d+\s+(?:sendto|write|sendmsg)\(\d+<TCP:\[127\.0\.0\.1:(\d+)->[^>]*>,\s+\"(\\\d)"
)


@dataclass
class TracedNode(Node):
    """A node run under ``strace -f`` (syscalls: fsync, fdatasync and socket writes)."""

    trace_path: Path = Path()

    def argv(self) -> list[str]:
        strace = shutil.which("strace")
        if strace is None:
            pytest.fail("strace not found: install Debian 'strace' (never skipped)", False)
        return [
            strace, "-f", "-yy", "--seccomp-bpf", "-e", "signal=none",
            "-e", "trace=fsync,fdatasync,sendto,sendmsg,write", "-o", str(self.trace_path),
            "--", *super().argv(),
        ]  # fmt: skip

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the node itself (strace would detach and leave it running)."""
        if self.proc is not None and self.proc.poll() is None:
            for child in _children(self.proc.pid):
                os.kill(child, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for child in _children(self.proc.pid):
                    os.kill(child, signal.SIGKILL)
        return super().terminate(timeout)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def sync_windows(trace: str, port: int) -> list[list[str]]:
    """Paths synced before each P-DATA the node wrote on an association accepted on ``port``."""
    windows: list[list[str]] = []
    synced: list[str] = []
    pending: dict[str, str] = {}
    associated = False
    for line in trace.splitlines():
        if m := _SYNC_DONE.match(line):
            synced.append(m.group(2))
        elif m := _SYNC_START.match(line):
            pending[m.group(1)] = m.group(2)
        elif (m := _SYNC_RESUMED.match(line)) and m.group(1) in pending:
            synced.append(pending.pop(m.group(1)))
        elif (m := _SEND.match(line)) and int(m.group(1)) == port:
            pdu_type = m.group(2)
            if pdu_type == "\\2":  # A-ASSOCIATE-AC: start counting from here
                associated, synced = True, []
            elif pdu_type == "\\4" and associated:  # P-DATA-TF: a C-STORE response
                windows.append(synced)
                synced = []
    return windows


def test_blob_and_index_are_fsynced_before_each_store_response(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    plain = node_factory(start=False)
    node = TracedNode(
        name="traced-node",
        log_path=plain.log_path,
        data_dir=plain.data_dir,
        port=plain.port,
        trace_path=tmp_path / "node.strace",
    ).start()
    try:
        spec = StudySpec(patient_id="ITFSYNC")
        with association(node) as assoc:
            for n in range(1, STORES + 1):
                ds = make_dataset(spec, instance_number=n, rows=8, columns=8)
                assert store(assoc, ds) == 0x0000
    finally:
        code = node.terminate()
    assert code == 0, f"node under strace: exit code {code} after SIGTERM"

    windows = sync_windows(node.trace_path.read_text(errors="replace"), node.port)
    assert len(windows) == STORES, f"{len(windows)} responses seen in the trace, {STORES} sent"
    packs = str(node.data_dir / "blobs" / "packs")
    index = str(node.data_dir / "index.sqlite")
    for n, paths in enumerate(windows, 1):
        assert any(p.startswith(packs) and p.endswith(".pack") for p in paths), (
            f"store {n}: no sync of a pack under {packs} before the response; synced: {paths}"
        )
        assert any(p.startswith(index) for p in paths), (
            f"store {n}: no fsync of the index {index}* before the response; synced: {paths}"
        )
