"""Storage Commitment: how long a modality waits for its report, gridpacs vs Orthanc.

    python bench/storage_commitment.py [--small 1000] [--ct 200] [--repeat 3] [--markdown]

A modality sends a study, then asks the archive to commit to it (N-ACTION, Storage
Commitment Push Model) and deletes its own copy once the N-EVENT-REPORT says so. This
measures that wait, from the N-ACTION's start to the report's arrival, with one pynetdicom
"modality" (AE ``CT1``) asking every server in the same run and taking every report on
its own listening port. Each round starts fresh servers, stores the corpus into each with
DCMTK ``storescu`` (untimed), then asks each in turn (the order alternates by round):

* ``gridpacs``: the node as shipped, every referenced instance read back and its SHA-256
  checked before it is committed (``[dicom.commitment] verify_bytes = true``);
* ``gridpacs, index only``: the same node with ``verify_bytes = false``: the index alone
  says what is held, as Orthanc's database does;
* ``orthanc``: Debian's Orthanc, the modality declared in ``DicomModalities``.

DCMTK ships no Storage Commitment tool. Every report is checked: all instances committed,
none failed. Medians of the rounds; "N-ACTION ms" is the request's answer alone.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from machine import describe
from peers import (
    Server,
    _running,
    exclusive_run,
    free_port,
    nodelay_env,
    orthanc_config,
    terminate_on_sigterm,
)
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)
from rejection import storescu
from report import Report, show
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.dicom.scu import install_nodelay_for_outgoing  # noqa: E402
from node.dicom.server import NoDelayAssociationServer  # noqa: E402
from tests.factories import StudySpec, make_dataset  # noqa: E402

ORTHANC = "/usr/sbin/Orthanc"
MODALITY = "CT1"
SERVERS = ("gridpacs", "gridpacs, index only", "orthanc")


class Modality:
    """The modality: asks for commitment, and takes the reports on its own port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.reports: queue.Queue[tuple[float, Dataset]] = queue.Queue()
        ae = AE(ae_title=MODALITY)
        ae.add_supported_context(StorageCommitmentPushModel, [ExplicitVRLittleEndian],
                                 scu_role=False, scp_role=True)  # fmt: skip
        ae.add_requested_context(StorageCommitmentPushModel, [ExplicitVRLittleEndian])
        self._ae = ae
        install_nodelay_for_outgoing()  # TCP_NODELAY both ways, as every DICOM peer here
        self._server = ae.make_server(
            ("127.0.0.1", self.port),
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)],
            server_class=NoDelayAssociationServer,
        )
        ae._servers.append(self._server)  # so shutdown() finds it, as with start_server()
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _on_report(self, event: Any) -> tuple[int, None]:
        self.reports.put((time.perf_counter(), event.event_information))
        return 0x0000, None

    def commit(self, server: Server, refs: list[tuple[str, str]]) -> tuple[float, float]:
        """Ask ``server`` to commit to ``refs``: (N-ACTION answered, report arrived) in s."""
        info = Dataset()
        info.TransactionUID = generate_uid()
        items = []
        for sop_class, uid in refs:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = uid
            items.append(item)
        info.ReferencedSOPSequence = DicomSequence(items)
        started = time.perf_counter()
        assoc = self._ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
        if not assoc.is_established:
            raise SystemExit(f"{server.name} refused the association")
        try:
            status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel,
                                            StorageCommitmentPushModelInstance)  # fmt: skip
            answered = time.perf_counter() - started
        finally:
            assoc.release()
        if status is None or int(status.Status) != 0:
            raise SystemExit(f"{server.name} refused the request: {status}")
        arrived, report = self.reports.get(timeout=600)
        if report.TransactionUID != info.TransactionUID:
            raise SystemExit(f"{server.name}: a report for another transaction")
        committed = len(report.get("ReferencedSOPSequence") or [])
        failed = len(report.get("FailedSOPSequence") or [])
        if (committed, failed) != (len(refs), 0):
            raise SystemExit(f"{server.name}: {committed} committed, {failed} failed")
        return answered, arrived - started

    def close(self) -> None:
        self._server.shutdown()


