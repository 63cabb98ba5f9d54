"""``app signals``: the advisor's report in the terminal, as JSON, or a link into /ops.

    app signals                 a colour table (stderr): stage, fired signals first, advice
    app signals --json          the document GET /ops/signals returns (stdout)
    app signals --since 1h      adds each signal's recorded samples: how often it fired, max
    app signals --link          a one-time path into the /ops page for a browser

It works against any DATABASE_URL: database signals are measured on the spot; HTTP, pool,
cache and host signals come from what live web processes reported (unknown without one).
"""

from __future__ import annotations

import re
import sys
from typing import Annotated, Any

import asyncpg
import orjson
import typer
from rich.table import Table

from app.cli.common import err, run_with_services, settings
from app.services import Services
from app.signals.model import format_number

STATUS_STYLE = {"ok": "green", "warn": "yellow", "critical": "bold red", "unknown": "dim"}
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(cli: typer.Typer) -> None:
    cli.command("signals")(signals)


def parse_since(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match is None:
        raise typer.BadParameter("a duration such as 90s, 30m, 1h or 7d", param_hint="--since")
    return float(match[1]) * UNITS[match[2]]


def signals(
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document.")] = False,
    since: Annotated[
        str | None, typer.Option(help="Summarise recorded samples over this long (1h, 7d).")
    ] = None,
    link: Annotated[bool, typer.Option("--link", help="Print a one-time /ops link.")] = False,
) -> None:
    """The scaling advisor: every signal, the stage, and the flag to flip (docs/signals.md)."""
    seconds = parse_since(since) if since is not None else None

    async def report(services: Services) -> dict[str, Any]:
        from app.signals import history, measure
        from app.signals.router import create_link

        if link:
            return {"path": await create_link(services)}
        document = (await measure(services.db, services.settings)).document()
        if seconds is not None:
            async with services.db.acquire() as conn:
                document["history"] = await history.summary(conn, seconds)
        return document

    try:
        document = run_with_services(report, settings())
    except asyncpg.UndefinedTableError as exc:
        err.print(f"[red]{exc}: this database is not migrated; run `app migrate`[/]")
        raise typer.Exit(1) from None
    if link:
        err.print("open within a minute, once, on this app's base URL:")
        sys.stdout.write(document["path"] + "\n")
        return
    if as_json:
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    print_table(document)


def print_table(document: dict[str, Any]) -> None:
    """Stage, a compact table (fired first), then what to do about each fired signal."""
    stage = document["stage"]
    err.print(f"[bold]Stage {stage['number']}: {stage['name']}[/]  ({document['sampled_at']})")
    for reason in stage["reasons"]:
        err.print(f"  - {reason}")
    history = document.get("history")
    table = Table()
    for column in ("status", "signal", "value", "warn / crit"):
        table.add_column(column, no_wrap=True, min_width=8 if column == "status" else None)
    if history is not None:
        table.add_column("fired / samples", no_wrap=True)
    unknown: dict[str, list[str]] = {}
    for item in document["signals"]:
        value = "-" if item["value"] is None else f"{format_number(item['value'])} {item['unit']}"
        row = [
            f"[{STATUS_STYLE[item['status']]}]{item['status'].upper()}[/]",
            item["key"],
            value,
            f"{format_number(item['warn'])} / {format_number(item['critical'])}",
        ]
        if history is not None:
            seen = history.get(item["key"])
            row.append(f"{seen['fired']} / {seen['samples']}" if seen else "-")
        table.add_row(*row)
        if item["status"] == "unknown":
            unknown.setdefault(item["recommendation"], []).append(item["key"])
    err.print(table)
    for item in document["signals"]:
        if item["status"] in ("warn", "critical"):
            flag = f" [bold]→ {item['flag']}[/]" if item["flag"] else ""
            err.print(
                f"[{STATUS_STYLE[item['status']]}]{item['key']}[/]: {item['recommendation']}{flag}"
            )
            for line in item["details"]:
                err.print(f"    {line}", highlight=False)
    for reason, keys in unknown.items():
        err.print(f"[dim]unknown ({', '.join(keys)}): {reason}[/]")
    for line in document["advice"]:
        err.print(f"[bold]advice:[/] {line}")
    flags = ", ".join(f"{name}={value}" for name, value in document["flags"].items())
    err.print(f"flags: {flags}")
