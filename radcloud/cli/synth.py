"""``radcloud synth``: write a SYNTHETIC dataset (DICOM studies, masks, labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from imaging.synthetic import SyntheticError, SyntheticTask, write_dataset
from radcloud.cli._common import console, fail, setup_logging

__all__ = ["register"]


def synth(
    task: Annotated[
        SyntheticTask,
        typer.Option("--task", case_sensitive=False, help="What to synthesise."),
    ],
    studies: Annotated[int, typer.Option("--studies", min=1, help="Number of studies.")],
    out: Annotated[
        Path,
        typer.Option("--out", file_okay=False, help="New or empty directory to write to."),
    ],
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Dataset seed (same seed, same data).")
    ] = 0,
    positive_fraction: Annotated[
        float,
        typer.Option(
            "--positive-fraction", min=0.0, max=1.0, help="Fraction of studies with a finding."
        ),
    ] = 0.4,
    studies_per_patient: Annotated[
        int, typer.Option("--studies-per-patient", min=1, help="Consecutive studies per patient.")
    ] = 1,
) -> None:
    """Write SYNTHETIC DICOM studies with ground-truth masks and labels (not for clinical use)."""
    setup_logging("WARNING")
    try:
        manifest = write_dataset(
            task,
            studies,
            seed,
            out,
            positive_fraction=positive_fraction,
            studies_per_patient=studies_per_patient,
            progress=True,
        )
    except SyntheticError as exc:
        fail(str(exc))
    table = Table("", "", title=f"SYNTHETIC {manifest.task.value} dataset (not for clinical use)")
    table.add_row("studies", f"{manifest.studies} ({manifest.positives} with a finding)")
    for finding, count in manifest.findings.items():
        table.add_row(f"  {finding}", str(count))
    table.add_row("instances", str(manifest.instances))
    table.add_row("seed", str(manifest.seed))
    table.add_row("labels", str(manifest.labels_csv))
    table.add_row("manifest", str(manifest.manifest_json))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``synth`` to the ``radcloud`` command line."""
    app.command("synth")(synth)
