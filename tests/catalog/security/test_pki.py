"""The grid CA: keys, certificates, SANs, usages, lifetimes, refusal to overwrite."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from catalog.security import pki
from catalog.security.errors import FileExistsRefused, PkiError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_ca_writes_private_key_0600_and_a_ten_year_self_signed_ca(tmp_path: Path) -> None:
    files = pki.init_ca(tmp_path / "ca", "lungs")
    assert _mode(files.key) == 0o600
    cert = _load(files.cert)
    assert cert.subject == cert.issuer
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=3649) < life < dt.timedelta(days=3651)
    assert pki.issued_by(cert, cert)
    info = pki.inspect(files.cert)
    assert info.is_ca and info.common_name == "lungs CA"


def test_init_ca_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = pki.init_ca(tmp_path, "g")
    before = first.cert.read_bytes()
    with pytest.raises(FileExistsRefused, match="--force"):
        pki.init_ca(tmp_path, "g")
    assert first.cert.read_bytes() == before
    pki.init_ca(tmp_path, "g", force=True)
    assert first.cert.read_bytes() != before


def test_issue_signs_a_host_cert_with_sans_both_usages_and_ou_host(tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "ca", "g")
    files = pki.issue(
        tmp_path / "ca",
        tmp_path / "out",
        "catalog1",
        dns_names=["localhost", "catalog1.example.org"],
        ip_addresses=["127.0.0.1"],
    )
    assert _mode(files.key) == 0o600
    assert files.ca_cert.read_bytes() == (tmp_path / "ca" / "ca.crt").read_bytes()
    info = pki.inspect(files.cert)
    assert info.common_name == "catalog1" and info.organizational_unit == pki.UNIT_HOST
    assert info.dns_names == ("catalog1", "localhost", "catalog1.example.org")
    assert info.ip_addresses == ("127.0.0.1",)
    assert info.extended_key_usage == ("serverAuth", "clientAuth")
    assert not info.is_ca
    assert 364 <= info.days_left <= 365
    assert pki.issued_by(_load(files.cert), _load(files.ca_cert))


def test_a_client_only_certificate_is_a_user_certificate(tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "ca", "g")
    files = pki.issue(tmp_path / "ca", tmp_path / "out", "alice", roles=("client",))
    info = pki.inspect(files.cert)
    assert info.organizational_unit == pki.UNIT_USER
    assert info.extended_key_usage == ("clientAuth",)


def test_an_ip_host_name_becomes_an_ip_san_and_rsa_works(tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "ca", "g", key_type="rsa")
    files = pki.issue(tmp_path / "ca", tmp_path / "o", "127.0.0.1", key_type="rsa")
    info = pki.inspect(files.cert)
    assert info.ip_addresses == ("127.0.0.1",) and info.dns_names == ()
    assert isinstance(_load(files.cert).public_key(), rsa.RSAPublicKey)


def test_issue_refuses_to_overwrite_and_force_replaces(tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "ca", "g")
    first = pki.issue(tmp_path / "ca", tmp_path / "o", "n1")
    key_before = first.key.read_bytes()
    with pytest.raises(FileExistsRefused):
        pki.issue(tmp_path / "ca", tmp_path / "o", "n1")
    assert first.key.read_bytes() == key_before
    pki.issue(tmp_path / "ca", tmp_path / "o", "n1", force=True)
    assert first.key.read_bytes() != key_before


def test_issue_refuses_a_different_ca_cert_in_the_output_directory(tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "ca1", "g")
    pki.init_ca(tmp_path / "ca2", "g")
    pki.issue(tmp_path / "ca1", tmp_path / "o", "n1")
    with pytest.raises(FileExistsRefused, match=r"ca\.crt"):
        pki.issue(tmp_path / "ca2", tmp_path / "o", "n2")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"valid_days": 731}, "between 1 and 730"),
        ({"valid_days": 0}, "between 1 and 730"),
        ({"roles": ()}, "roles"),
        ({"roles": ("signing",)}, "roles"),
        ({"ip_addresses": ["300.1.1.1"]}, "invalid IP"),
        ({"dns_names": ["bad name"]}, "invalid DNS"),
    ],
)
def test_issue_rejects_bad_parameters(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    pki.init_ca(tmp_path / "ca", "g")
    with pytest.raises(PkiError, match=message):
        pki.issue(tmp_path / "ca", tmp_path / "o", "n1", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "o" / "n1.key").exists()


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "", "-x", "a..b"])
def test_issue_rejects_host_names_that_are_not_host_names(tmp_path: Path, name: str) -> None:
    pki.init_ca(tmp_path / "ca", "g")
    with pytest.raises(PkiError, match="invalid host name"):
        pki.issue(tmp_path / "ca", tmp_path / "o", name)


def test_a_leaf_may_not_outlive_its_ca(tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "ca", "g", valid_days=30)
    with pytest.raises(PkiError, match="outlive the CA"):
        pki.issue(tmp_path / "ca", tmp_path / "o", "n1", valid_days=60)


def test_missing_ca_and_mismatched_ca_key_are_reported(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="CA certificate not found"):
        pki.issue(tmp_path / "nowhere", tmp_path / "o", "n1")
    pki.init_ca(tmp_path / "a", "g")
    pki.init_ca(tmp_path / "b", "g")
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    with pytest.raises(PkiError, match="does not match"):
        pki.issue(tmp_path / "a", tmp_path / "o", "n1")


def test_inspect_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "x.crt"
    bad.write_text("not a certificate")
    with pytest.raises(PkiError, match="not a PEM certificate"):
        pki.inspect(bad)


def test_issued_by_is_false_for_another_ca(tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "a", "g")
    pki.init_ca(tmp_path / "b", "g")
    leaf = pki.issue(tmp_path / "a", tmp_path / "o", "n1")
    assert not pki.issued_by(_load(leaf.cert), _load(tmp_path / "b" / "ca.crt"))
