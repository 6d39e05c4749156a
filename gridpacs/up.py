"""``gridpacs up``: a whole grid on one machine — one catalog replica and two nodes.

For a new user's first five minutes: it makes a grid CA and certificates (mTLS between
the nodes and the catalog, as in production), writes one TOML file per process, starts
each process through the same CLI an admin runs, and prints who listens where.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from catalog.security import pki

HOST = "127.0.0.1"
EXAMPLE_STREAMS = Path(__file__).resolve().parents[1] / "docs" / "examples" / "streams"
"""The example processing stream (invert), served by the demo nodes in a source checkout."""


@dataclass(frozen=True)
class Site:
    name: str
    ae_title: str
    port: int


@dataclass
class Child:
    label: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None


def _certificates(pki_dir: Path, names: list[str]) -> None:
    ca_dir = pki_dir / "ca"
    if not (ca_dir / "ca.crt").exists():
        pki.init_ca(ca_dir, "gridpacs local grid CA")
    for name in names:
        if not (pki_dir / name / f"{name}.crt").exists():
            pki.issue(ca_dir, pki_dir / name, name, dns_names=["localhost"], ip_addresses=[HOST])


def _cert_paths(pki_dir: Path, name: str) -> tuple[Path, Path, Path]:
    found = sorted((pki_dir / name).glob("*.crt"))
    cert = next(p for p in found if p.stem == name)
    key = pki_dir / name / f"{name}.key"
    ca = pki_dir / "ca" / "ca.crt"
    return cert, key, ca


def metrics_port(port: int) -> int:
    """Where a process of this grid serves Prometheus metrics: 20 above its main port."""
    return port + 20


def _metrics(port: int) -> list[str]:
    return ["[metrics]", "enabled = true", f'host = "{HOST}"', f"port = {metrics_port(port)}"]


def _catalog_toml(root: Path, port: int, tls: bool) -> Path:
    path = root / "catalog-1.toml"
    lines = [
        'name = "catalog-1"',
        f'listen_host = "{HOST}"',
        f"port = {port}",
        f'db_url = "sqlite:///{root / "catalog-1.sqlite"}"',
        *_metrics(port),
    ]
    if tls:
        cert, key, ca = _cert_paths(root / "pki", "catalog-1")
        lines += ["[tls]", f'cert = "{cert}"', f'key = "{key}"', f'ca = "{ca}"']
        pepper, grant_key, _ = _research_secrets(root / "pki")
        lines += ["[security]", f'pepper_file = "{pepper}"', f'grant_key_file = "{grant_key}"']
    else:
        lines.append("insecure = true")
    path.write_text("\n".join(lines) + "\n")
    return path


def _research_secrets(pki_dir: Path) -> tuple[Path, Path, Path]:
    """The token pepper and the grant key pair, made once: with them researchers' tokens
    (``gridpacs token create``) and ``gridpacs retrieve`` work on this grid too."""
    from catalog.security.grants import write_grant_key
    from catalog.security.tokens import write_pepper

    pepper = pki_dir / "token.pepper"
    grant_dir = pki_dir / "grant"
    if not pepper.exists():
        write_pepper(pepper)
    if not (grant_dir / "grant.key").exists():
        write_grant_key(grant_dir)
    return pepper, grant_dir / "grant.key", grant_dir / "grant.pub"


def _node_toml(root: Path, site: Site, sites: list[Site], catalog_port: int, tls: bool) -> Path:
    path = root / f"{site.name}.toml"
    lines = [
        f'name = "{site.name}"',
        f'data_dir = "{root / site.name}"',
        *([f'streams_dir = "{EXAMPLE_STREAMS}"'] if EXAMPLE_STREAMS.is_dir() else []),
        "[dicom]",
        f'ae_title = "{site.ae_title}"',
        f'host = "{HOST}"',
        f"port = {site.port}",
        "[dicom.destinations]",
        *(
            f'{other.ae_title} = {{ host = "{HOST}", port = {other.port} }}'
            for other in sites
            if other is not site
        ),
        f'WORKSTATION = {{ host = "{HOST}", port = {workstation_port(sites)} }}',
        *_metrics(site.port),
        "[catalog]",
        f'addresses = ["{HOST}:{catalog_port}"]',
        "publish_identified = true   # one machine, one trust domain",
    ]
    if tls:
        cert, key, ca = _cert_paths(root / "pki", site.name)
        lines += [f'cert_file = "{cert}"', f'key_file = "{key}"', f'ca_file = "{ca}"']
        lines.append(f'grant_public_keys = ["{_research_secrets(root / "pki")[2]}"]')
    else:
        lines.append("insecure = true")
    path.write_text("\n".join(lines) + "\n")
    return path


def workstation_port(sites: list[Site]) -> int:
    """Where a user's own storescp is expected: ten above the first node's port."""
    return sites[0].port + 10


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _wait_ready(child: Child, marker: str | None, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    assert child.proc is not None
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            tail = child.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{child.label} exited ({child.proc.returncode}):\n{tail}")
        if marker is not None and marker in child.log.read_text(errors="replace"):
            return
        if marker is None:
            with socket.socket() as sock:
                if sock.connect_ex((HOST, port)) == 0:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"{child.label} not ready after {timeout:.0f} s; see {child.log}")


def run_grid(root: Path, base_port: int, catalog_port: int, tls: bool, console: Console) -> int:
    """Start the grid, print where everything is, and run until SIGINT/SIGTERM."""
    sites = [Site("site-a", "SITEA", base_port), Site("site-b", "SITEB", base_port + 1)]
    ports = [catalog_port, *(s.port for s in sites)]
    busy = [p for p in ports + [metrics_port(p) for p in ports] if not _port_free(p)]
    if busy:
        console.print(f"[red]error:[/red] ports already in use: {busy} (try --base-port)")
        return 1
    root.mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(exist_ok=True)
    if tls:
        _certificates(root / "pki", ["catalog-1", *(s.name for s in sites)])
    cli = [sys.executable, "-m", "gridpacs"]
    children = [
        Child(
            "catalog-1",
            [*cli, "catalog", "serve", "--config", str(_catalog_toml(root, catalog_port, tls))],
            root / "logs" / "catalog-1.log",
        )
    ]
    for site in sites:
        toml = _node_toml(root, site, sites, catalog_port, tls)
        children.append(
            Child(
                site.name,
                [*cli, "node", "serve", "--config", str(toml)],
                root / "logs" / f"{site.name}.log",
            )
        )
    try:
        with console.status("starting the grid…"):
            for child, marker, port in zip(
                children,
                [None, "event=node_ready", "event=node_ready"],
                [catalog_port, *(s.port for s in sites)],
                strict=True,
            ):
                with child.log.open("ab") as log:
                    child.proc = subprocess.Popen(
                        child.argv, stdout=log, stderr=log, env={**os.environ, "TCP_NODELAY": "1"}
                    )
                _wait_ready(child, marker, port)
        _print_table(console, root, sites, catalog_port, tls)
        return _supervise(children, console)
    except RuntimeError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    finally:
        _stop(children)


def _print_table(console: Console, root: Path, sites: list[Site], port: int, tls: bool) -> None:
    table = Table(title="gridpacs grid on this machine")
    for column in ("component", "AE title", "address", "data / logs", "metrics"):
        table.add_column(column)
    transport = "gRPC + mTLS" if tls else "gRPC (plaintext)"
    table.add_row("catalog-1", "—", f"{HOST}:{port} ({transport})", str(root / "logs"),
                  f"http://{HOST}:{metrics_port(port)}/metrics")  # fmt: skip
    for site in sites:
        table.add_row(
            site.name, site.ae_title, f"{HOST}:{site.port} (DICOM)", str(root / site.name),
            f"http://{HOST}:{metrics_port(site.port)}/metrics",
        )  # fmt: skip
        table.add_row(
            f"{site.name} grid", "GRID", f"{HOST}:{site.port} (DICOM)",
            "answers from the catalog", "",
        )  # fmt: skip
    console.print(table)
    a, b = sites
    ws = workstation_port(sites)
    console.print(
        "Try (DCMTK from /usr/bin, with TCP_NODELAY=1):\n"
        f"  storescu -aec {a.ae_title} +sd {HOST} {a.port} <study-folder>\n"
        f"  findscu -S -aec GRID -k QueryRetrieveLevel=STUDY -k PatientID -k StudyInstanceUID "
        f"-k RetrieveAETitle {HOST} {b.port}\n"
        f"  storescp -od received {ws} &   # the destination WORKSTATION\n"
        f"  movescu -S -aec GRID -aem WORKSTATION -k QueryRetrieveLevel=STUDY "
        f"-k PatientID=<id> {HOST} {b.port}\n"
        + (
            f"  storescu -aet WORKSTATION -aec INVERT +sd {HOST} {a.port} <study-folder>"
            "   # processing stream: the inverted series comes back to WORKSTATION\n"
            if EXAMPLE_STREAMS.is_dir()
            else ""
        )
        + (_researcher_hint(root, port) if tls else "")
        + "Ctrl-C stops everything."
    )


def _researcher_hint(root: Path, port: int) -> str:
    pki_dir = root / "pki"
    return (
        "Researchers (tokens and retrieve grants are on):\n"
        f"  gridpacs pki issue --ca {pki_dir / 'ca'} --out alice --name alice --client-only\n"
        f"  gridpacs token create --db-url sqlite:///{root / 'catalog-1.sqlite'} "
        f"--pepper-file {pki_dir / 'token.pepper'} --user alice --grant local=admin\n"
        f"  gridpacs retrieve --catalog {HOST}:{port} --token <token> --ca alice/ca.crt "
        "--cert alice/alice.crt --key alice/alice.key --study <StudyInstanceUID> --out fetched\n"
    )


def _supervise(children: list[Child], console: Console) -> int:
    stop = {"flag": False}

    def _on_signal(*_: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    while not stop["flag"]:
        for child in children:
            if child.proc is not None and child.proc.poll() is not None:
                console.print(
                    f"[red]{child.label} exited ({child.proc.returncode}); see {child.log}"
                )
                return 1
        time.sleep(0.3)
    return 0


def _stop(children: list[Child]) -> None:
    for child in reversed(children):
        if child.proc is not None and child.proc.poll() is None:
            child.proc.terminate()
    for child in children:
        if child.proc is not None:
            try:
                child.proc.wait(10)
            except subprocess.TimeoutExpired:
                child.proc.kill()
