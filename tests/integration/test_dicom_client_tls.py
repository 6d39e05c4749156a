"""DICOM TLS on the associations a node process opens itself: C-MOVE to a DCMTK storescp
that listens only over TLS, the Storage Commitment report to a modality's TLS listener,
and stream results (``send_files``); a workstation whose certificate the node cannot
trust, or that carries another name, or that speaks no TLS, gets nothing, the mover a
clear status, and the node a log line; the node serves everyone else meanwhile."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from catalog.security import pki
from node.dicom.client_tls import client_context
from node.dicom.scu import send_files
from tests.integration.archive import dimse_statuses, write_study
from tests.integration.processes import (
    HOST,
    Node,
    NodeFactory,
    StoreSCP,
    describe,
    free_port,
    gridpacs_cli,
    run_dcmtk,
)
from tests.integration.test_storage_commitment import MODALITY, Modality, _ask, _information

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(120)]


@dataclass(frozen=True)
class Pki:
    grid: dict[str, pki.CertFiles]
    rogue: pki.CertFiles  # a workstation certificate from a CA the node does not trust


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    pki.init_ca(root / "ca", "hospital CA")
    pki.init_ca(root / "rogue-ca", "someone else's CA")
    grid = {
        name: pki.issue(
            root / "ca", root / name, name, dns_names=["localhost"], ip_addresses=[HOST]
        )
        for name in ("node", "workstation", "modality")
    }
    rogue = pki.issue(
        root / "rogue-ca",
        root / "rogue",
        "workstation",
        dns_names=["localhost"],
        ip_addresses=[HOST],
    )
    return Pki(grid, rogue)


def _dcmtk_tls(files: pki.CertFiles, *peer: str) -> tuple[str, ...]:
    """DCMTK's options to speak TLS with ``files``'s key and certificate, trusting its CA."""
    return ("+tls", str(files.key), str(files.cert), "+cf", str(files.ca_cert), *peer)


def _storescp(directory: Path, name: str, **kwargs: object) -> StoreSCP:
    return StoreSCP(
        name=name,
        log_path=directory / f"{name}.log",
        port=free_port(),
        out_dir=directory / name,
        ae_title=name.upper(),
        **kwargs,  # type: ignore[arg-type]
    ).start()


@pytest.fixture(scope="module")
def workstations(
    tmp_path_factory: pytest.TempPathFactory, certs: Pki
) -> Iterator[dict[str, StoreSCP]]:
    """A TLS-only workstation that requires a client certificate, one that does not, one
    with a certificate of another CA, and one that speaks plain DICOM."""
    directory = tmp_path_factory.mktemp("workstations")
    ws = certs.grid["workstation"]
    probe = _dcmtk_tls(certs.grid["modality"])
    scps = {
        "strict": _storescp(directory, "strict", tls=_dcmtk_tls(ws, "-rc"), probe_tls=probe),
        "anyclient": _storescp(directory, "anyclient", tls=_dcmtk_tls(ws, "-ic"), probe_tls=probe),
        "rogue": _storescp(
            directory,
            "rogue",
            tls=_dcmtk_tls(certs.rogue, "-ic"),
            probe_tls=("+tls", str(certs.rogue.key), str(certs.rogue.cert), "-ic"),
        ),
        "plain": _storescp(directory, "plain"),
    }
    yield scps
    for scp in scps.values():
        scp.terminate()


def _toml_destination(ae: str, scp: StoreSCP, **extra: str | bool) -> str:
    lines = [f"[dicom.destinations.{ae}]", f'host = "{HOST}"', f"port = {scp.port}"]
    for key, value in extra.items():
        lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else repr(value)}")
    return "\n".join(lines) + "\n"


def _node(
    node_factory: NodeFactory, directory: Path, destinations: str, dicom_tls: str = ""
) -> Node:
    port, data_dir = free_port(), directory / "node-data"
    config = directory / "node.toml"
    config.write_text(
        f'name = "tls-node"\ndata_dir = "{data_dir}"\n'
        f'[dicom]\nae_title = "GRIDPACS"\nhost = "{HOST}"\nport = {port}\n'
        f"{dicom_tls}{destinations}"
    )
    return node_factory(config_file=config, port=port, data_dir=data_dir, ae_title="GRIDPACS")


def _store(node: Node, paths: list[Path], *tls: str) -> None:
    result = run_dcmtk(
        "storescu",
        *tls,
        "-d",
        "-aet",
        MODALITY,
        "-aec",
        node.called_ae,
        HOST,
        str(node.port),
        *map(str, paths),
    )
    assert dimse_statuses(result.stdout + result.stderr) == [0] * len(paths), describe(result)


def _move(node: Node, destination: str, study_uid: str) -> list[int]:
    result = run_dcmtk(
        "movescu",
        "-d",
        "-S",
        "-aet",
        "MOVER",
        "-aec",
        node.called_ae,
        "-aem",
        destination,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
        HOST,
        str(node.port),
    )
    statuses = dimse_statuses(result.stdout + result.stderr)
    assert statuses, describe(result)
    return statuses


def _move_over_tls(
    node: Node, destination: str, study_uid: str, context: ssl.SSLContext
) -> list[int]:
    """A C-MOVE over DICOM TLS (DCMTK 3.6.7's movescu has no TLS): the statuses."""
    ae = AE(ae_title="MOVER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(HOST, node.port, ae_title=node.called_ae, tls_args=(context, HOST))
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    try:
        return [
            int(rsp.Status)
            for rsp, _ in assoc.send_c_move(
                identifier, destination, StudyRootQueryRetrieveInformationModelMove
            )
        ]
    finally:
        assoc.release()


def _received_uids(scp: StoreSCP) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.received()}


def _uids(paths: list[Path]) -> set[str]:
    return {p.stem for p in paths}


def test_a_move_reaches_tls_only_workstations_and_refuses_untrusted_ones(
    node_factory: NodeFactory, workstations: dict[str, StoreSCP], certs: Pki, tmp_path: Path
) -> None:
    ca = str(certs.grid["node"].ca_cert)
    destinations = (
        _toml_destination("ANYCLIENT", workstations["anyclient"], tls=True, ca_file=ca)
        + _toml_destination("ROGUE", workstations["rogue"], tls=True, ca_file=ca)
        + _toml_destination("PLAIN", workstations["plain"], tls=True, ca_file=ca)
        + _toml_destination(
            "ELSEWHERE",
            workstations["anyclient"],
            tls=True,
            ca_file=ca,
            server_name="elsewhere.example",
        )
        + _toml_destination("CLEAR", workstations["plain"])
    )
    node = _node(node_factory, tmp_path, destinations)  # plain DICOM in, no certificate
    study_uid, paths = write_study(tmp_path / "study", "TLS-1", 3)
    _store(node, paths)
    for scp in workstations.values():
        scp.clear()

    assert _move(node, "ANYCLIENT", study_uid)[-1] == 0
    assert _received_uids(workstations["anyclient"]) == _uids(paths)
    received = {dcmread(p).SOPInstanceUID: dcmread(p) for p in workstations["anyclient"].received()}
    for path in paths:  # the pixels crossed intact
        assert received[path.stem].PixelData == dcmread(path).PixelData
    workstations["anyclient"].clear()

    for refused in ("ROGUE", "PLAIN", "ELSEWHERE"):
        assert _move(node, refused, study_uid) == [0xA801], refused
        node.wait_for_log(f"destination={refused}")
    log = node.log_text()
    for refused in ("ROGUE", "PLAIN", "ELSEWHERE"):
        line = next(x for x in log.splitlines() if "event=c_move" in x and refused in x)
        assert "tls=True" in line and "status=0xA801" in line, line
    assert not any(scp.received() for scp in workstations.values())
    # the node went on serving: a plain destination still gets the study
    assert _move(node, "CLEAR", study_uid)[-1] == 0
    assert _received_uids(workstations["plain"]) == _uids(paths)
    workstations["plain"].clear()


def test_a_tls_node_presents_its_certificate_to_a_workstation_that_requires_one(
    node_factory: NodeFactory, workstations: dict[str, StoreSCP], certs: Pki, tmp_path: Path
) -> None:
    own = certs.grid["node"]
    dicom_tls = (
        f'[dicom.tls]\ncert_file = "{own.cert}"\nkey_file = "{own.key}"\n'
        f'ca_file = "{own.ca_cert}"\nrequire_client_cert = true\n'
    )
    # no ca_file of its own: the node's [dicom.tls] CA checks the workstation
    destinations = _toml_destination("STRICT", workstations["strict"], tls=True)
    node = _node(node_factory, tmp_path, destinations, dicom_tls)
    client = _dcmtk_tls(certs.grid["modality"])
    study_uid, paths = write_study(tmp_path / "study", "TLS-2", count=2)
    _store(node, paths, *client)
    workstations["strict"].clear()

    mover = certs.grid["modality"]
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(mover.ca_cert))
    context.load_cert_chain(str(mover.cert), str(mover.key))
    assert _move_over_tls(node, "STRICT", study_uid, context)[-1] == 0
    assert _received_uids(workstations["strict"]) == _uids(paths)
    workstations["strict"].clear()


