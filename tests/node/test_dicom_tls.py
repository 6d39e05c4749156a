"""DICOM TLS on the node (PS3.15 Annex B): certificates from the grid's own PKI."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from catalog.security import pki
from node.app import NodeApp
from node.config import load_config
from node.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pki.CertFiles]:
    root = tmp_path_factory.mktemp("pki")
    pki.init_ca(root / "ca", "test grid CA")
    return {
        name: pki.issue(
            root / "ca", root / name, name, dns_names=["localhost"], ip_addresses=["127.0.0.1"]
        )
        for name in ("node", "workstation", "stolen-laptop")
    }


def _tls_config(tmp_path: Path, node: pki.CertFiles, **tls: str | bool) -> dict[str, object]:
    return {
        "data_dir": str(tmp_path / "node"),
        "dicom": {
            "port": 0,
            "tls": {"cert_file": str(node.cert), "key_file": str(node.key),
                    "ca_file": str(node.ca_cert), "require_client_cert": True, **tls},
        },
    }  # fmt: skip


@pytest.fixture
def tls_node(tmp_path: Path, certs: dict[str, pki.CertFiles]) -> Iterator[NodeApp]:
    app = NodeApp(load_config(None, _tls_config(tmp_path, certs["node"])))
    app.start()
    yield app
    app.stop()


def _client_context(files: pki.CertFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca_cert))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


def _echo(port: int, context: ssl.SSLContext | None) -> bool:
    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(Verification)
    tls_args = (context, "localhost") if context is not None else None
    assoc = ae.associate("127.0.0.1", port, ae_title="GRIDPACS", tls_args=tls_args)
    if not assoc.is_established:
        return False
    ok = int(assoc.send_c_echo().Status) == 0
    assoc.release()
    return ok


def test_client_with_grid_certificate_is_served(
    tls_node: NodeApp, certs: dict[str, pki.CertFiles]
) -> None:
    ws = certs["workstation"]
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ws.ca_cert))
    ctx.load_cert_chain(str(ws.cert), str(ws.key))
    assert _echo(tls_node.dicom.port, ctx)


def test_plaintext_and_certificateless_clients_are_refused(
    tls_node: NodeApp, certs: dict[str, pki.CertFiles]
) -> None:
    assert not _echo(tls_node.dicom.port, None)
    no_cert = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs["node"].ca_cert))
    assert not _echo(tls_node.dicom.port, no_cert)
    # the node keeps serving properly authenticated peers afterwards
    ws = certs["workstation"]
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ws.ca_cert))
    ctx.load_cert_chain(str(ws.cert), str(ws.key))
    assert _echo(tls_node.dicom.port, ctx)


def test_a_revoked_client_certificate_fails_the_handshake(
    tmp_path: Path, certs: dict[str, pki.CertFiles]
) -> None:
    ca_dir = certs["node"].ca_cert.parent.parent / "ca"
    pki.revoke(ca_dir, certs["stolen-laptop"].cert, reason="key-compromise")
    crl = tmp_path / "crl.pem"
    crl.write_bytes((ca_dir / pki.CRL_FILE).read_bytes())
    app = NodeApp(load_config(None, _tls_config(tmp_path, certs["node"], crl_file=str(crl))))
    app.start()
    try:
        assert not _echo(app.dicom.port, _client_context(certs["stolen-laptop"]))
        assert _echo(app.dicom.port, _client_context(certs["workstation"]))
    finally:
        app.stop()


def test_a_revocation_list_needs_the_ca_that_signed_it(
    tmp_path: Path, certs: dict[str, pki.CertFiles]
) -> None:
    pki.init_ca(tmp_path / "other", "test grid CA")
    pki.issue_crl(tmp_path / "other")
    foreign = str(tmp_path / "other" / pki.CRL_FILE)
    with pytest.raises(ConfigError, match="crl_file needs ca_file"):
        load_config(None, _tls_config(tmp_path, certs["node"], crl_file=foreign, ca_file=None))  # type: ignore[arg-type]
    app = NodeApp(load_config(None, _tls_config(tmp_path, certs["node"], crl_file=foreign)))
    with pytest.raises(ConfigError, match="not signed by this grid's CA"):
        app.start()
    app.stop()


def test_a_tls_port_beside_the_plain_one_serves_each_as_configured(
    tmp_path: Path, certs: dict[str, pki.CertFiles]
) -> None:
    """Modalities without TLS on ``[dicom] port``, workstations over TLS on ``[dicom.tls]
    port`` (2762 in production): one node, both listeners, the same services."""
    app = NodeApp(load_config(None, _tls_config(tmp_path, certs["node"], port=0)))  # type: ignore[arg-type]
    app.start()
    try:
        plain, secure = app.dicom.port, app.dicom.tls_port
        assert secure is not None and secure != plain
        workstation = _client_context(certs["workstation"])
        assert _echo(plain, None)  # the modalities' port speaks plain DICOM
        assert not _echo(plain, workstation)  # … and only that
        assert _echo(secure, workstation)
        assert not _echo(secure, None)  # the TLS port never in clear
        no_cert = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(certs["node"].ca_cert)
        )
        assert not _echo(secure, no_cert)  # require_client_cert holds there
    finally:
        app.stop()
    assert app.dicom.tls_port is None


def test_without_a_tls_port_the_one_listener_is_tls_only(tls_node: NodeApp) -> None:
    assert tls_node.dicom.tls_port is None
    assert not _echo(tls_node.dicom.port, None)
