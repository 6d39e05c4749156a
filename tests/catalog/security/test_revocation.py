"""Certificate revocation: the CA's signed list, and gRPC servers refusing what it names.

The servers are real mTLS ``grpc.server``s on 127.0.0.1 (see ``conftest.py``); the list is
re-read from its file while they run, as it is when Ansible copies a new one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from catalog.security import pki
from catalog.security.errors import PkiError, TlsConfigError
from catalog.security.revocation import RevocationList, check_crl_file
from catalog.server.interceptors import RevocationInterceptor
from tests.catalog.security.conftest import PULL, Grid, call, call_stream
from tests.catalog.security.test_cli import run


class Clock:
    """A monotonic clock the test moves, so re-reading the file needs no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    """A fresh CA of its own: revoking writes the CA's crl.pem."""
    pki.init_ca(tmp_path / "ca", "revgrid")
    return tmp_path / "ca"


def _serial(files: pki.CertFiles) -> int:
    return int(x509.load_pem_x509_certificate(files.cert.read_bytes()).serial_number)


def test_revoke_adds_the_certificate_to_a_list_the_ca_signs(ca: Path, tmp_path: Path) -> None:
    node = pki.issue(ca, tmp_path / "node", "node1")
    other = pki.issue(ca, tmp_path / "other", "node2")
    done = pki.revoke(ca, node.cert, reason="key-compromise")
    entry, info = done.entry, done.crl
    assert (
        done.added
        and entry.serial == format(_serial(node), "x")
        and entry.reason == "key-compromise"
    )
    assert info.number == 1 and [e.serial for e in info.revoked] == [entry.serial]
    assert dt.timedelta(days=179) < info.next_update - info.last_update < dt.timedelta(days=181)
    ca_cert = x509.load_pem_x509_certificate((ca / pki.CA_CERT_FILE).read_bytes())
    crl = x509.load_pem_x509_crl((ca / pki.CRL_FILE).read_bytes())
    assert crl.is_signature_valid(ca_cert.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(_serial(node)) is not None
    assert crl.get_revoked_certificate_by_serial_number(_serial(other)) is None

    # again: nothing added and the file untouched (provisioning runs it on every converge)
    signed = (ca / pki.CRL_FILE).read_bytes()
    again = pki.revoke(ca, node.cert)
    assert not again.added and again.entry == entry and again.crl.number == 1
    assert (ca / pki.CRL_FILE).read_bytes() == signed
    # by serial (the certificate's file may be gone)
    info = pki.revoke(ca, format(_serial(other), "x"), reason="superseded").crl
    assert {e.serial for e in info.revoked} == {entry.serial, format(_serial(other), "x")}
    assert info.number == 2
    assert pki.issue_crl(ca, renew_within_days=30) == (False, info)  # 180 days left
    renewed, fresh = pki.issue_crl(ca, valid_days=7)
    assert renewed and fresh.revoked == info.revoked and fresh.number == 3  # same entries
    assert fresh.next_update - fresh.last_update < dt.timedelta(days=7, minutes=6)
    renewed, fresh = pki.issue_crl(ca, renew_within_days=30)  # 7 days left: re-signed
    assert renewed and fresh.number == 4 and fresh.revoked == info.revoked


def test_revoke_refuses_what_it_cannot_name(ca: Path, tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "other-ca", "revgrid")  # same name, another key
    stranger = pki.issue(tmp_path / "other-ca", tmp_path / "stranger", "node1")
    with pytest.raises(PkiError, match="not issued by this CA"):
        pki.revoke(ca, stranger.cert)
    with pytest.raises(PkiError, match="neither a certificate file nor a serial"):
        pki.revoke(ca, tmp_path / "missing.crt")
    node = pki.issue(ca, tmp_path / "node", "node1")
    with pytest.raises(PkiError, match="reason must be one of"):
        pki.revoke(ca, node.cert, reason="because")
    assert not (ca / pki.CRL_FILE).exists()  # nothing was written by any of those
    serial = f"{_serial(node):x}"
    colons = ":".join(serial[i : i + 2] for i in range(0, len(serial), 2))
    done = pki.revoke(ca, colons.upper())
    assert done.added and [e.serial for e in done.crl.revoked] == [serial]


def test_a_list_not_signed_by_the_grid_ca_is_refused(ca: Path, tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "other-ca", "revgrid")
    pki.issue_crl(tmp_path / "other-ca")
    foreign = tmp_path / "other-ca" / pki.CRL_FILE
    with pytest.raises(TlsConfigError, match="not signed by this grid's CA"):
        RevocationList(foreign, ca / pki.CA_CERT_FILE)
    with pytest.raises(TlsConfigError, match="not signed by this grid's CA"):
        check_crl_file(foreign, ca / pki.CA_CERT_FILE)
    with pytest.raises(TlsConfigError, match="No such file"):
        RevocationList(ca / pki.CRL_FILE, ca / pki.CA_CERT_FILE)  # none issued yet
    shutil.copy(foreign, ca / pki.CRL_FILE)  # and the CA's own directory cannot be fooled
    with pytest.raises(PkiError, match="not signed by this grid's CA"):
        pki.revoke(ca, "ab")


def test_the_list_is_reread_when_replaced_and_a_bad_replacement_is_ignored(
    ca: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = pki.issue(ca, tmp_path / "node", "node1")
    other = pki.issue(ca, tmp_path / "other", "node2")
    pki.issue_crl(ca)
    served = tmp_path / "served-crl.pem"  # the copy a server reads, as Ansible places it
    shutil.copy(ca / pki.CRL_FILE, served)
    clock = Clock()
    revocations = RevocationList(served, ca / pki.CA_CERT_FILE, clock=clock)
    pems = {name: f.cert.read_bytes() for name, f in (("node", node), ("other", other))}
    assert not revocations.is_revoked(pems["node"])

    pki.revoke(ca, node.cert)
    shutil.copy(ca / pki.CRL_FILE, served)
    assert not revocations.is_revoked(pems["node"])  # looked at most once a second
    clock.now += 1.5
    assert revocations.is_revoked(pems["node"]) and not revocations.is_revoked(pems["other"])

    caplog.set_level(logging.INFO, logger="gridpacs.security")
    served.write_bytes(b"-----BEGIN X509 CRL-----\ntruncated")  # a half-copied file
    clock.now += 1.5
    assert revocations.is_revoked(pems["node"])  # the list in force stays
    assert "event=crl_reload_failed" in caplog.text and "kept_revoked=1" in caplog.text


def test_a_stale_list_is_still_enforced_and_warned_about(
    ca: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = pki.issue(ca, tmp_path / "node", "node1")
    ca_cert = x509.load_pem_x509_certificate((ca / pki.CA_CERT_FILE).read_bytes())
    ca_key = serialization.load_pem_private_key((ca / pki.CA_KEY_FILE).read_bytes(), None)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    revoked = (x509.RevokedCertificateBuilder().serial_number(_serial(node))
               .revocation_date(past).build())  # fmt: skip
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
           .last_update(past).next_update(past + dt.timedelta(days=1))
           .add_revoked_certificate(revoked)
           .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]  # fmt: skip
    stale = tmp_path / "stale.pem"
    stale.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    caplog.set_level(logging.WARNING, logger="gridpacs.security")
    revocations = RevocationList(stale, ca / pki.CA_CERT_FILE)
    assert revocations.is_revoked(node.cert.read_bytes())
    assert "event=crl_stale" in caplog.text and "gridpacs pki crl" in caplog.text


@pytest.fixture(scope="module")
def revoked_grid(grid: Grid) -> Path:
    """The conftest grid's node certificate revoked; its researcher's not."""
    pki.revoke(grid.ca.parent, grid.node.cert, reason="cessation-of-operation")
    return grid.ca.parent / pki.CRL_FILE


def test_a_server_refuses_every_call_of_a_revoked_certificate(
    grid: Grid,
    revoked_grid: Path,
    start_server,  # type: ignore[no-untyped-def]
    channel_for,  # type: ignore[no-untyped-def]
    caplog: pytest.LogCaptureFixture,
) -> None:
    interceptor = RevocationInterceptor(RevocationList(revoked_grid, grid.ca))
    server = start_server(interceptors=[interceptor])
    caplog.set_level(logging.WARNING, logger="gridpacs.security")
    revoked = channel_for(server.address, grid.node)
    for invoke in (lambda: call(revoked, "/grpc.health.v1.Health/Check", b""),
                   lambda: call_stream(revoked, PULL)):  # fmt: skip
        with pytest.raises(grpc.RpcError) as refused:
            invoke()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in (refused.value.details() or "")
    assert server.seen.principals == []  # the servicer never ran for it
    assert "event=auth_rejected" in caplog.text and "reason=revoked_certificate" in caplog.text
    # a certificate not on the list is served (the interceptor leaves authentication to the
    # AuthInterceptor; here there is none)
    assert call_stream(channel_for(server.address, grid.researcher), PULL) == [b"x0", b"x1", b"x2"]
    assert call(channel_for(server.address, grid.server), "/grpc.health.v1.Health/Check", b"")


def test_pki_revoke_and_crl_commands(tmp_path: Path) -> None:
    run("pki", "init-ca", "--dir", tmp_path / "ca")
    run("pki", "issue", "--ca", tmp_path / "ca", "--out", tmp_path / "n", "--name", "node7")
    listed = json.loads(run("pki", "crl", "--ca", tmp_path / "ca", "--json").stdout)
    assert listed["revoked"] == [] and listed["number"] == 1 and listed["renewed"]
    cert = tmp_path / "n" / "node7.crt"
    revoke = ("pki", "revoke", "--ca", tmp_path / "ca", cert, "--reason", "key-compromise")
    out = run(*revoke).stdout
    serial = json.loads(run("pki", "show", cert, "--json").stdout)["serial"]
    assert f"revoked {serial} (key-compromise)" in out and "1 revoked" in out
    assert f"already revoked {serial}" in run(*revoke).stdout
    assert not json.loads(run(*revoke, "--json").stdout)["revoked"]["added"]
    kept = run("pki", "crl", "--ca", tmp_path / "ca", "--renew-within", "30").stdout
    assert "unchanged" in kept and serial in kept
    renewed = json.loads(
        run("pki", "crl", "--ca", tmp_path / "ca", "--days", "30", "--json").stdout
    )
    assert [e["serial"] for e in renewed["revoked"]] == [serial] and renewed["number"] == 3
    refused = run("pki", "revoke", "--ca", tmp_path / "ca", "not-hex!", code=2)
    assert "neither a certificate file nor a serial" in refused.stderr
