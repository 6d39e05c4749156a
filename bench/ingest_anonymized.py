"""Node ingest through an anonymizing AE title vs plain ingest, same node, same data.

The issue's goal: de-identifying near the source (a research route) keeps ≥ 50% of plain
ingest throughput. Each round starts a fresh node (as a user would, with a research route
``LUNG_STUDY`` configured) and sends the same files with one DCMTK ``storescu`` association
either to the node's own AE (plain) or to ``LUNG_STUDY`` (de-identified before storing).

    python bench/ingest_anonymized.py [--small 1000] [--ct 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.peers import Server, _running, free_port
from bench.storescu import send
from tests.factories import StudySpec, write_study


@contextmanager
def node_with_route(workdir: Path) -> Iterator[Server]:
    """A fresh node whose AE LUNG_STUDY de-identifies (Basic profile) into ``lung``."""
    port = free_port()
    config = workdir / "node.toml"
    config.write_text(
        f'data_dir = "{workdir / "data"}"\n[dicom]\nae_title = "GRIDPACS"\nport = {port}\n'
        '[[routes]]\nae_title = "LUNG_STUDY"\ncollection = "lung"\nprofile = ["basic"]\n'
    )
    argv = [sys.executable, "-m", "gridpacs", "node", "serve", "--config", str(config),
            "--log-level", "WARNING"]  # fmt: skip
    with _running("gridpacs", "GRIDPACS", port, argv, workdir, None) as server:
        yield server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--ct", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rates: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sets = {"64x64": (args.small, 64), "512x512": (args.ct, 512)}
        for name, (count, size) in sets.items():
            if count:
                (root / name).mkdir()
                write_study(str(root / name), count, StudySpec(patient_id="BENCH^P"),
                            rows=size, columns=size)  # fmt: skip
        for round_no in range(args.repeat):
            for name, (count, _) in sets.items():
                if not count:
                    continue
                for route in ("GRIDPACS", "LUNG_STUDY"):
                    work = root / f"r{round_no}-{name}-{route}"
                    work.mkdir()
                    with node_with_route(work) as server:
                        target = dataclasses.replace(server, ae_title=route)
                        run = send(target, [root / name])
                    if run.failed:
                        raise SystemExit(f"{run.failed} failed sending to {route}: {run.errors}")
                    rates.setdefault((name, route), []).append(run.succeeded / run.association_s)
    table = Table(title="node ingest: plain vs through an anonymizing AE (medians)")
    for col in ("set", "called AE", "inst/s", "anonymized / plain"):
        table.add_column(col, justify="right")
    for name in sets:
        plain = statistics.median(rates.get((name, "GRIDPACS"), [0]))
        anon = statistics.median(rates.get((name, "LUNG_STUDY"), [0]))
        if plain:
            table.add_row(name, "GRIDPACS (plain)", f"{plain:.0f}", "")
            table.add_row(name, "LUNG_STUDY (Basic)", f"{anon:.0f}", f"{anon / plain:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
