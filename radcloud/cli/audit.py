"""``radcloud audit verify|export`` and ``radcloud db upgrade|status``."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Annotated

import typer

from core.db import current_revision, head_revision
from core.security import Actor
from radcloud.cli._common import audit_trail, command, console, database, fail, get_settings

__all__ = ["register"]

audit_app = typer.Typer(help="Check and export the audit trail.", no_args_is_help=True)
db_app = typer.Typer(help="The application database.", no_args_is_help=True)


@audit_app.command("verify")
@command
def verify() -> None:
    """Recompute the hash chain; exit 1 if any record was edited, deleted or inserted."""
    report = audit_trail().verify(actor=Actor.cli())
    if not report.ok:
        for problem in report.problems:
            console.print(f"[red]✗[/] {problem}")
        fail(f"audit trail is NOT intact ({report.records} records checked)")
    console.print(f"[green]✓[/] audit trail intact: {report.records} records")


@audit_app.command("export")
@command
def export(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="File to write (default: stdout).")
    ] = None,
    since: Annotated[
        dt.datetime | None, typer.Option(help="Only records at or after this UTC time.")
    ] = None,
) -> None:
    """Write the audit records as JSON lines."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)
    trail, actor = audit_trail(), Actor.cli()
    if out is None:
        count = trail.export(sys.stdout, since, actor=actor)
    else:
        with out.open("w", encoding="utf-8") as handle:
            count = trail.export(handle, since, actor=actor)
    typer.echo(f"{count} records exported", err=True)


@db_app.command("upgrade")
@command
def db_upgrade() -> None:
    """Apply any pending schema migrations."""
    db = database()  # migrates on open
    console.print(f"database at revision {current_revision(db)}")


@db_app.command("status")
@command
def db_status() -> None:
    """Show the schema revision and the newest one this radcloud knows."""
    settings = get_settings()
    from core.db import Database

    db = Database.from_settings(settings)
    console.print(f"url: {db.engine.url.render_as_string(hide_password=True)}")
    console.print(f"revision: {current_revision(db)} (newest: {head_revision()})")


def register(app: typer.Typer) -> None:
    """Add the command groups to ``app``."""
    app.add_typer(audit_app, name="audit")
    app.add_typer(db_app, name="db")
