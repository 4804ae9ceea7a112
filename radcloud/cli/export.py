"""``radcloud export-training``: the labelled studies of Orthanc as a (de-identified) training
folder; also the ``--source orthanc`` step of ``radcloud train``."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from radcloud.cli._common import command, console, database, fail, get_settings, setup_logging

if TYPE_CHECKING:
    from training.orthanc_source import ExportManifest

__all__ = ["export_orthanc", "register", "training_source"]

ORTHANC_SOURCE = "orthanc"


def export_orthanc(
    task: str,
    out: Path,
    hospitals: list[str],
    keep_identifiers: bool,
    for_user: str | None = None,
) -> ExportManifest:
    """Export ``task``'s labelled studies to ``out`` (audited), print a summary; errors exit 1.

    With ``for_user``, the export is that user's: only their hospitals, identifiers kept only
    where they see identified data (an ml_engineer: ``radcloud users assign --identified``),
    recorded under their name.
    """
    from core.archive import open_archive
    from core.audit import AuditTrail
    from core.exceptions import RadcloudError
    from core.secrets import load_secrets
    from core.security import Accounts
    from imaging.exceptions import ImagingError
    from training.exceptions import TrainingError
    from training.orthanc_source import export_orthanc_source
    from training.tasks import Task

    try:
        task_value = Task(task)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    settings = get_settings()
    secrets = load_secrets(settings)
    db = database()
    audit = AuditTrail.from_secrets(db, secrets)
    user_name = getpass.getuser()
    if for_user is not None:
        try:
            hospitals = list(
                Accounts(db, audit).export_hospitals(
                    for_user, hospitals, keep_identifiers=keep_identifiers
                )
            )
        except RadcloudError as exc:
            fail(str(exc))
        user_name = f"{for_user} (exported by {user_name})"
    with open_archive(settings, secrets) as archive:
        try:
            manifest = export_orthanc_source(
                task_value,
                out,
                database=db,
                archive=archive,
                deid_key=secrets.deid_hmac_key,
                hospitals=hospitals,
                keep_identifiers=keep_identifiers,
                audit=audit,
                user_name=user_name,
                progress=True,
            )
        except (TrainingError, ImagingError) as exc:
            fail(str(exc))
    _print_summary(manifest)
    return manifest


def _print_summary(manifest: ExportManifest) -> None:
    table = Table("", "", title=f"{manifest.task.value} studies exported from Orthanc")
    table.add_row("studies", f"{manifest.positives} positive, {manifest.negatives} negative")
    table.add_row("instances, masks", f"{manifest.instances}, {manifest.masks}")
    table.add_row("hospitals", ", ".join(manifest.hospitals) or "-")
    table.add_row("unlabelled (not exported)", str(manifest.unlabelled))
    for reason, count in manifest.skipped_counts().items():
        table.add_row(f"skipped: {reason}", str(count))
    table.add_row(
        "de-identified",
        f"yes (scope {manifest.scope})"
        if manifest.deidentified
        else "[yellow]no[/]: identifiers kept",
    )
    table.add_row("folder", str(manifest.out_dir))
    console.print(table)


def training_source(
    task: str, source: str | None, data: Path | None, hospitals: list[str], keep_identifiers: bool
) -> Path:
    """``radcloud train --source orthanc``: export to ``RADCLOUD_HOME/training/<task>/orthanc``
    and return that folder, which training then reads as it reads ``--data``."""
    if source is None:
        raise typer.BadParameter(
            "--hospital and --keep-identifiers need --source orthanc", param_hint="--source"
        )
    if source != ORTHANC_SOURCE:
        raise typer.BadParameter(f'"{source}": expected "{ORTHANC_SOURCE}"', param_hint="--source")
    if data is not None:
        raise typer.BadParameter("give --data or --source orthanc, not both", param_hint="--source")
    folder = get_settings().home / "training" / task / ORTHANC_SOURCE
    manifest = export_orthanc(task, folder, hospitals, keep_identifiers)
    if manifest.studies == 0:
        fail(f"no labelled {task} studies to train on (see {folder / 'manifest.json'})")
    return folder


@command
def export_training(
    task: Annotated[str, typer.Option("--task", help="head-ct or chest-xr.")],
    out: Annotated[
        Path,
        typer.Option("--out", file_okay=False, help="New or empty folder, or an earlier export."),
    ],
    hospital: Annotated[
        list[str] | None,
        typer.Option("--hospital", help="Only this hospital's studies (repeatable; default all)."),
    ] = None,
    keep_identifiers: Annotated[
        bool,
        typer.Option(
            "--keep-identifiers",
            help="Keep UIDs and patient IDs (one --hospital only; the folder stays in its scope).",
        ),
    ] = False,
    for_user: Annotated[
        str | None,
        typer.Option(
            "--for-user",
            help="Export for this user: their hospitals only (default all of theirs); an "
            "ml_engineer's is de-identified unless granted identified access to the hospital.",
        ),
    ] = None,
) -> None:
    """Export the radiologist-labelled studies in Orthanc as a training folder (de-identified)."""
    setup_logging("WARNING")
    export_orthanc(task, out, hospital or [], keep_identifiers, for_user)


def register(app: typer.Typer) -> None:
    """Add ``export-training`` to ``app``."""
    app.command("export-training")(export_training)
