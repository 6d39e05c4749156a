"""Destinations reached over DICOM TLS: what the configuration refuses, and the contexts
the node builds at start (the associations themselves: tests/integration/
test_dicom_client_tls.py)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from catalog.security import pki
from node.app import NodeApp
from node.config import load_config
from node.dicom.client_tls import destination_tls
from node.errors import ConfigError


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> pki.CertFiles:
    root = tmp_path_factory.mktemp("pki")
    pki.init_ca(root / "ca", "hospital CA")
    return pki.issue(root / "ca", root / "node", "node", dns_names=["localhost"])


def _config(tmp_path: Path, destinations: dict[str, object], **dicom: object) -> dict[str, object]:
    return {
        "data_dir": str(tmp_path / "node"),
        "dicom": {"port": 0, "destinations": destinations, **dicom},
    }


def test_tls_settings_without_tls_are_refused(tmp_path: Path) -> None:
    ws = {"host": "ws.example", "port": 2762, "server_name": "ws.example"}
    with pytest.raises(ConfigError, match="set tls = true"):
        load_config(None, _config(tmp_path, {"WS": ws}))


def test_a_tls_destination_needs_a_ca_to_check_it_against(tmp_path: Path) -> None:
    ws = {"host": "ws.example", "port": 2762, "tls": True}
    with pytest.raises(ConfigError, match="destination WS uses TLS but no CA"):
        load_config(None, _config(tmp_path, {"WS": ws}))


def test_an_unreadable_ca_stops_the_node_before_it_touches_its_data(
    tmp_path: Path, files: pki.CertFiles
) -> None:
    missing = tmp_path / "no-such-ca.crt"
    ws = {"host": "ws.example", "port": 2762, "tls": True, "ca_file": str(missing)}
    config = load_config(None, _config(tmp_path, {"WS": ws}))
    with pytest.raises(
        ConfigError, match=r"\[dicom.destinations.WS\] TLS: cannot use .*no-such-ca"
    ):
        NodeApp(config)
    assert not (tmp_path / "node").exists()

    not_a_ca = tmp_path / "garbage.crt"
    not_a_ca.write_text("not a certificate\n")
    ws["ca_file"] = str(not_a_ca)
    with pytest.raises(ConfigError, match=r"garbage\.crt"):
        NodeApp(load_config(None, _config(tmp_path, {"WS": ws})))


def test_contexts_check_names_speak_tls12_and_trust_only_the_configured_ca(
    tmp_path: Path, files: pki.CertFiles
) -> None:
    dicom_tls = {
        "cert_file": str(files.cert),
        "key_file": str(files.key),
        "ca_file": str(files.ca_cert),
    }
    destinations = {
        "WS1": {"host": "10.0.0.5", "port": 2762, "tls": True, "server_name": "ws1.example"},
        "WS2": {"host": "ws2.example", "port": 2762, "tls": True},
        "PLAIN": {"host": "ws3.example", "port": 104},
    }
    config = load_config(None, _config(tmp_path, destinations, tls=dicom_tls))
    found = destination_tls(config.dicom.destinations, config.dicom.tls)

    assert set(found) == {"WS1", "WS2"}
    assert found["WS1"][1] == "ws1.example" and found["WS2"][1] == "ws2.example"
    context = found["WS1"][0]
    assert context is found["WS2"][0]  # one CA, one context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    (trusted,) = context.get_ca_certs()  # only the hospital's CA, not the system's
    assert (("commonName", "hospital CA CA"),) in trusted["subject"]
