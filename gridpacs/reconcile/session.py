"""One ``gridpacs reconcile`` run: connect, gather, print, repair; returns the exit code."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from catalog.errors import CatalogError, CatalogUnavailable
from catalog.reconcile import Period, plan_repairs
from gridpacs.reconcile.nodes import InventoryClient
from gridpacs.reconcile.render import as_json, print_repair, print_report
from gridpacs.reconcile.run import RepairOutcome, gather, repair


@dataclass(frozen=True)
class Options:
    catalog: tuple[str, ...]
    period: Period
    collections: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    repair: bool = False
    factors: dict[str, int] = field(default_factory=dict)
    default_factor: int = 1
    as_json: bool = False
    show: int = 10
    token: str | None = None
    tls: tuple[Path, Path, Path] | None = None
    """(CA, certificate, key)."""
    timeout: float = 10.0


def run(options: Options) -> int:
    from catalog.client import GrpcCatalogClient
    from catalog.security.errors import SecurityError

    err = Console(stderr=True)
    try:
        credentials = None
        if options.tls is not None:
            from catalog.security import channel_credentials

            ca, cert, key = options.tls
            credentials = channel_credentials(cert, key, ca)
        with (
            GrpcCatalogClient(options.catalog, timeout=options.timeout,
                              stream_timeout=max(options.timeout, 600.0),
                              credentials=credentials, token=options.token) as catalog,
            InventoryClient(credentials) as nodes,
        ):  # fmt: skip
            return _run(options, catalog, nodes, err)
    except CatalogUnavailable as exc:
        err.print(f"error: {exc}", highlight=False)
        return 3
    except (CatalogError, SecurityError) as exc:
        err.print(f"error: {exc}", highlight=False)
        return 2


def _run(options: Options, catalog: object, nodes: InventoryClient, err: Console) -> int:
    progress = _progress(err, options.as_json)
    with progress:
        task = progress.add_task("listing nodes", total=None)
        gathered = gather(
            catalog,  # type: ignore[arg-type]
            nodes,
            options.period,
            collections=options.collections,
            only=options.nodes,
            factors=options.factors,
            default_factor=options.default_factor,
            listed=lambda name: progress.update(task, advance=1, description=f"listed {name}"),
        )
    result = gathered.result
    out = Console(file=sys.stdout, width=200 if not sys.stdout.isatty() else None)
    repaired: RepairOutcome | None = RepairOutcome() if options.repair else None
    if repaired is not None and result.discrepancies:
        plans = plan_repairs(result)
        progress = _progress(err, options.as_json)
        with progress:
            task = progress.add_task("repairing", total=sum(p.size for p in plans))
            repaired = repair(plans, gathered.addresses, nodes,
                              advance=lambda n: progress.update(task, advance=n))  # fmt: skip
        shortfall = [u for u in result.under_replicated if u.holders]
        if shortfall:
            repaired.failures.append(
                f"{len(shortfall)} instance(s) below their replication factor: "
                "not copied by reconcile (the replication refill does that)"
            )
    if options.as_json:
        sys.stdout.write(as_json(result, repaired) + "\n")
    else:
        print_report(out, result, options.show)
        if repaired is not None:
            print_repair(out, repaired)
    if repaired is not None:
        return 1 if repaired.failures else 0
    return 1 if result.discrepancies else 0


def _progress(console: Console, quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=True,
    )
