"""Converge the CI inventory of ``ansible/`` against this machine, then use the grid it made.

The playbook runs for real (``ansible_connection: local``): it makes a grid CA, installs
gridpacs into per-host virtualenvs, renders and validates the TOML files, and starts one
catalog replica and two nodes with the ``service_manager: none`` start scripts. The checks
are the ones an operator would make: C-ECHO both nodes, store on one, find it grid-wide
through the other, and a second run that changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.factories import StudySpec, make_dataset
from tests.integration.test_grid_catalog import _grid_find_soon, _store, _wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
RECAP = re.compile(r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)", re.M)


@dataclass(frozen=True)
class Grid:
    prefix: Path
    catalog_port: int
    site_a_port: int
    site_b_port: int
    extra_vars: Path
    first_run: str


def _tool(name: str) -> str:
    """The ansible command installed beside this interpreter (the test venv), else PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is not installed (pip install '.[test]')"
    return found


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }


def _converge(grid_vars: Path, home: Path, *extra: str) -> str:
    proc = subprocess.run(
        [
            _tool("ansible-playbook"),
            "-i",
            str(ANSIBLE_DIR / "inventories" / "ci" / "hosts.yml"),
            str(ANSIBLE_DIR / "site.yml"),
            "-e",
            f"@{grid_vars}",
            *extra,
        ],
        cwd=REPO,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    return proc.stdout


def _recap(output: str) -> dict[str, int]:
    """host -> changed count, from the PLAY RECAP."""
    recap = output[output.rindex("PLAY RECAP") :]
    return {m["host"]: int(m["changed"]) for m in RECAP.finditer(recap)}


def _stop_everything(prefix: Path) -> None:
    """Stop every process the playbook started: start scripts first, pid files as backstop."""
    for script in sorted(prefix.glob("*/opt/gridpacs/bin/gridpacs-*")):
        subprocess.run([str(script), "stop"], capture_output=True, timeout=30, check=False)
    for pid_file in prefix.glob("*/run/gridpacs/*.pid"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text().strip())
            if str(prefix).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():  # still ours
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    prefix = tmp_path_factory.mktemp("grid")
    catalog, site_a, site_b, peer_a, peer_b = _free_ports(5)
    revision = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()  # pinned: a commit landing between the two runs must not count as change
    grid_vars = prefix / "ci-vars.json"
    grid_vars.write_text(
        json.dumps(
            {
                "gridpacs_ci_prefix": str(prefix),
                "gridpacs_ci_catalog_port": catalog,
                "gridpacs_ci_site_a_port": site_a,
                "gridpacs_ci_site_b_port": site_b,
                "gridpacs_ci_site_a_peer_port": peer_a,
                "gridpacs_ci_site_b_peer_port": peer_b,
                "gridpacs_common_version": revision,
            }
        )
    )
    try:
        first = _converge(grid_vars, prefix / "ansible-home")
        yield Grid(prefix, catalog, site_a, site_b, grid_vars, first)
    finally:
        _stop_everything(prefix)


def _echo(port: int, called: str) -> int:
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, f"{called} on {port} refused the association"
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def test_first_run_changes_every_host(grid: Grid) -> None:
    changed = _recap(grid.first_run)
    assert set(changed) == {"ci-catalog-1", "site-a", "site-b"}
    assert all(count > 0 for count in changed.values()), changed


def test_both_nodes_answer_c_echo(grid: Grid) -> None:
    assert _echo(grid.site_a_port, "SITEA") == 0x0000
    assert _echo(grid.site_b_port, "SITEB") == 0x0000


def test_a_study_stored_on_one_node_is_found_through_the_other(grid: Grid) -> None:
    spec = StudySpec(patient_id="ANSIBLE-P1", patient_name="ANSIBLE^PATIENT")
    statuses = _store(grid.site_a_port, "SITEA", [make_dataset(spec, instance_number=1)])
    assert statuses == [0x0000]
    found = _wait_for(
        lambda: _grid_find_soon(
            grid.site_b_port,
            "STUDY",
            PatientID="ANSIBLE-P1",
            StudyInstanceUID="",
            RetrieveAETitle="",
        ),
        60,
        "the study stored on SITEA to be found through SITEB's GRID AE",
    )
    assert [str(ds.StudyInstanceUID) for ds in found] == [spec.study_uid]
    assert "SITEA" in str(found[0].RetrieveAETitle)


def test_the_rendered_configurations_pass_check_config(grid: Grid) -> None:
    venv_cli = grid.prefix / "site-a" / "opt" / "gridpacs" / "venv" / "bin" / "gridpacs"
    for kind, host, toml in [
        ("node", "site-a", "node-site-a.toml"),
        ("catalog", "ci-catalog-1", "catalog-ci-catalog-1.toml"),
    ]:
        toml_path = grid.prefix / host / "etc" / "gridpacs" / toml
        proc = subprocess.run(
            [str(venv_cli), kind, "check-config", str(toml_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_second_run_changes_nothing(grid: Grid) -> None:
    pids = {p.name: p.read_text() for p in grid.prefix.glob("*/run/gridpacs/*.pid")}
    assert len(pids) == 3, pids
    second = _converge(grid.extra_vars, grid.prefix / "ansible-home")
    assert _recap(second) == {"ci-catalog-1": 0, "site-a": 0, "site-b": 0}, second[-3000:]
    after = {p.name: p.read_text() for p in grid.prefix.glob("*/run/gridpacs/*.pid")}
    assert after == pids, "an unchanged service was restarted"


def test_a_changed_configuration_restarts_only_that_node(grid: Grid) -> None:
    pid_files = {p.parent.parent.parent.name: p for p in grid.prefix.glob("*/run/gridpacs/*.pid")}
    before = {host: p.read_text() for host, p in pid_files.items()}
    output = _converge(
        grid.extra_vars,
        grid.prefix / "ansible-home",
        "--limit",
        "site-a",
        "-e",
        "gridpacs_node_max_associations=16",
    )
    assert _recap(output)["site-a"] > 0
    assert "RUNNING HANDLER [gridpacs_node : Restart the node (start script)]" in output
    toml = grid.prefix / "site-a" / "etc" / "gridpacs" / "node-site-a.toml"
    assert "max_associations = 16" in toml.read_text()
    after = {host: p.read_text() for host, p in pid_files.items()}
    assert after["site-a"] != before["site-a"], "site-a kept its old process"
    assert after["site-b"] == before["site-b"] and after["ci-catalog-1"] == before["ci-catalog-1"]
    assert _echo(grid.site_a_port, "SITEA") == 0x0000


def test_ansible_lint_production_profile_is_clean(tmp_path: Path) -> None:
    proc = subprocess.run(
        [_tool("ansible-lint"), "--offline", "--profile", "production", "--nocolor"],
        cwd=ANSIBLE_DIR,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def _render_example(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Render and check-config the example inventory's files locally (tag ``config``)."""
    return subprocess.run(
        [
            _tool("ansible-playbook"),
            "-i",
            str(ANSIBLE_DIR / "inventories" / "example"),
            str(ANSIBLE_DIR / "site.yml"),
            "--tags",
            "config",
            "-e",
            json.dumps(
                {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": sys.executable,
                    "gridpacs_become": False,
                    "gridpacs_common_create_user": False,
                    "gridpacs_common_service_manager": "unmanaged",
                    "gridpacs_common_prefix": str(out),
                    "gridpacs_common_venv": sys.prefix,  # its bin/gridpacs runs check-config
                }
            ),
            *extra,
        ],
        cwd=REPO,
        env=_env(out / "ansible-home"),
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_example_inventory_renders_valid_configurations(tmp_path: Path) -> None:
    proc = _render_example(tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    etc = tmp_path / "etc" / "gridpacs"
    assert sorted(p.name for p in etc.glob("*.toml")) == [
        "catalog-catalog-1.toml",
        "catalog-catalog-2.toml",
        "node-site-a.toml",
        "node-site-b.toml",
        "node-site-c.toml",
    ]
    site_a = (etc / "node-site-a.toml").read_text()
    assert 'SITEC = { host = "pacs.site-c.example.org", port = 4242 }' in site_a
    assert 'ae_title = "LUNG_STUDY"' in site_a
    assert (
        'address = "catalog-2.grid.example.org:50051"'
        in (etc / "catalog-catalog-1.toml").read_text()
    )


def test_an_invalid_value_is_refused_by_check_config(tmp_path: Path) -> None:
    proc = _render_example(
        tmp_path, "--limit", "site-a", "-e", "gridpacs_node_ae_title=AE_TITLE_LONGER_THAN_16"
    )
    assert proc.returncode != 0
    assert "check-config" in proc.stdout or "failed to validate" in proc.stdout, proc.stdout[-3000:]
    assert not (tmp_path / "etc" / "gridpacs" / "node-site-a.toml").exists()
