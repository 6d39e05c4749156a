"""Configuration validation and the CLIs (check-config, query output formats), in-process."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from catalog.cli import app as catalog_app
from catalog.config import build_config, load_config
from catalog.db import Repository, open_database
from catalog.errors import ConfigError
from catalog.query_cli import query_cmd
from catalog.records import NodeInfo
from catalog.server.serve import CatalogServer, build_server
from catalog.service import CatalogService
from tests.catalog.builders import Outbox, StudyBuilder

runner = CliRunner()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"insecure": True}, "name: Field required"),
        ({"name": "c"}, "configure [tls] (mTLS) or set insecure = true"),
        ({"name": "c", "insecure": True, "port": 70000}, "port: Input should be less than"),
        (
            {"name": "c", "insecure": True, "replication": {"interval_s": 0}},
            "replication.interval_s: Input should be greater than 0",
        ),
        (
            {"name": "c", "insecure": True, "peers": [{"name": "p", "address": "nohost"}]},
            "peers.0.address",
        ),
        ({"name": "c", "insecure": True, "db_url": "mysql://x"}, "db_url"),
        ({"name": "c", "insecure": True, "colour": "blue"}, "colour: Extra inputs"),
    ],
)
def test_invalid_configurations_name_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_config(data)
    assert message in str(error.value)


def test_file_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(
        'name = "cat-1"\ninsecure = true\nport = 6000\n'
        '[[peers]]\nname = "cat-2"\naddress = "127.0.0.1:6001"\n'
        "[replication]\ninterval_s = 0.25\n"
    )
    config = load_config(path, {"port": 7000, "db_url": None})
    assert (config.name, config.port, config.replication.interval_s) == ("cat-1", 7000, 0.25)
    assert config.peers[0].address == "127.0.0.1:6001"


def test_check_config_command(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('name = "cat-1"\ninsecure = true\n')
    ok = runner.invoke(catalog_app, ["check-config", str(good)])
    assert ok.exit_code == 0 and "ok: catalog cat-1" in ok.output
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "cat-1"\ninsecure = true\n[replication]\nbatch_size = 0\n')
    refused = runner.invoke(catalog_app, ["check-config", str(bad)])
    assert refused.exit_code == 2
    assert "replication.batch_size" in refused.output
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    assert runner.invoke(catalog_app, ["check-config", str(broken)]).exit_code == 2
    default = runner.invoke(catalog_app, ["print-default-config"])
    (tmp_path / "default.toml").write_text(
        default.output.replace("insecure = false", "insecure = true")
    )
    assert load_config(tmp_path / "default.toml", {}).name == "catalog-1"


@pytest.fixture
def server(sqlite_url: str) -> Iterator[CatalogServer]:
    engine = open_database(sqlite_url)
    service = CatalogService("r", Repository(engine))
    service.register_node(NodeInfo("site-a", "SITE_A"))
    node = Outbox("site-a")
    service.apply_changes("site-a", node.added(StudyBuilder("P1", "SMITH^JOHN").instances(3)))
    service.apply_changes("site-a", node.added(StudyBuilder("P2", "JONES^ANN").instances(2)))
    running = build_server(service, port=0)
    running.start()
    try:
        yield running
    finally:
        running.stop(grace=0)
        engine.dispose()


def _query_app() -> typer.Typer:
    app = typer.Typer()
    app.command()(query_cmd)
    return app


def test_query_outputs_table_json_and_csv(server: CatalogServer, tmp_path: Path) -> None:
    base = ["--catalog", f"127.0.0.1:{server.port}", "--patient-name", "SMITH*"]
    table = runner.invoke(_query_app(), base, env={"COLUMNS": "300"})
    assert table.exit_code == 0, table.output
    assert "SMITH^JOHN" in table.output and "1 match(es)" in table.output

    as_json = runner.invoke(_query_app(), [*base, "--json"])
    [study] = json.loads(as_json.output)
    assert study["attributes"]["PatientID"] == "P1"
    assert study["holders"] == [{"node": "site-a", "ae_title": "SITE_A", "collection": "clinical"}]

    token = tmp_path / "token"
    token.write_text("tok_abc\n")
    as_csv = runner.invoke(
        _query_app(),
        [
            "--catalog",
            f"127.0.0.1:{server.port}",
            "--level",
            "image",
            "--csv",
            "--token-file",
            str(token),
        ],
    )
    rows = list(csv.DictReader(io.StringIO(as_csv.output)))
    assert len(rows) == 5
    assert rows[0]["Nodes"] == "site-a(SITE_A)/clinical"

    bad = runner.invoke(_query_app(), [*base, "--study-date", "June"])
    assert bad.exit_code == 2 and "INVALID_ARGUMENT" in bad.output
