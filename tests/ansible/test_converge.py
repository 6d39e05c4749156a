"""Converge the CI inventory of ``ansible/`` against this machine, then use the grid it made.

The playbook runs for real (``ansible_connection: local``): it makes a grid CA, installs
gridpacs into per-host virtualenvs, creates the catalog's PostgreSQL database and role on the
test server, generates the nodes' keys and secrets, renders and validates the TOML files,
and starts one catalog replica and two nodes with the ``service_manager: none`` start
scripts. The checks are the ones an operator would make: C-ECHO both nodes, store on one,
find it grid-wide through the other and with ``gridpacs query``, the rows in PostgreSQL, and
a second run that changes nothing (keys untouched). The example inventory is rendered with
its systemd units, which ``systemd-analyze verify`` checks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pydicom
import pytest
import sqlalchemy as sa
from cryptography import x509
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from catalog.security import CertFiles, issue
from tests.conftest import PG_ADMIN_URL
from tests.factories import StudySpec, make_dataset
from tests.integration.secure_grid import health_status
from tests.integration.test_grid_catalog import _grid_find_soon, _store, _wait_for

# Generous limits: the 2-core machine is shared, a converge takes ~60 s alone but 4x that
# under heavy load; a hung run still ends.
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(900)]

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
    db_url: str

    def etc(self, host: str) -> Path:
        return self.prefix / host / "etc" / "gridpacs"


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
        timeout=600,
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


def _admin() -> sa.Engine:
    return sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


def _drop_database_and_role(name: str) -> None:
    """Drop what the gridpacs_postgresql role made for this run (the names are this run's)."""
    admin = _admin()
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{name}"'))
    finally:
        admin.dispose()


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    prefix = tmp_path_factory.mktemp("grid")
    catalog, site_a, site_b, peer_a, peer_b = _free_ports(5)
    pg = sa.engine.make_url(PG_ADMIN_URL)
    db_name = f"gridpacs_ci_{uuid.uuid4().hex[:12]}"  # database and its owner role
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
                "gridpacs_ci_db_name": db_name,
                "gridpacs_postgresql_login_host": pg.host or "127.0.0.1",
                "gridpacs_postgresql_login_user": pg.username or "postgres",
                "gridpacs_postgresql_port": pg.port or 5432,
                "gridpacs_catalog_db_host": pg.host or "127.0.0.1",
                "gridpacs_catalog_db_port": pg.port or 5432,
            }
        )
    )
    db_url = pg.set(database=db_name, username=db_name, password=None)
    try:
        first = _converge(grid_vars, prefix / "ansible-home")
        yield Grid(
            prefix, catalog, site_a, site_b, grid_vars, first, db_url.render_as_string(False)
        )
    finally:
        _stop_everything(prefix)
        _drop_database_and_role(db_name)


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


@pytest.fixture(scope="module")
def stored(grid: Grid) -> StudySpec:
    """One study C-STOREd on SITEA (encrypted at rest there), once for the module."""
    spec = StudySpec(patient_id="ANSIBLE-P1", patient_name="ANSIBLE^PATIENT")
    statuses = _store(grid.site_a_port, "SITEA", [make_dataset(spec, instance_number=1)])
    assert statuses == [0x0000]
    return spec


def test_a_study_stored_on_one_node_is_found_through_the_other(
    grid: Grid, stored: StudySpec
) -> None:
    spec = stored
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


def test_the_catalog_keeps_the_study_in_its_postgresql_database(
    grid: Grid, stored: StudySpec
) -> None:
    toml = (grid.etc("ci-catalog-1") / "catalog-ci-catalog-1.toml").read_text()
    assert f'db_url = "{grid.db_url}"' in toml
    engine = sa.create_engine(grid.db_url)  # as the role the playbook made, not as postgres
    try:

        def rows() -> list[tuple[str, str]]:
            with engine.connect() as conn:
                return [
                    (r.origin, r.study_instance_uid)
                    for r in conn.execute(
                        sa.text(
                            "SELECT origin, study_instance_uid FROM catalog_studies"
                            " WHERE patient_id = :pid"
                        ),
                        {"pid": stored.patient_id},
                    )
                ]

        assert _wait_for(rows, 60, "the study's row in PostgreSQL") == [
            ("site-a", stored.study_uid)
        ]
        with engine.connect() as conn:
            owner = conn.execute(
                sa.text("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = :db"),
                {"db": engine.url.database},
            ).scalar_one()
        assert owner == engine.url.username
    finally:
        engine.dispose()


