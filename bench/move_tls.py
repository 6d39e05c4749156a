"""C-MOVE to a workstation over DICOM TLS vs. plain DICOM, node vs. Orthanc.

    python bench/move_tls.py [--ct 200] [--repeat 3] [--markdown]

One run makes a CA and certificates (EC P-256, ``catalog.security``), then starts two DCMTK
``storescp`` (one plain, one ``+tls`` requiring a client certificate) and, for each server,
a plain process and a TLS one: a gridpacs node with ``[dicom.tls]`` and its destination
``tls = true``; Orthanc with ``DicomTlsEnabled`` and its modality ``UseDicomTls``. A TLS
server listens over TLS only, so its mover speaks TLS too, and presents its certificate to
storescp. The same CT study is stored into each server first (untimed). Then, interleaved round
after round, a pynetdicom C-MOVE SCU (``TCP_NODELAY``) moves the whole study:

* ``gridpacs plain`` / ``gridpacs tls`` — the node to the plain / TLS storescp;
* ``orthanc plain`` / ``orthanc tls`` — the same through Orthanc.

Each line: seconds from the C-MOVE request to its final response, instances and MB per
second, time to the first completed sub-operation, what TLS costs that server (its TLS time
over its plain time) and the node against Orthanc in the same mode. Medians of the rounds.
Every round checks that storescp received every instance.
"""

from __future__ import annotations

import argparse
import json
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from corpus import DataSet, ingest_set
from grid_move import Tls, make_tls
from machine import describe
from peers import (
    ORTHANC,
    STORESCP,
    Server,
    _running,
    exclusive_run,
    free_port,
    orthanc_config,
    terminate_on_sigterm,
)
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove,
)
from report import Report, show
from rich.console import Console

from node.dicom.reactor import install_race_free_loop
from node.dicom.scu import install_nodelay_for_outgoing


