"""``radcloud up``, ``radcloud down`` and ``radcloud status``: run radcloud's components."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Annotated, NoReturn

import typer
from rich.table import Table

from core.exceptions import ServiceError, StartupError
from radcloud.cli._common import command, console, err_console, fail, get_settings, setup_logging
from radcloud.services import ComponentStatus, Supervisor

__all__ = ["register"]

EXIT_COMPONENT_DOWN = 3


def _table(statuses: Sequence[ComponentStatus]) -> Table:
    table = Table(title="radcloud components")
    table.add_column("component", style="bold")
    table.add_column("URL / ports")
    table.add_column("pid", justify="right")
    table.add_column("health")
    for status in statuses:
        ports = ", ".join(str(port) for port, _ in status.ports)
        where = f"{status.url}\nports {ports}" if ports else status.url
        if status.healthy:
            health = "[green]healthy[/]"
        elif status.running:
            health = "[yellow]unhealthy[/]"
        else:
            health = "[red]down[/]"
        if status.details:
            health += "\n" + "\n".join(f"{key}: {value}" for key, value in status.details.items())
        table.add_row(status.name, where, str(status.pid or "-"), health)
    return table


def _setup_logging() -> None:
    setup_logging()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not every health-check poll


def _service_error(exc: ServiceError) -> NoReturn:
    """Exit 1 with a one-line message; a startup failure's log tail goes before it."""
    if isinstance(exc, StartupError):
        summary, _, tail = exc.reason.partition("\n")
        if tail:
            err_console.print(tail, style="dim", highlight=False, markup=False)
        where = f" (log: {exc.log_file})" if exc.log_file else ""
        fail(f"{exc.component} failed to start: {summary}{where}")
    fail(str(exc))


@command
def up() -> None:
    """Start Orthanc and the HTTP API (harmless when they already run)."""
    _setup_logging()
    try:
        statuses = Supervisor(get_settings()).up()
    except ServiceError as exc:
        _service_error(exc)
    console.print(_table(statuses))


@command
def down() -> None:
    """Stop every radcloud component (harmless when nothing runs)."""
    _setup_logging()
    try:
        stopped = Supervisor(get_settings()).down()
    except ServiceError as exc:
        _service_error(exc)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@command
def status(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list instead of a table.")
    ] = False,
) -> None:
    """Show each component's pid and health; exit status 3 when any is down."""
    statuses = Supervisor(get_settings()).status()
    if as_json:
        typer.echo(json.dumps([entry.to_dict() for entry in statuses], indent=2))
    else:
        console.print(_table(statuses))
    if not all(entry.healthy for entry in statuses):
        raise typer.Exit(EXIT_COMPONENT_DOWN)


def register(app: typer.Typer) -> None:
    """Add the ``up``, ``down`` and ``status`` commands to ``app``."""
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
