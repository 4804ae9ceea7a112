"""``radcloud audit verify|export`` and ``radcloud db upgrade|status``."""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TextIO

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
    """Recompute the keyed chain; exit 1, naming the first bad record and why, if any record
    was edited, deleted or inserted."""
    report = audit_trail().verify(actor=Actor.cli())
    if report.first_bad is not None:
        for problem in report.problems:
            console.print(f"[red]✗[/] {problem}")
        fail(
            f"audit trail is NOT intact ({report.records} records checked): first bad record "
            f"{report.first_bad.seq}: {report.first_bad.reason}"
        )
    console.print(f"[green]✓[/] audit trail intact: {report.records} records")


class ExportFormat(StrEnum):
    """What ``radcloud audit export`` writes."""

    JSONL = "jsonl"
    FHIR = "fhir"


@audit_app.command("export")
@command
def export(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="File to write (default: stdout).")
    ] = None,
    since: Annotated[
        dt.datetime | None, typer.Option(help="Only records at or after this UTC time.")
    ] = None,
    format_: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="jsonl: every record as stored, one JSON object a line; fhir: a FHIR R4 Bundle "
            "of AuditEvent with one hospital's records (needs --hospital), for its SIEM.",
        ),
    ] = ExportFormat.JSONL,
    hospital: Annotated[
        str | None, typer.Option(help="The hospital whose records a FHIR export holds.")
    ] = None,
) -> None:
    """Write the audit records as JSON lines, or one hospital's as FHIR AuditEvent."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)
    if format_ is ExportFormat.FHIR and not hospital:
        raise typer.BadParameter("--format fhir exports one hospital's records: give --hospital")
    if format_ is ExportFormat.JSONL and hospital:
        raise typer.BadParameter("--hospital scopes a FHIR export: add --format fhir")
    trail, actor = audit_trail(), Actor.cli()
    site = get_settings().site_name
    with _output(out) as handle:
        if format_ is ExportFormat.FHIR and hospital:
            count = trail.export_fhir(handle, hospital, since, actor=actor, site=site)
        else:
            count = trail.export(handle, since, actor=actor)
    typer.echo(f"{count} records exported", err=True)


@contextlib.contextmanager
def _output(out: Path | None) -> Iterator[TextIO]:
    """Standard output, or a file beside ``out`` that replaces it only once fully written (a
    refused or failed export leaves an existing ``out`` as it was)."""
    if out is None:
        yield sys.stdout
        return
    partial = out.with_name(f".{out.name}.partial")
    try:
        with partial.open("w", encoding="utf-8") as handle:
            yield handle
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)


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
