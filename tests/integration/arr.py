"""Debian's rsyslog as the site's Audit Record Repository: it listens with mutual TLS
(RFC 5425, GnuTLS driver, client certificates of the site CA) and writes every message it
receives, one per line, to a file the test reads."""

from __future__ import annotations

import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from tests.integration.processes import HOST, LoggedProcess, subprocess_env

BOM = "\ufeff"


def rsyslogd() -> str:
    """The daemon's path; a missing one fails the test (``scripts/bootstrap --test``
    installs ``rsyslog`` and ``rsyslog-gnutls``), it never skips."""
    path = shutil.which("rsyslogd") or (
        "/usr/sbin/rsyslogd" if Path("/usr/sbin/rsyslogd").exists() else None
    )
    if path is None:
        pytest.fail("rsyslogd not found: run scripts/bootstrap --test", False)
    return path


@dataclass
class Rsyslog(LoggedProcess):
    port: int = 0
    work_dir: Path = Path()
    ca: Path = Path()
    cert: Path = Path()
    key: Path = Path()
    out: Path = field(init=False, default=Path())

    def start(self, timeout: float = 15.0) -> Rsyslog:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.out = self.work_dir / "received.log"
        conf = self.work_dir / "rsyslog.conf"
        conf.write_text(
            f"""
global(
  workDirectory="{self.work_dir}"
  maxMessageSize="256k"
  defaultNetstreamDriver="gtls"
  defaultNetstreamDriverCAFile="{self.ca}"
  defaultNetstreamDriverCertFile="{self.cert}"
  defaultNetstreamDriverKeyFile="{self.key}"
)
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1"
       streamDriver.authMode="x509/certvalid")
input(type="imtcp" address="{HOST}" port="{self.port}")
template(name="raw" type="string" string="%rawmsg%\\n")
action(type="omfile" file="{self.out}" template="raw" flushOnTXEnd="on"
       asyncWriting="off")
"""
        )
        argv = [rsyslogd(), "-n", "-f", str(conf), "-i", str(self.work_dir / "rsyslogd.pid")]
        self._spawn(argv, subprocess_env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                pytest.fail(f"rsyslogd exited early:\n{self.log_text()[-3000:]}", False)
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"rsyslogd not listening:\n{self.log_text()[-3000:]}", False)

    def lines(self) -> list[str]:
        try:
            return [ln for ln in self.out.read_text(errors="replace").splitlines() if ln]
        except FileNotFoundError:
            return []

    def documents(self) -> list[tuple[int, ET.Element]]:
        """``(seq, AuditMessage)`` of every line: the PROCID carries the row's ``seq``."""
        docs = []
        for line in self.lines():
            header, _, payload = line.partition("<AuditMessage")
            docs.append((int(header.split(" ")[4]), ET.fromstring("<AuditMessage" + payload)))
        return docs

    def wait_for(self, predicate: str, count: int = 1, timeout: float = 20.0) -> None:
        """Wait until ``count`` received lines contain ``predicate``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(predicate in line for line in self.lines()) >= count:
                return
            time.sleep(0.1)
        pytest.fail(f"{count} x {predicate!r} not received within {timeout:.0f} s; got:\n"
                    + "\n".join(self.lines()[-20:]), False)  # fmt: skip
