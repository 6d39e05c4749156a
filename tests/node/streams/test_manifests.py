"""Stream manifests: MagickBox info.json plus the run contract; bad ones are skipped loudly."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.streams.cli import app as streams_app
from node.streams.registry import load_streams
from tests.integration.processes import REPO_ROOT, gridpacs_cli

EXAMPLES = REPO_ROOT / "docs" / "examples" / "streams"


def _write(folder: Path, name: str, **values: object) -> Path:
    manifest = {
        "name": name,
        "description": f"{name} stream",
        "version": "1.0.0",
        "AETitle": name.upper()[:16],
        "enabled": 1,
        "command": ["{python}", "{stream_dir}/run.py"],
        **values,
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(manifest))
    return path


def test_example_stream_loads_with_its_magickbox_keys() -> None:
    registry = load_streams(EXAMPLES)
    assert registry.problems == []
    invert = registry.streams["invert"]
    assert invert.ae_title == "INVERT"
    assert invert.enabled is True
    assert invert.destination_kind == "sender"
    assert invert.max_attempts == 2
    argv = invert.argv()
    assert Path(argv[1]) == (EXAMPLES / "invert" / "invert.py").resolve()
    assert Path(argv[0]).name.startswith("python")


def test_bad_manifests_are_reported_and_skipped_the_rest_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write(tmp_path, "good", time_limit_seconds=30, max_attempts=3, destination="PACS")
    _write(tmp_path, "disabled", enabled=0)
    (tmp_path / "broken.json").write_text("{not json")
    _write(tmp_path, "nocmd", command=[])
    _write(tmp_path, "badae", AETitle="A\\B")
    _write(tmp_path, "extra", colour="blue")
    _write(tmp_path, "taken", AETitle="GRIDPACS")
    _write(tmp_path, "nowhere", destination="UNKNOWN")
    dup = _write(tmp_path, "dup1", AETitle="SAME")
    dup2 = _write(tmp_path, "dup2", AETitle="SAME")
    with caplog.at_level(logging.ERROR, logger="gridpacs.node.streams"):
        registry = load_streams(tmp_path, reserved_ae_titles={"GRIDPACS"}, destinations={"PACS"})
    assert sorted(registry.streams) == ["disabled", "good"]
    assert [s.name for s in registry.enabled] == ["good"]
    good = registry.streams["good"]
    assert (good.time_limit_seconds, good.max_attempts, good.destination) == (30, 3, "PACS")
    reasons = {p.path.name: p.reason for p in registry.problems}
    assert set(reasons) == {
        "broken.json",
        "nocmd.json",
        "badae.json",
        "extra.json",
        "taken.json",
        "nowhere.json",
        dup.name,
        dup2.name,
    }
    assert "not valid JSON" in reasons["broken.json"]
    assert "command" in reasons["nocmd.json"]
    assert "AETitle" in reasons["badae.json"]
    assert "colour" in reasons["extra.json"]
    assert "already used by the node" in reasons["taken.json"]
    assert "UNKNOWN" in reasons["nowhere.json"] and "destinations" in reasons["nowhere.json"]
    assert "more than one stream" in reasons[dup.name]
    logged = [r.getMessage() for r in caplog.records]
    assert sum("event=stream_manifest_invalid" in m for m in logged) == len(reasons)


def test_magickbox_folder_layout(tmp_path: Path) -> None:
    folder = tmp_path / "bucketSEG"
    folder.mkdir()
    (folder / "info.json").write_text(
        json.dumps(
            {
                "name": "seg",
                "AETitle": "SEG",
                "enabled": True,
                "command": ["./seg.sh"],
            }
        )
    )
    registry = load_streams(tmp_path)
    assert registry.streams["seg"].stream_dir == folder


def test_streams_list_cli_shows_streams_and_problems(tmp_path: Path) -> None:
    _write(tmp_path, "good")
    (tmp_path / "broken.json").write_text("[1, 2]")
    # in-process (a Typer app with one command takes its options directly)
    table = CliRunner().invoke(
        streams_app, ["--streams-dir", str(tmp_path)], env={"COLUMNS": "120"}
    )
    assert table.exit_code == 1, table.output
    assert "good" in table.output and "GOOD" in table.output
    assert "skipped manifests" in table.output and "broken.json" in table.output
    # the installed entry point, as an operator runs it
    out = gridpacs_cli("streams", "list", "--streams-dir", str(tmp_path), "--json")
    data = json.loads(out.stdout)
    assert [s["name"] for s in data["streams"]] == ["good"]
    assert data["streams"][0]["AETitle"] == "GOOD"
    assert data["problems"][0]["reason"] == "a manifest is a JSON object"


def test_streams_list_with_a_node_config_checks_destinations(tmp_path: Path) -> None:
    streams = tmp_path / "streams"
    streams.mkdir()
    _write(streams, "topacs", destination="PACS")
    _write(streams, "tonowhere", destination="ELSEWHERE")
    config = tmp_path / "node.toml"
    config.write_text(
        'streams_dir = "streams"\n[dicom.destinations]\nPACS = { host = "pacs", port = 104 }\n'
    )
    result = CliRunner().invoke(streams_app, ["--config", str(config), "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.output)
    assert [s["name"] for s in data["streams"]] == ["topacs"]
    assert (
        "'ELSEWHERE' is not one of the node's [dicom.destinations] (PACS)"
        in (data["problems"][0]["reason"])
    )