@contextmanager
def gridpacs(workdir: Path, modality: Modality, verify: bool) -> Iterator[Server]:
    port = free_port()
    config = workdir / "node.toml"
    config.write_text(
        f'name = "bench"\ndata_dir = "{workdir / "data"}"\n'
        f'[dicom]\nae_title = "GRIDPACS"\nhost = "127.0.0.1"\nport = {port}\n'
        f"[dicom.commitment]\nverify_bytes = {str(verify).lower()}\n"
        f'[dicom.destinations]\n{MODALITY} = {{ host = "127.0.0.1", port = {modality.port} }}\n'
    )
    argv = [sys.executable, "-m", "gridpacs", "node", "serve", "--config", str(config),
            "--log-level", "WARNING"]  # fmt: skip
    with _running("gridpacs", "GRIDPACS", port, argv, workdir, None) as server:
        yield server


@contextmanager
def orthanc(workdir: Path, modality: Modality) -> Iterator[Server]:
    port = free_port()
    config = orthanc_config(workdir, port, free_port())
    config["DicomModalities"] = {"ct1": [MODALITY, "127.0.0.1", modality.port]}
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    with _running("orthanc", "ORTHANC", port, [ORTHANC, str(path)], workdir, None) as server:
        yield server


def corpus(directory: Path, count: int, size: int, patient: str) -> list[Path]:
    directory.mkdir(parents=True)
    spec = StudySpec(patient_id=patient)
    paths = []
    for n in range(count):
        ds = make_dataset(spec, instance_number=n + 1, rows=size, columns=size)
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def references(paths: list[Path]) -> list[tuple[str, str]]:
    from pydicom import dcmread

    refs = []
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        refs.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return refs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000, help="64x64 instances")
    parser.add_argument("--ct", type=int, default=200, help="512x512 instances")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    opts = parser.parse_args()
    terminate_on_sigterm()
    os.environ.update(nodelay_env())  # the untimed storescu runs too: Nagle would add minutes
    console = Console(stderr=True)
    sets = {f"small x{opts.small}": (opts.small, 64), f"CT x{opts.ct}": (opts.ct, 512)}
    sets = {name: spec for name, spec in sets.items() if spec[0] > 0}
    answered: dict[tuple[str, str], list[float]] = {}
    waited: dict[tuple[str, str], list[float]] = {}
    modality = Modality()
    try:
        with exclusive_run("storage_commitment"), tempfile.TemporaryDirectory(prefix="sc-") as t:
            work = Path(t)
            files = {name: corpus(work / f"in-{n}", count, size, f"SC-{n}")
                     for n, (name, (count, size)) in enumerate(sets.items())}  # fmt: skip
            refs = {name: references(paths) for name, paths in files.items()}
            for round_no in range(opts.repeat):
                run = work / f"round-{round_no}"
                for d in ("g", "v", "o"):
                    (run / d).mkdir(parents=True)
                with gridpacs(run / "g", modality, True) as node, \
                        gridpacs(run / "v", modality, False) as index_only, \
                        orthanc(run / "o", modality) as pacs:  # fmt: skip
                    servers = dict(zip(SERVERS, (node, index_only, pacs), strict=True))
                    for paths in files.values():
                        for server in servers.values():
                            storescu(server, paths, calling_ae=MODALITY)
                    order = list(SERVERS) if round_no % 2 == 0 else list(reversed(SERVERS))
                    for name in sets:
                        for server_name in order:
                            a, w = modality.commit(servers[server_name], refs[name])
                            answered.setdefault((server_name, name), []).append(a)
                            waited.setdefault((server_name, name), []).append(w)
                            console.print(
                                f"round {round_no + 1} {server_name} {name}: "
                                f"answered {a * 1000:.1f} ms, report {w:.3f} s"
                            )
    finally:
        modality.close()
    machine = describe()
    report = Report(
        title=f"Storage Commitment: N-ACTION to N-EVENT-REPORT, medians of {opts.repeat} rounds",
        columns=["corpus", "server", "N-ACTION ms", "report s", "instances/s", "vs Orthanc"],
        caption=f"{machine['cpu']}, {machine['nproc']} cores, load {machine['loadavg']}, "
        f"{machine['date']}",
    )
    for name, (count, _) in sets.items():
        orthanc_s = statistics.median(waited[("orthanc", name)])
        for server_name in SERVERS:
            secs = statistics.median(waited[(server_name, name)])
            ms = statistics.median(answered[(server_name, name)]) * 1000
            report.add_row(name, server_name, f"{ms:.1f}", f"{secs:.3f}",
                           f"{count / secs:,.0f}", f"{orthanc_s / secs:.2f}x")  # fmt: skip
    show(report, opts.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
