"""The ``radcloud`` command line. Each command group lives in its own module."""

from __future__ import annotations

import typer

from radcloud.cli import (
    audit,
    backup,
    bench,
    cohorts,
    demo,
    export,
    gateway,
    hospitals,
    models,
    patients,
    security,
    services,
    studies,
    synth,
    train,
)

__all__ = ["app", "main"]

app = typer.Typer(
    name="radcloud",
    help="radcloud: DICOM ingest, AI triage and remote reading.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
services.register(app)
security.register(app)
audit.register(app)
gateway.register(app)
hospitals.register(app)
models.register(app)
synth.register(app)
train.register(app)
export.register(app)
studies.register(app)
patients.register(app)
cohorts.register(app)
demo.register(app)
bench.register(app)
backup.register(app)


def main() -> None:
    """Entry point of the ``radcloud`` console script."""
    app()
