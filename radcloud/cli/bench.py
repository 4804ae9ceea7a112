"""``radcloud bench``: run the benchmark suites and write a report (JSON, markdown, PNG plots)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from radcloud.cli._common import console, fail, setup_logging

__all__ = ["register"]


class Suite(StrEnum):
    """Benchmark suites (``benchmarks/``)."""

    INFERENCE = "inference"
    SERVING = "serving"
    INGEST = "ingest"
    E2E = "e2e"
    WORKLIST = "worklist"
    VIEWER = "viewer"
    FEDERATION = "federation"
    LOAD = "load"
    ALL = "all"


class Device(StrEnum):
    """Where models run."""

    CPU = "cpu"
    CUDA = "cuda"
    AUTO = "auto"


def bench(
    suite: Annotated[
        list[Suite] | None,
        typer.Option(
            "--suite",
            case_sensitive=False,
            help="Suite to run; repeat for several (default: all).",
        ),
    ] = None,
    device: Annotated[
        Device,
        typer.Option("--device", case_sensitive=False, help="cpu, cuda, or auto (CUDA if seen)."),
    ] = Device.AUTO,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="Slim models, tiny inputs, short windows (checks, not figures)."
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", file_okay=False, help="Results directory (default benchmarks/results)."
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="CPU threads for torch and ONNX Runtime in the inference suite.",
        ),
    ] = None,
    window: Annotated[
        float | None,
        typer.Option("--window", min=0.05, help="Seconds per timed window (inference, serving)."),
    ] = None,
    repeats: Annotated[
        int | None,
        typer.Option("--repeats", min=1, help="Timed windows per figure (inference, serving)."),
    ] = None,
    budget: Annotated[
        float | None,
        typer.Option(
            "--budget",
            min=1,
            help="Seconds the inference suite may spend measuring; larger batches that would "
            "overrun it are skipped and reported.",
        ),
    ] = None,
) -> None:
    """Measure inference (GPU vs CPU), serving efficiency, ingest, time to triage, worklist
    waits, the viewer's first image and federated search and retrieval; write
    <date>-<host>-<device>.json, .md and PNG plots."""
    from benchmarks.harness import BenchError, Timing, run_bench

    setup_logging("WARNING")
    suites = [s.value for s in suite] if suite else [Suite.ALL.value]
    try:
        with console.status("benchmarking") as status:
            report = run_bench(
                suites,
                device=device.value,
                quick=quick,
                out_dir=out,
                threads=threads,
                timing=Timing(window_s=window, repeats=repeats, budget_s=budget),
                progress=lambda line: status.update(f"benchmarking: {line}"),
            )
    except BenchError as exc:
        fail(str(exc), code=2)
    files = report["files"]
    directory = Path(files["directory"])
    console.print(f"report: {directory / files['json']}")
    console.print(f"summary: {directory / files['markdown']}")
    for name, file in files["plots"].items():
        console.print(f"plot ({name}): {directory / file}")
    for name, reason in report["skipped"].items():
        console.print(f"[yellow]suite {name} skipped:[/] {reason}", highlight=False)
    if report["errors"]:
        for name, message in report["errors"].items():
            console.print(f"[bold red]suite {name} failed:[/] {message}", highlight=False)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the ``radcloud`` command line."""
    app.command("bench")(bench)
