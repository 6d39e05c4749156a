"""``gridpacs reconcile`` argument and connection errors, in-process: clear message, exit code."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from gridpacs.reconcile.cli import reconcile_cmd
from tests.integration.processes import free_port


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(reconcile_cmd)
    return app


def test_bad_arguments_exit_2_and_no_catalog_exits_3() -> None:
    runner = CliRunner()
    nowhere = f"127.0.0.1:{free_port()}"
    bad = runner.invoke(_app(), ["--catalog", nowhere, "--period", "2024-13"])
    assert bad.exit_code == 2 and "month must be 01..12" in bad.output
    factor = runner.invoke(_app(), ["--catalog", nowhere, "--period", "2024-06",
                                    "--factor", "lung=zero"])  # fmt: skip
    assert factor.exit_code == 2 and "COLLECTION=N" in factor.output
    half_tls = runner.invoke(_app(), ["--catalog", nowhere, "--period", "2024-06",
                                      "--ca", "ca.crt"])  # fmt: skip
    assert half_tls.exit_code == 2 and "--cert" in half_tls.output
    down = runner.invoke(_app(), ["--catalog", nowhere, "--period", "2024-06", "--timeout", "1"])
    assert down.exit_code == 3 and "no catalog replica answered" in down.output
