"""Node configuration of streams and the worker: defaults keep old files valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import NodeConfig, load_config
from node.errors import ConfigError
from node.streams.load import CpuSampler, memory_available_mb


def test_defaults_and_relative_streams_dir(tmp_path: Path) -> None:
    assert NodeConfig().streams_dir is None and NodeConfig().worker.max_jobs == 2
    config = tmp_path / "node.toml"
    config.write_text(
        'data_dir = "var"\nstreams_dir = "streams"\n'
        '[worker]\nmax_jobs = 4\nmax_cpu_percent = 85\nwork_dir = "/scratch/jobs"\n'
    )
    cfg = load_config(config)
    assert cfg.streams_dir == tmp_path / "streams"
    assert cfg.jobs_dir == Path("/scratch/jobs") and cfg.worker.max_jobs == 4
    assert load_config(None, {"data_dir": str(tmp_path)}).jobs_dir == tmp_path / "jobs"


def test_bad_worker_settings_are_listed(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[worker]\nmax_jobs = 0\nmax_cpu_percent = 150\nspeed = 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    text = str(err.value)
    assert "worker.max_jobs" in text and "worker.max_cpu_percent" in text
    assert "worker.speed" in text


def test_load_figures_are_plausible() -> None:
    sampler = CpuSampler()
    sum(i * i for i in range(200_000))
    assert 0.0 <= sampler.percent() <= 100.0
    assert memory_available_mb() > 0
