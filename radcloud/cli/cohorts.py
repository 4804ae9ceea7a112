"""``radcloud cohorts``: research cohorts (:mod:`serving.cohorts`) from the command line, and
the ``--source cohort:ID`` step of ``radcloud train``.

The command line acts as the OS user running it (audited as such, like every command): it sees
every cohort. Answers are what the API answers: counts per hospital with small cells
suppressed and the de-identified study list; never an original identifier.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from core.security import Actor
from radcloud.cli._common import (
    audit_trail,
    command,
    console,
    database,
    fail,
    get_settings,
)

if TYPE_CHECKING:
    from serving.cohorts import CohortAnswer, CohortService

__all__ = ["COHORT_SOURCE_PREFIX", "cohort_training_source", "register"]

COHORT_SOURCE_PREFIX = "cohort:"
CohortIdArgument = Annotated[int, typer.Argument(min=1, max=2**31 - 1, help="the cohort's ID")]

cohorts_app = typer.Typer(
    help="Research cohorts: counts per hospital (small cells suppressed) and de-identified "
    "study lists to train on (radcloud train --source cohort:ID).",
    no_args_is_help=True,
)


@contextlib.contextmanager
def _service() -> Iterator[CohortService]:
    from core.archive import open_archive
    from core.secrets import load_secrets
    from serving.cohorts import CohortService

    settings = get_settings()
    secrets = load_secrets(settings)
    with open_archive(settings, secrets) as archive:
        yield CohortService(
            db=database(),
            audit=audit_trail(),
            archive=archive,
            deid_key=secrets.deid_hmac_key,
            min_cell_size=settings.cohort_min_cell_size,
        )


def _print(answer: CohortAnswer, *, studies: bool = True) -> None:
    title = f"cohort {answer.cohort_id}" + (f" ({answer.name})" if answer.name else "")
    query = {k: v for k, v in answer.query.to_json().items() if v is not None}
    console.print(
        f"[bold]{title}[/] by {answer.created_by}, run {answer.runs}x, last "
        f"{answer.run_at:%Y-%m-%d %H:%M} UTC; query {query}"
    )
    table = Table("hospital", "studies", title=f"minimum cell size {answer.min_cell_size}")
    for cell in answer.hospitals:
        table.add_row(cell.hospital, cell.shown)
    table.add_row("[bold]total[/]", answer.total_shown)
    console.print(table)
    if answer.list_withheld:
        console.print(f"no study list: {answer.list_withheld}")
    elif studies:
        rows = Table(
            "study (de-identified)", "patient", "date (shifted)", "modality", "body part", "finding"
        )
        for row in answer.studies:
            rows.add_row(
                row.study_instance_uid,
                row.patient_pseudonym,
                row.study_date or "",
                row.modality or "",
                row.body_part or "",
                str(row.finding),
            )
        console.print(rows)


@cohorts_app.command("create")
@command
def cohorts_create(
    modality: Annotated[str | None, typer.Option("--modality", help="e.g. CT")] = None,
    body_part: Annotated[str | None, typer.Option("--body-part", help="e.g. HEAD")] = None,
    date_from: Annotated[
        dt.datetime | None, typer.Option("--from", formats=["%Y-%m-%d"], help="first study date")
    ] = None,
    date_to: Annotated[
        dt.datetime | None, typer.Option("--to", formats=["%Y-%m-%d"], help="last study date")
    ] = None,
    label: Annotated[
        str | None, typer.Option("--label", help="a radiologist's finding, e.g. haemorrhage")
    ] = None,
    absent: Annotated[
        bool, typer.Option("--absent", help="with --label: the finding labelled absent")
    ] = False,
    ai_model: Annotated[str | None, typer.Option("--ai-model", help="an AI model's name")] = None,
    ai_critical: Annotated[
        bool, typer.Option("--ai-critical", help="an AI result flagged critical")
    ] = False,
    min_score: Annotated[
        float | None, typer.Option("--min-score", min=0, max=1, help="AI score at least")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="a name for the cohort")] = None,
) -> None:
    """Define, run and store a cohort (audited); print its counts and study list."""
    from serving.cohorts import AiFinding, CohortQuery, InvalidCohortQueryError, LabelFinding

    try:
        query = CohortQuery(
            modality=modality,
            body_part=body_part,
            study_date_from=date_from.date() if date_from else None,
            study_date_to=date_to.date() if date_to else None,
            ai_finding=AiFinding(ai_model, True if ai_critical else None, min_score)
            if ai_model or ai_critical or min_score is not None
            else None,
            label=LabelFinding(label, not absent) if label else None,
        )
    except InvalidCohortQueryError as exc:
        raise typer.BadParameter(exc.reason) from exc
    with _service() as service:
        _print(service.create(Actor.cli(), query, name=name))


@cohorts_app.command("show")
@command
def cohorts_show(cohort_id: CohortIdArgument) -> None:
    """A stored cohort: counts and de-identified study list (audited)."""
    with _service() as service:
        _print(service.get(Actor.cli(), cohort_id))


@cohorts_app.command("run")
@command
def cohorts_run(cohort_id: CohortIdArgument) -> None:
    """Run a stored cohort's query again (audited)."""
    with _service() as service:
        _print(service.rerun(Actor.cli(), cohort_id))


