"""``gridpacs reconcile --period 2024-06 [--collection C] [--repair] [--json]``.

Exit codes: 0 no discrepancies (or, with ``--repair``, every repair accepted); 1
discrepancies remain (or a repair failed); 2 bad arguments or a refusal; 3 no catalog
replica answered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

RECONCILE_HELP = "Compare every node's instance counts with the catalog's; --repair fixes them."


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _factors(items: list[str]) -> dict[str, int]:
    factors = {}
    for item in items:
        name, _, value = item.partition("=")
        if not name or not value.isdigit() or int(value) < 1:
            _fail(f"--factor {item!r}: use COLLECTION=N with N >= 1", 2)
        factors[name] = int(value)
    return factors


def reconcile_cmd(
    catalog: Annotated[
        list[str],
        typer.Option("--catalog", help="Catalog replica HOST:PORT (repeatable: failover)."),
    ],
    period: Annotated[
        str, typer.Option(help="YYYY-MM (a month), YYYY-MM-DD or YYYYMMDD-YYYYMMDD.")
    ],
    collection: Annotated[
        list[str] | None, typer.Option(help="Only this collection (repeatable).")
    ] = None,
    node: Annotated[list[str] | None, typer.Option(help="Only this node (repeatable).")] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Republish, copy or retract what is missing.")
    ] = False,
    factor: Annotated[
        list[str] | None,
        typer.Option(help="Replication factor COLLECTION=N (repeatable)."),
    ] = None,
    default_factor: Annotated[int, typer.Option(min=1, help="Factor of the rest.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output, every UID.")] = False,
    show: Annotated[int, typer.Option(min=0, help="Missing UIDs per node shown.")] = 10,
    token: Annotated[str | None, typer.Option(help="API token (prefer --token-file).")] = None,
    token_file: Annotated[Path | None, typer.Option(help="File holding the API token.")] = None,
    ca: Annotated[Path | None, typer.Option(help="Grid CA certificate: use mTLS.")] = None,
    cert: Annotated[Path | None, typer.Option(help="Grid host certificate (mTLS).")] = None,
    key: Annotated[Path | None, typer.Option(help="Its key.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per catalog attempt.")] = 10.0,
) -> None:
    """Per node: instances of the period by StudyDate and by date received, on the node and
    in the catalog; what is missing where; with --repair, fix it."""
    from catalog.reconcile import Period

    try:
        wanted = Period.parse(period)
    except ValueError as exc:
        _fail(str(exc), 2)
    if ca is not None and (cert is None or key is None):
        _fail("with --ca give --cert and --key too (nodes require a client certificate)", 2)
    from gridpacs.reconcile.session import Options, run

    code = run(
        Options(
            catalog=tuple(catalog),
            period=wanted,
            collections=tuple(collection or ()),
            nodes=tuple(node or ()),
            repair=repair,
            factors=_factors(factor or []),
            default_factor=default_factor,
            as_json=as_json,
            show=show,
            token=_token(token, token_file),
            tls=None if ca is None else (ca, cert, key),  # type: ignore[arg-type]
            timeout=timeout,
        )
    )
    raise typer.Exit(code)


def _token(token: str | None, token_file: Path | None) -> str | None:
    if token and token_file:
        _fail("give --token or --token-file, not both", 2)
    if token_file is not None:
        try:
            return token_file.read_text().strip() or None
        except OSError as exc:
            _fail(f"cannot read token file {token_file}: {exc.strerror}", 2)
    return token
