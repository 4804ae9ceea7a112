"""``radcloud train --task head-ct|chest-xr --preset tiny|demo|full``."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from radcloud.cli._common import command, console, get_settings, setup_logging
from radcloud.cli.cohorts import COHORT_SOURCE_PREFIX, cohort_training_source
from radcloud.cli.export import training_source

__all__ = ["register"]


@contextlib.contextmanager
def epoch_progress(description: str) -> Iterator[Callable[[int, int, dict[str, float]], None]]:
    """A progress bar over training epochs; yields the ``on_epoch`` callback that moves it."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} epochs"),
        TextColumn("{task.fields[metrics]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task(description, total=None, metrics="")

        def on_epoch(epoch: int, total: int, metrics: dict[str, float]) -> None:
            shown = "  ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            progress.update(bar, total=total, completed=epoch, metrics=shown)

        yield on_epoch


@command
def train(
    task: Annotated[str, typer.Option("--task", help="head-ct or chest-xr.")],
    preset: Annotated[str, typer.Option("--preset", help="tiny, demo or full.")] = "demo",
    data: Annotated[
        Path | None,
        typer.Option("--data", help="A folder with labels.csv (default: SYNTHETIC studies)."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the preset's epochs.")] = None,
    studies: Annotated[int | None, typer.Option(help="Synthetic studies to generate.")] = None,
    workers: Annotated[
        int, typer.Option("--workers", help="Ray Train workers (1: single process).")
    ] = 1,
    gpu: Annotated[
        bool, typer.Option("--gpu", help="Train on CUDA (each worker one GPU).")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of data, split salt and weights.")] = 0,
    register: Annotated[
        bool, typer.Option(help="Register the model as a new staged version.")
    ] = True,
    # --- Orthanc source (radcloud/cli/export.py) ---
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="orthanc: the radiologist-labelled studies in Orthanc, exported de-identified; "
            "cohort:ID: a research cohort's studies (radcloud cohorts create), de-identified.",
        ),
    ] = None,
    hospital: Annotated[
        list[str] | None,
        typer.Option("--hospital", help="With --source orthanc: only this hospital (repeatable)."),
    ] = None,
    keep_identifiers: Annotated[
        bool,
        typer.Option(
            "--keep-identifiers", help="With --source orthanc and one --hospital: keep identifiers."
        ),
    ] = False,
    # --- end of the Orthanc source options ---
) -> None:
    """Train a model and register it as a new staged version."""
    from training.pipeline import Preset
    from training.pipeline import train as run
    from training.registration import registry_callback
    from training.tasks import Task

    setup_logging("WARNING")
    # MONAI looks for NVIDIA's nvImageCodec on import and warns when it is absent: irrelevant.
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
    settings = get_settings()
    try:
        task_value, preset_value = Task(task), Preset(preset)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    # --- cohort source: export the cohort's studies de-identified, then train on them ---
    if source is not None and source.startswith(COHORT_SOURCE_PREFIX):
        if hospital or keep_identifiers:
            raise typer.BadParameter(
                "a cohort is de-identified across hospitals: no --hospital or --keep-identifiers",
                param_hint="--source",
            )
        data = cohort_training_source(task_value.value, source, data)
    # --- Orthanc source: export to a folder, then train on it as on --data ---
    elif source is not None or hospital or keep_identifiers:
        data = training_source(task_value.value, source, data, hospital or [], keep_identifiers)
    # --- end of the Orthanc source ---
    with epoch_progress(f"training {task_value}") as on_epoch:
        report = run(
            task_value,
            preset_value,
            home=settings.home,
            source=data,
            register=registry_callback(settings.paths.models_dir) if register else None,
            on_epoch=on_epoch,
            epochs=epochs,
            studies=studies,
            workers=workers,
            gpu=gpu,
            seed=seed,
        )
    test = report.metrics["test"]
    table = Table(title=f"{report.model_name} on held-out test patients", show_header=True)
    table.add_column("metric")
    table.add_column("model", justify="right")
    table.add_column("hand-rule baseline", justify="right")
    table.add_row("AUC", f"{test['auc']:.3f}", f"{report.baseline['auc']:.3f}")
    table.add_row("sensitivity @ threshold", f"{test['sensitivity']:.3f}", "")
    table.add_row("specificity @ threshold", f"{test['specificity']:.3f}", "")
    if test.get("lesion_dice") is not None:
        table.add_row("lesion Dice (positives)", f"{test['lesion_dice']:.3f}", "")
    console.print(table)
    console.print(
        f"split {json.dumps(report.split_counts)}; "
        f"time {', '.join(f'{k} {v:.0f} s' for k, v in report.seconds.items())}"
    )
    if data is None:
        console.print("[yellow]SYNTHETIC data: a demo model, not for clinical use.[/]")
    console.print(f"plots and report: {report.output_dir}")
    if report.version is not None:
        console.print(
            f"registered [bold]{report.model_name}[/] version {report.version} (staged); "
            f"promote with: radcloud models promote {report.model_name} {report.version}"
        )


def register(app: typer.Typer) -> None:
    """Add ``train`` to ``app``."""
    app.command("train")(train)
