"""``radcloud backup`` and ``radcloud restore``: the logic is :mod:`core.backup`; here the
command line, the audit records of a backup, and starting the restored radcloud's database
and archive with ``up``'s own supervisor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from core.archive import open_archive
from core.audit import AuditAction, AuditEventCode, AuditOutcome
from core.backup import (
    RESTORED_SETTINGS,
    create_backup,
    read_passphrase,
    restore_backup,
)
from core.exceptions import RadcloudError
from core.secrets import load_secrets
from core.security import Actor
from radcloud.cli._common import (
    audit_trail,
    command,
    console,
    database,
    get_settings,
    setup_logging,
)
from radcloud.services import Supervisor
from radcloud.services.orthanc import orthanc_component
from radcloud.services.postgresql import postgresql_component

__all__ = ["register"]


@command
def backup(
    out: Annotated[Path, typer.Option("--out", "-o", help="New directory for the backup.")],
    since: Annotated[
        Path | None,
        typer.Option(
            help="A previous backup: its unchanged instance files are hard-linked, not fetched "
            "(default: the newest complete backup beside --out)."
        ),
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Fetch every instance; look for no previous backup.")
    ] = False,
    passphrase_file: Annotated[
        Path | None,
        typer.Option(
            help="Seal secrets.json into the backup with this file's passphrase (scrypt, "
            "AES-GCM); without it the secrets are left out and restore needs --secrets."
        ),
    ] = None,
) -> None:
    """Back up the application database, the archive, the models and the settings (online)."""
    setup_logging()
    if since is not None and full:
        raise typer.BadParameter("--since and --full exclude each other")
    settings = get_settings()
    passphrase = read_passphrase(passphrase_file) if passphrase_file else None
    secrets = load_secrets(settings)
    trail, actor = audit_trail(), Actor.cli()
    try:
        with open_archive(settings, secrets, timeout_s=120) as archive:
            result = create_backup(
                settings, database(), archive, out, since=since, full=full, passphrase=passphrase
            )
    except RadcloudError as exc:
        trail.record(
            AuditEventCode.EXPORT,
            actor=actor,
            action=AuditAction.READ,
            outcome=AuditOutcome.SERIOUS_FAILURE,
            resource_type="backup",
            resource_id=str(out.absolute()),
            detail={"change": "backup", "reason": str(exc)},
        )
        raise
    manifest = result.manifest
    trail.record(
        AuditEventCode.EXPORT,
        actor=actor,
        action=AuditAction.READ,
        resource_type="backup",
        resource_id=str(result.path),
        detail={"change": "backup", "counts": manifest.counts, "parts": manifest.parts},
    )
    counts = manifest.counts
    timings = manifest.timings_s
    console.print(
        f"[green]✓[/] backup {result.path}: {counts['studies']} studies in the database, "
        f"{counts['instances']} instances ({result.fetched} fetched, {result.linked} linked from "
        f"{manifest.incremental_from or 'no previous backup'})"
    )
    console.print(
        f"  time: database {timings['database']:.2f} s, archive {timings['archive']:.2f} s, "
        f"total {timings['total']:.2f} s; secrets: {manifest.parts['secrets']}",
        highlight=False,
    )


@command
def restore(
    directory: Annotated[Path, typer.Argument(help="A backup made by `radcloud backup`.")],
    force: Annotated[
        bool, typer.Option("--force", help="Replace what the home already holds.")
    ] = False,
    secrets: Annotated[
        Path | None,
        typer.Option(help="The backed-up radcloud's secrets.json (kept apart from the backup)."),
    ] = None,
    passphrase_file: Annotated[
        Path | None, typer.Option(help="The passphrase the backup's secrets were sealed with.")
    ] = None,
) -> None:
    """Restore a backup into this (fresh) RADCLOUD_HOME, start its database and Orthanc and
    store every instance; `radcloud up` starts the rest."""
    setup_logging()
    settings = get_settings()
    passphrase = read_passphrase(passphrase_file) if passphrase_file else None

    def start_database() -> None:
        if settings.postgresql_managed:
            Supervisor(settings, [postgresql_component(settings, load_secrets(settings))]).up()

    def start_archive() -> None:
        keys = load_secrets(settings)
        managed = [postgresql_component(settings, keys)] if settings.postgresql_managed else []
        Supervisor(settings, [*managed, orthanc_component(settings, keys)]).up()

    result = restore_backup(
        settings,
        directory,
        start_database=start_database,
        start_archive=start_archive,
        secrets_file=secrets,
        passphrase=passphrase,
        force=force,
    )
    counts = result.counts
    console.print(
        f"[green]✓[/] restored {directory} (made {result.manifest.created_at}) into "
        f"{settings.home}: {counts['studies']} studies, {result.instances} instances, "
        f"{counts['worklist_items']} worklist items, {counts['reports']} reports; audit trail "
        f"intact ({result.audit_records} records)"
    )
    console.print(
        f"  the backed-up settings are in {settings.home / RESTORED_SETTINGS}; Orthanc runs: "
        "`radcloud up` starts the rest",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``backup`` and ``restore`` to ``app``."""
    app.command("backup")(backup)
    app.command("restore")(restore)