@cohorts_app.command("list")
@command
def cohorts_list() -> None:
    """Every cohort, newest first (counts only)."""
    table = Table("id", "name", "by", "last run", "total")
    with _service() as service:
        answers = service.cohorts(Actor.cli())
    for answer in answers:
        table.add_row(
            str(answer.cohort_id),
            answer.name or "",
            answer.created_by,
            f"{answer.run_at:%Y-%m-%d %H:%M}",
            answer.total_shown,
        )
    console.print(table)


def cohort_training_source(task: str, source: str, data: Path | None) -> Path:
    """``radcloud train --source cohort:ID``: export the cohort to
    ``RADCLOUD_HOME/training/<task>/cohort-<ID>`` (audited) and return that folder."""
    from core.archive import open_archive
    from core.secrets import load_secrets
    from imaging.exceptions import ImagingError
    from training.cohort_source import export_cohort_source
    from training.exceptions import TrainingError

    if data is not None:
        raise typer.BadParameter(
            "give --data or --source cohort:ID, not both", param_hint="--source"
        )
    text = source.removeprefix(COHORT_SOURCE_PREFIX)
    if not text.isdigit() or not 1 <= int(text) < 2**31:
        raise typer.BadParameter(
            f'"{source}": expected cohort:ID, e.g. cohort:3', param_hint="--source"
        )
    cohort_id = int(text)
    settings = get_settings()
    secrets = load_secrets(settings)
    folder = settings.home / "training" / task / f"cohort-{cohort_id}"
    with open_archive(settings, secrets) as archive:
        try:
            manifest = export_cohort_source(
                cohort_id,
                task,
                folder,
                database=database(),
                archive=archive,
                deid_key=secrets.deid_hmac_key,
                audit=audit_trail(),
                user_name=getpass.getuser(),
                progress=True,
            )
        except (TrainingError, ImagingError) as exc:
            fail(str(exc))
    table = Table("", "", title=f"cohort {cohort_id} exported for {task}")
    table.add_row("studies", f"{manifest.positives} positive, {manifest.negatives} negative")
    table.add_row("listed in the cohort", str(manifest.listed))
    table.add_row(
        "instances (withheld: burned-in)", f"{manifest.instances} ({manifest.withheld_instances})"
    )
    table.add_row("unlabelled (not exported)", str(manifest.unlabelled))
    for reason, count in manifest.skipped_counts().items():
        table.add_row(f"skipped: {reason}", str(count))
    table.add_row("folder", str(folder))
    console.print(table)
    if manifest.studies == 0:
        fail(f"no labelled {task} studies in cohort {cohort_id} (see {folder / 'manifest.json'})")
    return folder


def register(app: typer.Typer) -> None:
    """Add ``cohorts`` to ``app``."""
    app.add_typer(cohorts_app, name="cohorts")
