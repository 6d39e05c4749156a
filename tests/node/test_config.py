"""Node configuration: defaults, TOML, overrides and the errors an admin sees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from node.app import NodeApp
from node.config import load_config
from node.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_an_embedded_node() -> None:
    cfg = load_config()
    assert cfg.dicom.ae_title == "GRIDPACS"
    assert cfg.dicom.port == 11112
    assert cfg.index_url.startswith("sqlite:///") and cfg.index_url.endswith("var/index.sqlite")


def test_toml_relative_data_dir_is_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        'name = "site-a"\ndata_dir = "data"\n[dicom]\nae_title = "SITEA"\nport = 4242\n'
        '[dicom.destinations]\nWS1 = { host = "10.0.0.5", port = 104 }\n'
    )
    cfg = load_config(path, {"dicom": {"port": 5000}})
    assert cfg.data_dir == tmp_path / "data"
    assert cfg.dicom.port == 5000  # the CLI override wins
    assert cfg.dicom.destinations["WS1"].port == 104


def test_every_error_is_reported_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[dicom]\nae_title = "THIS IS FAR TOO LONG"\nport = 70000\nbogus = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "dicom.ae_title" in text and "dicom.port" in text and "dicom.bogus" in text


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[dicom]\nae_title = "OK"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text("[dicom\n")
    run = [sys.executable, "-m", "gridpacs", "node", "check-config"]
    ok = subprocess.run([*run, str(good)], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    ko = subprocess.run([*run, str(bad)], cwd=REPO, capture_output=True, text=True)
    assert ko.returncode == 2
    assert "not valid TOML" in ko.stderr


@pytest.mark.parametrize("threshold", [None, 0, 1024])
def test_storage_pack_threshold_reaches_the_blob_store(
    tmp_path: Path, threshold: int | None
) -> None:
    storage = {} if threshold is None else {"pack_threshold": threshold}
    cfg = load_config(None, {"data_dir": str(tmp_path / "n"), "storage": storage})
    assert cfg.storage.pack_threshold == (64 * 1024 if threshold is None else threshold)
    app = NodeApp(cfg)
    small = app.store.put(b"a small instance" * 60)  # 960 bytes
    large = app.store.put(b"x" * 2000)
    blobs = cfg.blob_dir
    packed = {k for k in (small.key, large.key) if not (blobs / k[:2] / k[2:4] / k).exists()}
    expected = {None: {small.key, large.key}, 0: set(), 1024: {small.key}}[threshold]
    assert packed == expected
    assert app.store.get(small.key) == b"a small instance" * 60


def test_storage_pack_threshold_is_bounded() -> None:
    with pytest.raises(ConfigError, match=r"storage\.pack_threshold"):
        load_config(None, {"storage": {"pack_threshold": -1}})


@pytest.mark.parametrize(
    ("catalog", "message"),
    [
        (None, "copies > 1 needs a \\[catalog\\]"),
        ({"addresses": ["127.0.0.1:1"], "insecure": True}, "publish_identified = true"),
    ],
)
def test_commitment_copies_at_other_sites_need_the_grid_and_published_originals(
    catalog: dict[str, object] | None, message: str
) -> None:
    overrides: dict[str, object] = {"dicom": {"commitment": {"copies": 2}}}
    if catalog is not None:
        overrides["catalog"] = catalog
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
    published = {"addresses": ["127.0.0.1:1"], "insecure": True, "publish_identified": True}
    config = load_config(None, {**overrides, "catalog": published})
    assert config.dicom.commitment.copies == 2


@pytest.mark.parametrize(
    ("audit", "message"),
    [
        ({"enabled": False, "export": {"url": "udp://arr:514", "insecure": True}},
         "needs the audit trail"),
        ({"export": {"url": "tls://arr:6514"}}, r"audit\.export.*needs ca_file"),
        ({"export": {"url": "syslog://arr"}}, "scheme must be tls, tcp or udp"),
        ({"export": {"url": "tcp://arr", "ca_file": "/ca.pem"}}, "need tls://"),
        ({"export": {"url": "tcp://arr"}}, "in clear; use tls://, or set insecure = true"),
    ],
)
def test_audit_export_mistakes_stop_the_node_at_start(audit: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"audit": audit})


def test_an_unreadable_repository_ca_stops_the_node_naming_the_file(tmp_path: Path) -> None:
    config = load_config(None, {"data_dir": str(tmp_path), "audit": {"export": {
        "url": "tls://arr:6514", "ca_file": str(tmp_path / "missing-ca.pem")}}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"\[audit\.export\].*missing-ca\.pem"):
        NodeApp(config)