def test_gridpacs_query_finds_the_study_with_a_host_certificate(
    grid: Grid, stored: StudySpec
) -> None:
    venv_cli = grid.prefix / "site-a" / "opt" / "gridpacs" / "venv" / "bin" / "gridpacs"
    pki = grid.etc("site-a") / "pki"

    def query() -> list[dict[str, object]]:
        proc = subprocess.run(
            [
                str(venv_cli), "query", "--catalog", f"127.0.0.1:{grid.catalog_port}",
                "--patient-id", stored.patient_id, "--json",
                "--ca", str(pki / "ca.crt"), "--cert", str(pki / "host.crt"),
                "--key", str(pki / "host.key"),
            ],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return list(json.loads(proc.stdout))

    matches = _wait_for(query, 60, "gridpacs query to list the study")
    assert [m.get("study_instance_uid") for m in matches] == [stored.study_uid], matches


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_and_secrets_are_generated_private_and_referenced(grid: Grid) -> None:
    site_a = grid.etc("site-a") / "secrets" / "node-site-a"
    assert _mode(site_a) == 0o700
    assert (site_a / "storage.key").stat().st_size == 32  # raw AES-256 key
    for name in ("storage.key", "pseudonym.secret", "reid.key"):
        assert _mode(site_a / name) == 0o600, name
    toml_a = (grid.etc("site-a") / "node-site-a.toml").read_text()
    assert f'encryption_key_file = "{site_a / "storage.key"}"' in toml_a
    assert f'secret_file = "{site_a / "pseudonym.secret"}"' in toml_a
    assert f'reid_key_file = "{site_a / "reid.key"}"' in toml_a
    # SITEA's blobs are encrypted with that key; SITEB (key file "") stores in clear
    site_b = grid.etc("site-b") / "secrets" / "node-site-b"
    assert not (site_b / "storage.key").exists()
    assert "[storage]" not in (grid.etc("site-b") / "node-site-b.toml").read_text()
    assert sorted(p.name for p in site_b.iterdir()) == ["pseudonym.secret", "reid.key"]
    pepper = grid.etc("ci-catalog-1") / "secrets" / "catalog-ci-catalog-1" / "token.pepper"
    assert _mode(pepper) == 0o600 and len(pepper.read_text().strip()) == 64
    assert (
        f'pepper_file = "{pepper}"'
        in (grid.etc("ci-catalog-1") / "catalog-ci-catalog-1.toml").read_text()
    )


def test_stream_manifests_are_rendered_as_the_inventory_lists_them(grid: Grid) -> None:
    streams = grid.etc("site-a") / "streams" / "node-site-a"
    assert sorted(p.name for p in streams.iterdir()) == ["ci-echo.json"]
    manifest = json.loads((streams / "ci-echo.json").read_text())
    assert manifest == {
        "name": "ci-echo",
        "description": "CI stream, rendered but never run",
        "version": "0.0.1",
        "AETitle": "CIECHO",
        "enabled": False,
        "command": ["{python}", "-c", "pass"],
        "resources": {"cpus": 1, "memory_mb": 64},
        "time_limit_seconds": 60,
        "max_attempts": 1,
        "destination": "sender",
    }
    assert not (grid.etc("site-b") / "streams" / "node-site-b").exists()
    # the installed gridpacs reads streams and replication factors: rendered as keys
    assert f'\nstreams_dir = "{streams}"\n' in (grid.etc("site-a") / "node-site-a.toml").read_text()
    catalog = (grid.etc("ci-catalog-1") / "catalog-ci-catalog-1.toml").read_text()
    assert "\ndefault_factor = 1\n" in catalog and "not read" not in catalog


def test_grant_keys_are_distributed_private_and_referenced(grid: Grid) -> None:
    control = grid.prefix / "control-pki" / "grant" / "g1"
    assert _mode(control / "grant.key") == 0o600
    signing = grid.etc("ci-catalog-1") / "pki" / "grant.key"
    assert _mode(signing) == 0o600
    assert signing.read_bytes() == (control / "grant.key").read_bytes()
    catalog_toml = (grid.etc("ci-catalog-1") / "catalog-ci-catalog-1.toml").read_text()
    assert f'grant_key_file = "{signing}"' in catalog_toml
    for host in ("site-a", "site-b"):
        public = grid.etc(host) / "pki" / "grant-g1.pub"
        assert public.read_bytes() == (control / "grant.pub").read_bytes()
        assert not (grid.etc(host) / "pki" / "grant.key").exists(), "a node can mint grants"
        toml = (grid.etc(host) / f"node-{host}.toml").read_text()
        assert f'grant_public_keys = ["{public}"]' in toml
        assert "anti_entropy" not in toml and "[catalog.replication]" not in toml  # defaults
    assert not (grid.etc("ci-catalog-1") / "pki" / "grant-g1.pub").exists()


def test_a_researcher_retrieves_the_study_with_a_token_and_a_grant(
    grid: Grid, stored: StudySpec, tmp_path: Path
) -> None:
    """The whole grant path as provisioned: token from the catalog's database and pepper, a
    user certificate from the grid CA, a grant signed with the distributed key and checked by
    SITEA with the public key it was given."""
    venv_cli = str(grid.prefix / "site-a" / "opt" / "gridpacs" / "venv" / "bin" / "gridpacs")
    pepper = grid.etc("ci-catalog-1") / "secrets" / "catalog-ci-catalog-1" / "token.pepper"

    def run(*args: str) -> str:
        proc = subprocess.run([venv_cli, *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    run("pki", "issue", "--ca", str(grid.prefix / "control-pki" / "ca"),
        "--out", str(tmp_path / "alice"), "--name", "alice", "--client-only")  # fmt: skip
    token = json.loads(
        run("token", "create", "--db-url", grid.db_url, "--pepper-file", str(pepper),
            "--user", "alice", "--grant", "local=admin", "--expires-in", "1h", "--json")
    )["token"]  # fmt: skip
    _wait_for(
        lambda: _grid_find_soon(grid.site_b_port, "STUDY", PatientID="ANSIBLE-P1"),
        60,
        "the stored study in the catalog",
    )
    out = tmp_path / "out"
    run("retrieve", "--catalog", f"127.0.0.1:{grid.catalog_port}", "--token", token,
        "--ca", str(tmp_path / "alice" / "ca.crt"), "--cert", str(tmp_path / "alice" / "alice.crt"),
        "--key", str(tmp_path / "alice" / "alice.key"), "--study", stored.study_uid,
        "--out", str(out), "--json")  # fmt: skip
    [fetched] = list((out / stored.study_uid).rglob("*.dcm"))
    assert pydicom.dcmread(fetched).PatientID == "ANSIBLE-P1"


def _secret_digests(prefix: Path) -> dict[str, str]:
    files = [
        *prefix.glob("*/etc/gridpacs/secrets/*/*"),
        *prefix.glob("*/etc/gridpacs/streams/*/*"),
        *prefix.glob("*/etc/gridpacs/pki/grant*"),
    ]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


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
    secrets = _secret_digests(grid.prefix)
    # 3 + 2 node secrets, 1 pepper, 1 stream manifest, the grant key + 2 public keys
    assert len(secrets) == 10, secrets
    second = _converge(grid.extra_vars, grid.prefix / "ansible-home")
    assert _recap(second) == {"ci-catalog-1": 0, "site-a": 0, "site-b": 0}, second[-3000:]
    after = {p.name: p.read_text() for p in grid.prefix.glob("*/run/gridpacs/*.pid")}
    assert after == pids, "an unchanged service was restarted"
    assert _secret_digests(grid.prefix) == secrets, "a key or secret was regenerated"


def test_a_certificate_revoked_in_the_inventory_is_refused_without_restarts(
    grid: Grid, tmp_path: Path
) -> None:
    ca = grid.prefix / "control-pki" / "ca"
    for host, toml, key in [("site-a", "node-site-a.toml", "crl_file"),
                            ("ci-catalog-1", "catalog-ci-catalog-1.toml", "crl")]:  # fmt: skip
        served = grid.etc(host) / "pki" / "crl.pem"
        assert served.read_bytes() == (ca / "crl.pem").read_bytes()
        assert f'{key} = "{served}"' in (grid.etc(host) / toml).read_text()
    laptop = issue(ca, tmp_path / "laptop", "127.0.0.1")  # the grid CA's, then lost
    site_a = CertFiles(
        *(grid.etc("site-a") / "pki" / n for n in ("host.crt", "host.key", "ca.crt"))
    )
    peer = json.loads(grid.extra_vars.read_text())["gridpacs_ci_site_a_peer_port"]
    servers = [f"127.0.0.1:{grid.catalog_port}", f"127.0.0.1:{peer}"]
    assert [health_status(a, laptop) for a in servers] == [grpc.StatusCode.OK] * 2
    pids = {p.name: p.read_text() for p in grid.prefix.glob("*/run/gridpacs/*.pid")}

    serial = format(x509.load_pem_x509_certificate(laptop.cert.read_bytes()).serial_number, "x")
    revoke = json.dumps({"gridpacs_pki_revoked": [serial]})
    output = _converge(grid.extra_vars, grid.prefix / "ansible-home", "-e", revoke)
    assert "TASK [gridpacs_pki : Revoke the listed certificates on the control host]" in output
    assert set(_recap(output).values()) != {0}  # the new list went out
    refused = [grpc.StatusCode.UNAUTHENTICATED] * 2
    _wait_for(lambda: [health_status(a, laptop) for a in servers] == refused, 30, "the refusals")
    assert [health_status(a, site_a) for a in servers] == [grpc.StatusCode.OK] * 2
    after = {p.name: p.read_text() for p in grid.prefix.glob("*/run/gridpacs/*.pid")}
    assert after == pids, "a service was restarted for a new revocation list"
    again = _converge(grid.extra_vars, grid.prefix / "ansible-home", "-e", revoke)
    assert _recap(again) == {"ci-catalog-1": 0, "site-a": 0, "site-b": 0}, again[-3000:]


def test_a_changed_configuration_restarts_only_that_node(grid: Grid) -> None:
    pid_files = {p.parent.parent.parent.name: p for p in grid.prefix.glob("*/run/gridpacs/*.pid")}
    before = {host: p.read_text() for host, p in pid_files.items()}
    stale = grid.etc("site-a") / "streams" / "node-site-a" / "retired.json"
    stale.write_text('{"name": "retired"}\n')  # a stream the inventory no longer lists
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
    assert not stale.exists(), "a manifest the inventory does not list was left in place"
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
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def _render_example(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Render and check-config the example inventory's files locally (tag ``config``).

    The systemd units are installed into ``out/systemd`` and nothing is started
    (``gridpacs_common_service_control: false``).
    """
    (out / "systemd").mkdir(parents=True, exist_ok=True)
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
                    "gridpacs_common_service_manager": "systemd",
                    "gridpacs_common_service_control": False,
                    "gridpacs_common_systemd_unit_dir": str(out / "systemd"),
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
        timeout=400,
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
    assert (
        'WS2 = { host = "ws2.site-a.example.org", port = 2762, '
        'ca_file = "/etc/ssl/site-a/hospital-ca.pem", tls = true }'
    ) in site_a
    assert 'ae_title = "LUNG_STUDY"' in site_a
    pki_dir = etc / "pki"
    assert (
        f'\n[dicom.tls]\nca_file = "{pki_dir / "ca.crt"}"\ncert_file = "{pki_dir / "host.crt"}"\n'
        f'key_file = "{pki_dir / "host.key"}"\nport = 2762\nrequire_client_cert = true\n'
    ) in site_a
    assert "[dicom.tls]" not in (etc / "node-site-b.toml").read_text()
    assert (
        '\n[dicom.permissions]\n"CT1" = ["store", "commit"]\n"MR1" = ["store", "commit"]\n'
        '"WS1" = ["find", "move", "get"]\n'
    ) in site_a
    assert (
        f'\n[audit.export]\nca_file = "/etc/ssl/site-a/hospital-ca.pem"\n'
        f'cert_file = "{pki_dir / "host.crt"}"\nkey_file = "{pki_dir / "host.key"}"\n'
        'site_id = "site-a-hospital"\nurl = "tls://arr.site-a.example.org:6514"\n'
    ) in site_a
    assert "\n[audit]\nkeep_days = 2190\n" in site_a
    assert "[audit.export]" not in (etc / "node-site-b.toml").read_text()
    assert "\n[dicom.commitment]\ngive_up_after = 259200.0\n" in site_a
    assert "\n[metrics]\nenabled = true\nport = 9464\n" in site_a
    assert "[dicom.commitment]" not in (etc / "node-site-b.toml").read_text()
    catalog_1 = (etc / "catalog-catalog-1.toml").read_text()
    assert 'address = "catalog-2.grid.example.org:50051"' in catalog_1
    assert 'db_url = "postgresql+psycopg2://gridpacs@/gridpacs_catalog_1"' in catalog_1
    assert catalog_1.endswith("\n[metrics]\nenabled = true\n")
    assert "[metrics]" not in (etc / "catalog-catalog-2.toml").read_text()
    assert (etc / "streams" / "node-site-a" / "lung-seg.json").is_file()
    assert f'grant_public_keys = ["{etc / "pki" / "grant-g1.pub"}"]' in site_a
    assert f'grant_key_file = "{etc / "pki" / "grant.key"}"' in catalog_1
    site_c = (etc / "node-site-c.toml").read_text()
    assert "\nanti_entropy_interval = 1800.0\nanti_entropy_months = 1\n" in site_c
    assert "\n[catalog.replication]\nconcurrency = 2\n" in site_c
    assert "anti_entropy" not in site_a and "[catalog.replication]" not in site_a
    replication_keys = _known_fields("catalog.config", "ReplicationConfig")
    node_keys = _known_fields("node.config", "NodeConfig")
    assert ("\ndefault_factor = 2\n" in catalog_1) == ("default_factor" in replication_keys)
    assert ("\nstreams_dir = " in site_a) == ("streams_dir" in node_keys)
    _check_units(tmp_path / "systemd", venv=Path(sys.prefix), prefix=tmp_path)


def _known_fields(module: str, model: str) -> set[str]:
    """The keys today's configuration model accepts (the roles gate new keys on them)."""
    return set(getattr(__import__(module, fromlist=[model]), model).model_fields)


def _unit_directives(text: str) -> dict[str, list[str]]:
    """``[Section]Key`` -> values, in order (a unit file is an INI file with repeats)."""
    section, found = "", dict[str, list[str]]()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(section + key, []).append(value)
    return found


def _check_units(unit_dir: Path, venv: Path, prefix: Path) -> None:
    units = sorted(unit_dir.glob("*.service"))
    assert [u.name for u in units] == [
        "gridpacs-catalog-catalog-1.service",
        "gridpacs-catalog-catalog-2.service",
        "gridpacs-node-site-a.service",
        "gridpacs-node-site-b.service",
        "gridpacs-node-site-c.service",
    ]
    for unit in units:
        d = _unit_directives(unit.read_text())
        kind, _, name = unit.stem.removeprefix("gridpacs-").partition("-")
        config = prefix / "etc" / "gridpacs" / f"{kind}-{name}.toml"
        workdir = prefix / "var" / "lib" / "gridpacs" / f"{kind}-{name}"
        assert d["[Service]ExecStart"] == [f"{venv}/bin/gridpacs {kind} serve --config {config}"]
        assert d["[Service]User"] == ["gridpacs"] and d["[Service]Group"] == ["gridpacs"]
        assert d["[Service]Restart"] == ["on-failure"]
        assert d["[Service]WorkingDirectory"] == [str(workdir)]
        assert d["[Service]ReadWritePaths"] == [str(workdir)]  # and nothing else
        for hardening in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome"):
            assert d[f"[Service]{hardening}"] == ["true"], (unit.name, hardening)
        assert d["[Service]ProtectSystem"] == ["strict"]
        assert d["[Install]WantedBy"] == ["multi-user.target"]
        if kind == "catalog":  # PostgreSQL on the same host: start after it
            assert "postgresql.service" in d["[Unit]After"][0]
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # containers without systemd: the parse above is the check
        return
    proc = subprocess.run(
        [analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=60
    )
    ours = [line for line in proc.stderr.splitlines() if "gridpacs-" in line]
    assert proc.returncode == 0 and not ours, proc.stdout + proc.stderr


def test_an_invalid_value_is_refused_by_check_config(tmp_path: Path) -> None:
    proc = _render_example(
        tmp_path, "--limit", "site-c", "-e", "gridpacs_node_ae_title=AE_TITLE_LONGER_THAN_16"
    )
    assert proc.returncode != 0
    assert "check-config" in proc.stdout or "failed to validate" in proc.stdout, proc.stdout[-3000:]
    assert not (tmp_path / "etc" / "gridpacs" / "node-site-c.toml").exists()
