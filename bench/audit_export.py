"""Audit rows to an Audit Record Repository: how fast, and what it costs a query.

    python bench/audit_export.py [--rows 20000] [--repeat 3] [--finds 300] [--markdown]

Debian's rsyslog is the repository, twice: one listening with mutual TLS (GnuTLS, RFC 5425),
one on plain TCP, each writing every message to a file. An audit table (SQLite, as on a
node) is filled with ``--rows`` C-FIND rows, untimed. Then, interleaved round after round,
each side sends all of them, and the clock stops when rsyslog's file holds the last one
(delivered, not only written to a socket):

* ``gridpacs tls`` / ``gridpacs tcp``: :class:`AuditExporter` from its cursor at 0 (rows
  read from the table, turned into DICOM audit messages, framed, sent in batches, the cursor
  moved after each);
* ``logger tcp``: util-linux ``logger --rfc5424 --octet-count --tcp`` sending the same
  messages, already made, from a file: the standard client's speed into the same rsyslog.

Then the cost to DICOM users: two node processes, one exporting its audit trail to the TLS
rsyslog, one with the trail but no export, each holding the same study; ``--finds`` C-FINDs
on one association to each, interleaved, with per-request latency (p50, p95).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from machine import describe
from peers import exclusive_run
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
)
from report import Report, show

from catalog.security import pki
from catalog.security.atna import AuditSource, to_xml
from catalog.security.audit import canonical, chain_hash
from catalog.security.audit_export import (
    AuditExporter,
    AuditExportSettings,
    build_sender,
)
from catalog.security.models import AuditEntry, AuditExportCursor
from node.audit import open_audit
from node.audit_atna import node_message
from node.dicom.scu import install_nodelay_for_outgoing

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
SOURCE = AuditSource("GRIDPACS", "bench-site")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Rsyslog:
    """One rsyslogd writing each message it receives as a line of ``out``."""

    directory: Path
    port: int
    tls: pki.CertFiles | None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def out(self) -> Path:
        return self.directory / "received.log"

    def start(self) -> Rsyslog:
        self.directory.mkdir(parents=True, exist_ok=True)
        tls = ""
        driver = ""
        if self.tls is not None:
            tls = (
                f'defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="{self.tls.ca_cert}"'
                f' defaultNetstreamDriverCertFile="{self.tls.cert}"'
                f' defaultNetstreamDriverKeyFile="{self.tls.key}"'
            )
            driver = 'streamDriver.name="gtls" streamDriver.mode="1" '
            driver += 'streamDriver.authMode="x509/certvalid"'
        conf = self.directory / "rsyslog.conf"
        conf.write_text(
            f'global(workDirectory="{self.directory}" maxMessageSize="256k" {tls})\n'
            f'module(load="imtcp" {driver})\n'
            f'input(type="imtcp" address="{HOST}" port="{self.port}")\n'
            'template(name="raw" type="string" string="%rawmsg%\\n")\n'
            f'action(type="omfile" file="{self.out}" template="raw")\n'
        )
        rsyslogd = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
        self.proc = subprocess.Popen(
            [rsyslogd, "-n", "-f", str(conf), "-i", str(self.directory / "pid")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("rsyslogd did not listen")

    def lines(self) -> int:
        try:
            with self.out.open("rb") as fh:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
        except FileNotFoundError:
            return 0

    def wait_for(self, count: int, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while self.lines() < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"rsyslog has {self.lines()} of {count} lines")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def fill(url: str, rows: int) -> sa.Engine:
    """``rows`` C-FIND rows, chained as AuditLog writes them, in one transaction."""
    log = open_audit(url)
    table = AuditEntry.__table__
    prev = "0" * 64
    start = dt.datetime.now(dt.UTC)
    values = []
    for seq in range(1, rows + 1):
        at = start + dt.timedelta(milliseconds=seq)
        keys = {"PatientID": f"PAT{seq % 997:05d}", "StudyDate": "20260101-"}
        target = {"called_ae": "GRIDPACS", "level": "STUDY", "keys": keys}
        actor, action, peer, outcome = "WS1", "dicom.find", "10.0.0.5:4242", "served"
        row_hash = chain_hash(prev, canonical(seq, at, actor, action, target, peer, outcome))
        values.append(dict(seq=seq, at=at, actor=actor, action=action, target=target, peer=peer,
                           outcome=outcome, prev_hash=prev, row_hash=row_hash))  # fmt: skip
        prev = row_hash
    with log.engine.begin() as conn:
        conn.execute(sa.insert(table), values)  # type: ignore[arg-type]
    return log.engine


def reset_cursors(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(AuditExportCursor.__table__))  # type: ignore[arg-type]


def run_exporter(url: str, settings: AuditExportSettings, arr: Rsyslog, rows: int) -> float:
    engine = sa.create_engine(url)
    reset_cursors(engine)
    log = open_audit(url)
    exporter = AuditExporter(log, build_sender(settings), lambda r: node_message(r, SOURCE),
                             app_name="gridpacs-bench", batch_size=settings.batch_size)  # fmt: skip
    before = arr.lines()
    started = time.perf_counter()
    exporter.export_once()
    arr.wait_for(before + rows)
    elapsed = time.perf_counter() - started
    exporter.stop()
    return elapsed


def logger_payloads(url: str, path: Path) -> None:
    log = open_audit(url)
    with path.open("wb") as fh:
        seq = 0
        while True:
            batch = log.after(seq, 5000)
            if not batch:
                break
            for row in batch:
                fh.write(to_xml(node_message(row, SOURCE)) + b"\n")
            seq = batch[-1].seq


def run_logger(payloads: Path, arr: Rsyslog, rows: int) -> float:
    before = arr.lines()
    started = time.perf_counter()
    subprocess.run(["logger", "--rfc5424", "--octet-count", "--tcp", "--server", HOST,
                    "--port", str(arr.port), "--msgid", "IHE+RFC-3881", "-t", "logger-bench",
                    "--file", str(payloads)], check=True)  # fmt: skip
    arr.wait_for(before + rows)
    return time.perf_counter() - started


# -- C-FIND latency ---------------------------------------------------------------------------


def start_node(
    directory: Path, export: AuditExportSettings | None
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = directory / "node.toml"
    text = f'name = "{directory.name}"\ndata_dir = "{directory / "data"}"\n'
    text += f'[dicom]\nae_title = "GRIDPACS"\nhost = "{HOST}"\nport = {port}\n'
    if export is not None:
        text += (f'[audit.export]\nurl = "{export.url}"\nca_file = "{export.ca_file}"\n'
                 f'cert_file = "{export.cert_file}"\nkey_file = "{export.key_file}"\n')  # fmt: skip
    config.write_text(text)
    log = (directory / "node.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "gridpacs", "node", "serve", "--config",
                             str(config)], cwd=REPO, stdout=log, stderr=log)  # fmt: skip
    deadline = time.monotonic() + 60
    while b"event=node_ready" not in (directory / "node.log").read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((directory / "node.log").read_text())
        time.sleep(0.1)
    return proc, port


def ct(patient: str, study: str, series: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.PatientName = patient, "BENCH^AUDIT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.StudyDate = "CT", "20260101"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 15, 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = b"\0" * 128
    return ds


def store(port: int, datasets: list[Dataset]) -> None:
    ae = AE(ae_title="CT1")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(HOST, port, ae_title="GRIDPACS")
    for ds in datasets:
        assert int(assoc.send_c_store(ds).Status) == 0
    assoc.release()


def finds(port: int, count: int) -> list[float]:
    ae = AE(ae_title="WS1")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(HOST, port, ae_title="GRIDPACS")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = "PAT-BENCH"
    query.StudyInstanceUID = ""
    took = []
    for _ in range(count):
        started = time.perf_counter()
        statuses = [int(s.Status) for s, _ in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind)]  # fmt: skip
        took.append((time.perf_counter() - started) * 1000)
        assert statuses[-1] == 0, f"C-FIND answered {statuses[-1]:#06x}"
    assoc.release()
    return took


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--finds", type=int, default=300)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    machine = describe()
    with tempfile.TemporaryDirectory(prefix="gridpacs-audit-bench-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        pki.init_ca(root / "ca", "bench CA")
        arr_cert = pki.issue(root / "ca", root / "arr", "arr", dns_names=["localhost"],
                             ip_addresses=[HOST])  # fmt: skip
        node_cert = pki.issue(root / "ca", root / "node", "node")
        tls_arr = Rsyslog(root / "arr-tls", free_port(), arr_cert).start()
        stack.callback(tls_arr.stop)
        tcp_arr = Rsyslog(root / "arr-tcp", free_port(), None).start()
        stack.callback(tcp_arr.stop)
        tls = AuditExportSettings(url=f"tls://localhost:{tls_arr.port}", ca_file=node_cert.ca_cert,
                                  cert_file=node_cert.cert, key_file=node_cert.key)  # fmt: skip
        tcp = AuditExportSettings(url=f"tcp://{HOST}:{tcp_arr.port}", insecure=True)
        url = f"sqlite:///{root / 'audit.sqlite'}"
        fill(url, args.rows)
        payloads = root / "payloads.xml"
        logger_payloads(url, payloads)
        times: dict[str, list[float]] = {"gridpacs tls": [], "gridpacs tcp": [], "logger tcp": []}
        for _ in range(args.repeat):
            times["gridpacs tls"].append(run_exporter(url, tls, tls_arr, args.rows))
            times["gridpacs tcp"].append(run_exporter(url, tcp, tcp_arr, args.rows))
            times["logger tcp"].append(run_logger(payloads, tcp_arr, args.rows))
        size = payloads.stat().st_size / args.rows
        report = Report(
            f"audit rows to rsyslog: {args.rows:,} rows, medians of {args.repeat} rounds",
            ["side", "seconds", "rows/s", "vs logger tcp"],
            caption=f"{machine['date']} · {machine['cpu']} · {machine['nproc']} CPUs · "
            f"message body {size:,.0f} bytes",
            left=1,
        )
        base = statistics.median(times["logger tcp"])
        for side, runs in times.items():
            median = statistics.median(runs)
            report.add_row(side, f"{median:.2f}", f"{args.rows / median:,.0f}",
                           f"{base / median:.2f}x")  # fmt: skip
        show(report, args.markdown)

        # C-FIND latency with and without export
        exporting, exp_port = start_node(_mkdir(root / "node-export"), tls)
        stack.callback(exporting.terminate)
        plain, plain_port = start_node(_mkdir(root / "node-trail"), None)
        stack.callback(plain.terminate)
        study, series = generate_uid(), generate_uid()
        for port in (exp_port, plain_port):
            store(port, [ct("PAT-BENCH", study, series) for _ in range(3)])
        latency: dict[str, list[float]] = {"audit + export": [], "audit only": []}
        try:
            for _ in range(args.repeat):
                latency["audit + export"] += finds(exp_port, args.finds)
                latency["audit only"] += finds(plain_port, args.finds)
        except AssertionError:
            for name in ("node-export", "node-trail"):
                print(f"--- {name}", (root / name / "node.log").read_text()[-3000:])
            raise
        report = Report(
            f"C-FIND latency, {args.finds * args.repeat} requests per node, interleaved",
            ["node", "p50 ms", "p95 ms", "p50 vs audit only"],
            caption="one association per round; the exporting node sends each row to the TLS "
            "rsyslog as it is written",
            left=1,
        )
        base50 = pct(latency["audit only"], 0.5)
        for side, values in latency.items():
            report.add_row(side, f"{pct(values, 0.5):.2f}", f"{pct(values, 0.95):.2f}",
                           f"{pct(values, 0.5) / base50:.2f}x")  # fmt: skip
        show(report, args.markdown)
        delivered = tls_arr.lines()
        print(f"# the TLS rsyslog holds {delivered:,} lines "
              f"({args.rows * args.repeat:,} from the rounds, the rest from the node)")  # fmt: skip


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":
    os.environ.setdefault("TCP_NODELAY", "1")
    install_nodelay_for_outgoing()  # as a workstation does; Nagle would add 40 ms a C-FIND
    with exclusive_run("audit_export"):
        main()