def client_context(tls: Tls, name: str) -> ssl.SSLContext:
    """A client context with ``name``'s certificate, trusting the bench CA."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca))
    context.load_cert_chain(*(str(p) for p in tls.certs[name]))
    return context


@contextmanager
def store_scp(workdir: Path, ae: str, tls: Tls | None) -> Iterator[Server]:
    port = free_port()
    received = workdir / "received"
    received.mkdir(parents=True, exist_ok=True)
    secure: list[str] = []
    if tls is not None:
        cert, key = tls.certs["storescp"]
        secure = ["+tls", str(key), str(cert), "+cf", str(tls.ca), "-rc"]
    argv = [STORESCP, "-aet", ae, *secure, "-od", str(received), str(port)]
    with _running(f"storescp-{ae.lower()}", ae, port, argv, workdir, None) as server:
        yield server


@contextmanager
def node(workdir: Path, certs: Tls | None, destination: Server) -> Iterator[Server]:
    """The node with ``destination`` under its own AE title; with ``certs``, over DICOM TLS
    both ways (``[dicom.tls]`` for its listener and the certificate it presents), as Orthanc."""
    port = free_port()
    text = (
        f'name = "bench"\ndata_dir = "{workdir / "data"}"\n'
        f'[dicom]\nae_title = "GRIDPACS"\nhost = "127.0.0.1"\nport = {port}\n'
        f"[dicom.destinations.{destination.ae_title}]\n"
        f'host = "127.0.0.1"\nport = {destination.port}\n'
    )
    if certs is not None:
        cert, key = certs.certs["node"]
        text += "tls = true\n"
        text += f'[dicom.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\nca_file = "{certs.ca}"\n'
    config = workdir / "node.toml"
    config.write_text(text)
    argv = [
        sys.executable,
        "-m",
        "gridpacs",
        "node",
        "serve",
        "--config",
        str(config),
        "--log-level",
        "WARNING",
    ]
    name = "gridpacs-tls" if certs is not None else "gridpacs"
    with _running(name, "GRIDPACS", port, argv, workdir, None) as server:
        yield server


@contextmanager
def orthanc(workdir: Path, certs: Tls | None, destination: Server) -> Iterator[Server]:
    port = free_port()
    config = orthanc_config(workdir, port, free_port())
    modality: dict[str, object] = {
        "AET": destination.ae_title,
        "Host": "127.0.0.1",
        "Port": destination.port,
    }
    if certs is not None:
        cert, key = certs.certs["orthanc"]
        config.update(
            DicomTlsEnabled=True,
            DicomTlsCertificate=str(cert),
            DicomTlsPrivateKey=str(key),
            DicomTlsTrustedCertificates=str(certs.ca),
            DicomTlsRemoteCertificateRequired=True,
        )
        modality["UseDicomTls"] = True
    config["DicomModalities"] = {"dest": modality}
    config["DicomAlwaysAllowMove"] = True  # the mover is not a declared modality
    config["DicomAssociationCloseDelay"] = 0
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    name = "orthanc-tls" if certs is not None else "orthanc"
    with _running(name, "ORTHANC", port, [ORTHANC, str(path)], workdir, None) as server:
        yield server


def _associate(ae: AE, server: Server, context: ssl.SSLContext | None) -> Association:
    tls_args = (context, "127.0.0.1") if context is not None else None
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        raise SystemExit(f"no association with {server.name}")
    return assoc


def store_all(server: Server, files: list[Path], context: ssl.SSLContext | None) -> None:
    ae = AE(ae_title="MODALITY")
    ae.requested_contexts = StoragePresentationContexts[:100]
    assoc = _associate(ae, server, context)
    try:
        for path in files:
            status = assoc.send_c_store(dcmread(path))
            if int(status.Status) != 0:
                raise SystemExit(f"{server.name} refused {path.name}: 0x{int(status.Status):04X}")
    finally:
        assoc.release()


@dataclass(frozen=True)
class MoveRun:
    seconds: float
    first_s: float
    completed: int
    status: int


def move(
    server: Server, destination: str, study_uid: str, context: ssl.SSLContext | None
) -> MoveRun:
    ae = AE(ae_title="MOVER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = _associate(ae, server, context)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    first = None
    final = -1
    completed = 0
    try:
        started = time.perf_counter()
        for status, _ in assoc.send_c_move(
            identifier, destination, StudyRootQueryRetrieveInformationModelMove
        ):
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                completed += 1
                first = first if first is not None else time.perf_counter()
            else:
                final = code
        seconds = time.perf_counter() - started
    finally:
        assoc.release()
    return MoveRun(seconds, (first or time.perf_counter()) - started, completed, final)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=int, default=200, help="instances of 512x512 16-bit")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    opts = parser.parse_args()
    terminate_on_sigterm()
    install_nodelay_for_outgoing()
    install_race_free_loop()
    console = Console(stderr=True)
    dataset: DataSet = ingest_set("ct", opts.ct)
    files = sorted(p for part in dataset.parts for p in part.rglob("*") if p.is_file())
    study_uid = dataset.studies[0].study_uid
    machine = describe()
    results: dict[str, list[MoveRun]] = {}
    with exclusive_run("move_tls"), tempfile.TemporaryDirectory(prefix="move-tls-") as tmp:
        work = Path(tmp)
        certs = make_tls(work, ["storescp", "node", "orthanc", "mover"])
        mover = client_context(certs, "mover")
        with ExitStack() as stack:
            for name in ("plain-scp", "tls-scp", "node", "node-tls", "orthanc", "orthanc-tls"):
                (work / name).mkdir()
            plain = stack.enter_context(store_scp(work / "plain-scp", "PLAINSCP", None))
            secure = stack.enter_context(store_scp(work / "tls-scp", "TLSSCP", certs))
            gp = stack.enter_context(node(work / "node", None, plain))
            gp_tls = stack.enter_context(node(work / "node-tls", certs, secure))
            orth = stack.enter_context(orthanc(work / "orthanc", None, plain))
            orth_tls = stack.enter_context(orthanc(work / "orthanc-tls", certs, secure))
            servers = ((gp, None), (gp_tls, mover), (orth, None), (orth_tls, mover))
            for server, context in servers:
                store_all(server, files, context)
            sides = {  # server, the mover's TLS, where the files land
                "gridpacs plain": (gp, None, plain),
                "gridpacs tls": (gp_tls, mover, secure),
                "orthanc plain": (orth, None, plain),
                "orthanc tls": (orth_tls, mover, secure),
            }
            order = list(sides)
            for round_no in range(opts.repeat):
                shift = round_no % len(order)
                for name in order[shift:] + order[:shift]:
                    server, context, scp = sides[name]
                    received = scp.workdir / "received"
                    for path in received.iterdir():
                        path.unlink()
                    run = move(server, scp.ae_title, study_uid, context)
                    got = sum(1 for _ in received.iterdir())
                    console.print(
                        f"round {round_no + 1} {name}: {got}/{dataset.instances} in "
                        f"{run.seconds:.2f} s (status 0x{run.status:04X})"
                    )
                    if run.status != 0 or got != dataset.instances:
                        raise SystemExit(f"{name}: {got} of {dataset.instances} received")
                    results.setdefault(name, []).append(run)
    megabytes = dataset.total_bytes / 1e6
    med = {name: statistics.median(r.seconds for r in runs) for name, runs in results.items()}
    report = Report(
        title=f"C-MOVE of one {dataset.instances}-instance CT study ({megabytes:.0f} MB) to "
        f"DCMTK storescp, plain vs DICOM TLS, medians of {opts.repeat} interleaved rounds",
        columns=[
            "server",
            "to storescp",
            "s",
            "instances/s",
            "MB/s",
            "first sub-op ms",
            "TLS / plain",
            "gridpacs vs orthanc",
        ],
        caption=f"{machine['cpu']}, {machine['nproc']} cores, load {machine['loadavg']}, "
        f"{machine['date']}; TLS: EC P-256 certificates, both ends authenticated",
    )
    for name, runs in results.items():
        server, mode = name.split()
        secs = med[name]
        first = statistics.median(r.first_s for r in runs)
        tls_cost = f"{med[f'{server} tls'] / med[f'{server} plain']:.2f}x" if mode == "tls" else ""
        versus = f"{med[f'orthanc {mode}'] / secs:.2f}x" if server == "gridpacs" else ""
        report.add_row(
            server,
            mode,
            f"{secs:.3f}",
            f"{dataset.instances / secs:.0f}",
            f"{megabytes / secs:.1f}",
            f"{first * 1000:.0f}",
            tls_cost,
            versus,
        )
    show(report, opts.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