def test_storage_commitment_reports_go_to_a_tls_listener(
    node_factory: NodeFactory, certs: Pki, tmp_path: Path
) -> None:
    modality_files = certs.grid["modality"]
    listener = ssl.create_default_context(
        ssl.Purpose.CLIENT_AUTH, cafile=str(modality_files.ca_cert)
    )
    listener.load_cert_chain(str(modality_files.cert), str(modality_files.key))
    modality = Modality(free_port(), ssl_context=listener).listen()
    try:
        line = (
            f'[dicom.destinations.{MODALITY}]\nhost = "{HOST}"\nport = {modality.port}\n'
            f'tls = true\nca_file = "{modality_files.ca_cert}"\n'
        )
        node = _node(node_factory, tmp_path, line)
        _, paths = write_study(tmp_path / "study", "TLS-3", count=2)
        _store(node, paths)
        refs = [(str(dcmread(p).SOPClassUID), p.stem) for p in paths]
        tx = generate_uid()
        assert int(_ask(node, _information(tx, refs)).Status) == 0
        report = modality.report()
        assert report.event_type == 1 and report.information.TransactionUID == tx
        assert {
            str(i.ReferencedSOPInstanceUID) for i in report.information.ReferencedSOPSequence
        } == _uids(paths)
    finally:
        modality.close()


