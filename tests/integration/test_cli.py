"""The command line an admin types: help, defaults, status, logs, graceful stop."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from pynetdicom.sop_class import Verification

from storage import open_store
from tests.integration.archive import load, node_status, status_counts
from tests.integration.corpus import build_corpus
from tests.integration.processes import (
    HOST,
    NODE_AE,
    NodeFactory,
    describe,
    free_port,
    gridpacs_cli,
    run_dcmtk,
)
from tests.integration.scu import association

pytestmark = pytest.mark.timeout(120)


def test_gridpacs_help() -> None:
    result = gridpacs_cli("--help")
    assert result.returncode == 0, describe(result)
    assert "node" in result.stdout, describe(result)
    node_help = gridpacs_cli("node", "--help")
    assert node_help.returncode == 0, describe(node_help)
    assert "serve" in node_help.stdout and "status" in node_help.stdout, describe(node_help)


def test_defaults_ready_line_and_graceful_sigterm(node_factory: NodeFactory) -> None:
    node = node_factory(ae_title=None)  # no --ae-title: the default must be GRIDPACS
    ready = [line for line in node.log_text().splitlines() if "event=node_ready" in line]
    assert len(ready) == 1, ready
    assert f"ae_title={NODE_AE}" in ready[0] and f"port={node.port}" in ready[0], ready[0]
    with association(node, [Verification], called_ae=NODE_AE) as assoc:
        assert assoc.send_c_echo().Status == 0x0000

    code = node.terminate()
    assert code == 0, f"SIGTERM: exit code {code} (None = had to be killed)"
    with socket.socket() as sock, pytest.raises(OSError):
        sock.settimeout(2)
        sock.connect((HOST, node.port))


def test_status_json_counts_and_locations(node_factory: NodeFactory) -> None:
    node = node_factory()
    corpus = build_corpus("ITC")
    load(node, corpus.datasets)
    status = node_status(node.data_dir)
    assert status_counts(status) == {"patients": 2, "studies": 3, "series": 4, "instances": 9}
    assert str(node.data_dir) in json.dumps(status), f"data locations missing: {status}"

    # the default layout under --data-dir
    assert (node.data_dir / "index.sqlite").is_file()
    blobs = list(open_store(node.data_dir / "blobs", create=False).keys())  # files or packs
    assert len(blobs) >= len(corpus.datasets), f"{len(blobs)} blobs"

    text = gridpacs_cli("node", "status", "--data-dir", str(node.data_dir))
    assert text.returncode == 0, describe(text)
    assert re.search(r"\b9\b", text.stdout), f"instance count missing:\n{text.stdout}"


def test_status_after_stop_reads_the_same_data_dir(node_factory: NodeFactory) -> None:
    node = node_factory()
    corpus = build_corpus("ITE")
    load(node, corpus.in_study("C"))
    assert node.terminate() == 0
    counts = status_counts(node_status(node.data_dir))
    assert counts == {"patients": 1, "studies": 1, "series": 1, "instances": 2}


def test_structured_log_line_per_store(node_factory: NodeFactory, tmp_path: Path) -> None:
    node = node_factory()
    ds = build_corpus("ITL").in_series("C1")[0]
    load(node, [ds], calling_ae="LOGCHECK")
    lines = [line for line in node.log_text().splitlines() if "event=c_store" in line]
    mine = [line for line in lines if f"sop_instance_uid={ds.SOPInstanceUID}" in line]
    assert len(mine) == 1, lines
    assert "calling_ae=LOGCHECK" in mine[0] and "status=0x0000" in mine[0], mine[0]


def test_serve_and_status_from_a_config_file(node_factory: NodeFactory, tmp_path: Path) -> None:
    """An admin's TOML (keys as ``node print-default-config`` shows them) drives serve/status."""
    port = free_port()
    data_dir = tmp_path / "site-data"
    config = tmp_path / "node.toml"
    config.write_text(
        f'name = "site-a"\n'
        f'data_dir = "{data_dir}"\n'
        f"[dicom]\n"
        f'ae_title = "CFGPACS"\n'
        f'host = "{HOST}"\n'
        f"port = {port}\n"
        f'allowed_calling_aes = ["CFGSCU"]\n'
    )
    checked = gridpacs_cli("node", "check-config", str(config))
    assert checked.returncode == 0, describe(checked)

    node = node_factory(config_file=config, port=port, data_dir=data_dir, ae_title="CFGPACS")
    ds = build_corpus("ITK").in_series("C1")[0]
    load(node, [ds], calling_ae="CFGSCU")
    refused = run_dcmtk("echoscu", "-aet", "OTHERSCU", "-aec", "CFGPACS", HOST, str(port))
    assert refused.returncode != 0, describe(refused)

    result = gridpacs_cli("node", "status", "--config", str(config), "--json")
    assert result.returncode == 0, describe(result)
    counts = status_counts(json.loads(result.stdout))
    assert counts == {"patients": 1, "studies": 1, "series": 1, "instances": 1}


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[dicom]\nport = "eleven"\nae_title = "THIS-AE-TITLE-IS-FAR-TOO-LONG"\n')
    result = gridpacs_cli("node", "check-config", str(config))
    assert result.returncode == 2, describe(result)
    output = result.stdout + result.stderr
    assert "port" in output and "ae_title" in output, describe(result)