def test_stream_results_are_sent_over_tls(
    workstations: dict[str, StoreSCP], certs: Pki, tmp_path: Path
) -> None:
    """``send_files`` is how a job's results leave the node (``NodeApp._send_results``)."""
    _, paths = write_study(tmp_path / "results", "TLS-4", count=2)
    strict = workstations["strict"]
    strict.clear()
    node_files = certs.grid["node"]
    context = client_context(node_files.ca_cert, (node_files.cert, node_files.key))
    sent = send_files("GRIDPACS", strict.ae_title, HOST, strict.port, paths, tls=(context, HOST))
    assert sent == len(paths)
    assert _received_uids(strict) == _uids(paths)
    strict.clear()


def test_node_echo_checks_every_destination_and_says_why_one_fails(
    workstations: dict[str, StoreSCP], certs: Pki, tmp_path: Path
) -> None:
    own, ca = certs.grid["node"], str(certs.grid["node"].ca_cert)
    # a peer that knows only another AE title: it rejects the node's association
    picky = AE(ae_title="PICKY")
    picky.add_supported_context(Verification)
    picky.require_calling_aet = ["SOMEONE"]
    picky_port = free_port()
    server = picky.start_server((HOST, picky_port), block=False)
    config = tmp_path / "node.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "unused"}"\n[dicom]\nae_title = "GRIDPACS"\n'
        f'[dicom.tls]\ncert_file = "{own.cert}"\nkey_file = "{own.key}"\nca_file = "{ca}"\n'
        + _toml_destination("STRICT", workstations["strict"], tls=True)
        + _toml_destination("ROGUE", workstations["rogue"], tls=True)
        + _toml_destination(
            "ELSEWHERE", workstations["anyclient"], tls=True, server_name="elsewhere.example"
        )
        + _toml_destination("PLAIN", workstations["plain"], tls=True)
        + _toml_destination("CLEAR", workstations["plain"])
        + f'[dicom.destinations.GONE]\nhost = "{HOST}"\nport = {free_port()}\n'
        + f'[dicom.destinations.PICKY]\nhost = "{HOST}"\nport = {picky_port}\n'
    )
    try:
        result = gridpacs_cli("node", "echo", "--config", str(config), "--json", "--timeout", "5")
    finally:
        server.shutdown()
    assert result.returncode == 1, result.stderr
    rows = {row["destination"]: row for row in json.loads(result.stdout)}
    assert sorted(rows) == ["CLEAR", "ELSEWHERE", "GONE", "PICKY", "PLAIN", "ROGUE", "STRICT"]
    assert rows["PICKY"]["reason"] == (
        "PICKY rejected the association: Calling AE title not recognised"
    ), rows["PICKY"]
    assert rows["STRICT"]["ok"] and rows["STRICT"]["tls"] and rows["STRICT"]["status"] == 0
    assert rows["CLEAR"]["ok"] and not rows["CLEAR"]["tls"]
    assert "not trusted" in rows["ROGUE"]["reason"], rows["ROGUE"]
    assert "not trusted" in rows["ELSEWHERE"]["reason"], rows["ELSEWHERE"]
    assert "elsewhere.example" in rows["ELSEWHERE"]["reason"].lower(), rows["ELSEWHERE"]
    assert rows["PLAIN"]["reason"].startswith("TLS handshake failed"), rows["PLAIN"]
    assert rows["GONE"]["reason"].startswith("cannot connect"), rows["GONE"]
    assert not any(rows[n]["ok"] for n in ("ROGUE", "ELSEWHERE", "PLAIN", "GONE", "PICKY"))
    assert not any(scp.received() for scp in workstations.values())

    named = gridpacs_cli("node", "echo", "STRICT", "CLEAR", "--config", str(config))
    assert named.returncode == 0, named.stdout + named.stderr
    assert "STRICT" in named.stdout and "ok" in named.stdout and "ROGUE" not in named.stdout
    unknown = gridpacs_cli("node", "echo", "NOWHERE", "--config", str(config))
    assert unknown.returncode == 2 and "not in [dicom.destinations]: NOWHERE" in unknown.stderr
