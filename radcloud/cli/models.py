"""``radcloud models list|show|promote|rollback|shadow|compare|import|ship|verify``: the model
registry.

The ``models`` package (torch, MONAI, ONNX Runtime: seconds to import) is imported when a
``models`` command runs, not when the ``radcloud`` command starts.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from core.audit import AuditAction, AuditedChange, AuditEventCode
from core.security import Actor
from radcloud.cli._common import audit_trail, command, console, fail, get_settings

if TYPE_CHECKING:
    from models.registry import ModelRegistry, RegisteredModel

__all__ = ["register"]

models_app = typer.Typer(help="Registered models: versions, stages, imports.", no_args_is_help=True)


def _registry(home: Path | None = None) -> ModelRegistry:
    """The registry of this radcloud, or of the radcloud home ``home`` (its ``models``)."""
    from models.registry import ModelRegistry

    return ModelRegistry(home / "models" if home is not None else get_settings().paths.models_dir)


_REGISTRY_OPTION = typer.Option(
    "--registry",
    help="The RADCLOUD_HOME whose registry to use (default: this radcloud's).",
    file_okay=False,
)


def _headline(model: RegisteredModel) -> str:
    metrics = model.card.metrics
    shown = [
        f"{label} {value:.3f}"
        for label, value in (
            ("AUC", metrics.auc),
            ("sens", metrics.sensitivity),
            ("spec", metrics.specificity),
            ("Dice", metrics.dice),
        )
        if value is not None
    ]
    return ", ".join(shown) or "-"


def _summary(model: RegisteredModel) -> dict[str, object]:
    return {
        "name": model.name,
        "version": model.version,
        "stage": str(model.stage),
        "task": str(model.card.task),
        "architecture": model.card.architecture.name if model.card.architecture else None,
        "created": model.card.created.isoformat(),
        "path": str(model.path),
    }


@models_app.command("list")
@command
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List every version of every registered model with its stage."""
    models = _registry().list_models()
    if as_json:
        for model in models:
            typer.echo(json.dumps(_summary(model)))
        return
    if not models:
        console.print(f"no models registered in {_registry().root}")
        return
    table = Table("name", "version", "stage", "task", "architecture", "metrics", "created")
    styles = {"production": "bold green", "staged": "yellow", "archived": "dim"}
    for model in models:
        table.add_row(
            model.name,
            str(model.version),
            f"[{styles[model.stage]}]{model.stage}[/]",
            str(model.card.task),
            model.card.architecture.name if model.card.architecture else "onnx only",
            _headline(model),
            model.card.created.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


@models_app.command("show")
@command
def show(
    name: str,
    version: Annotated[
        str | None,
        typer.Option("--version", "-v", help="A version number or 'production' (default: newest)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the card as plain JSON.")] = False,
) -> None:
    """Show a model version's card."""
    model = _registry().get(name, version)
    if as_json:
        typer.echo(model.card.to_json(), nl=False)
        return
    console.print(
        f"[bold]{model.name}[/] version {model.version}: [bold]{model.stage}[/]  ({model.path})"
    )
    console.print_json(model.card.to_json())


def _audited(
    action: AuditAction, name: str, change: str, **detail: object
) -> AbstractContextManager[AuditedChange]:
    """:meth:`~core.audit.AuditTrail.audited` for a change of which model version serves
    patients (110100 Application Activity on the model, by the OS user); a refusal is recorded
    with its reason."""
    return audit_trail().audited(
        AuditEventCode.APPLICATION_ACTIVITY,
        actor=Actor.cli(),
        action=action,
        resource_type="model",
        resource_id=name,
        detail={"change": change, **detail},
    )


@models_app.command("promote")
@command
def promote(
    name: str,
    version: int,
    force: Annotated[
        bool,
        typer.Option("--force", help="Promote despite the guard rails (needs --reason)."),
    ] = False,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why a forced promotion is right (audited).")
    ] = None,
) -> None:
    """Make VERSION the production version of NAME on the running service (no restart); the
    previous one is archived. Refused when the card is below the production version's floor or
    its input contract differs, unless --force --reason "..."."""
    from serving.promotion import promote_model

    done = promote_model(
        _registry(),
        audit_trail(),
        get_settings(),
        name,
        version,
        actor=Actor.cli(),
        force=force,
        reason=reason,
    )
    if done.previous == done.version:
        console.print(f"{name} version {version} is already production")
        return
    archived = f"; version {done.previous} archived" if done.previous else ""
    console.print(f"{name} version {done.version} is now [bold green]production[/]{archived}")
    for problem in done.overridden:
        console.print(f"[yellow]forced past[/]: {problem}")
    if done.caught_up:
        console.print(f"{done.caught_up} studies that arrived without a model queued for triage")


@models_app.command("rollback")
@command
def rollback(name: str) -> None:
    """Archive NAME's production version and restore the one in production before it, on the
    running service (no restart; always allowed)."""
    from serving.promotion import rollback_model

    done = rollback_model(_registry(), audit_trail(), name, actor=Actor.cli())
    was = f" (version {done.previous} archived)" if done.previous else ""
    console.print(f"{name} rolled back: version {done.version} is production again{was}")


@models_app.command("shadow")
@command
def shadow(
    name: str,
    version: Annotated[int | None, typer.Argument(help="The version to run in shadow.")] = None,
    stop: Annotated[bool, typer.Option("--stop", help="Stop NAME's shadow.")] = False,
) -> None:
    """Run VERSION of NAME in shadow: on every live study beside production, recording its
    scores for `radcloud models compare`, never shown on the worklist, notified or stored in the
    archive; shed first under load. One shadow per model; --stop ends it."""
    from serving.shadow import start_shadow, stop_shadow

    if stop == (version is not None):
        fail("give either a VERSION to run in shadow or --stop")
    if version is None:
        stopped = stop_shadow(_registry(), audit_trail(), name, actor=Actor.cli())
        console.print(
            f"{name}: shadow of version {stopped} stopped" if stopped else f"{name} had no shadow"
        )
        return
    replaced = start_shadow(_registry(), audit_trail(), name, version, actor=Actor.cli())
    was = f" (instead of version {replaced})" if replaced and replaced != version else ""
    console.print(f"{name} version {version} runs in [yellow]shadow[/] on live studies{was}")


def _figure(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@models_app.command("compare")
@command
def compare(
    name: str,
    version: Annotated[
        str | None,
        typer.Option("--version", "-v", help="The shadow version (default: the newest run)."),
    ] = None,
    truth: Annotated[
        Path | None,
        typer.Option(
            "--truth",
            help="A labels CSV (study_instance_uid, label) with the ground truth of the "
            "studies, e.g. the labels.csv of the synthetic dataset a demo pushed.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Compare NAME's shadow version with production on the same live studies: agreement, AUC,
    sensitivity and specificity against radiologist-confirmed labels (and --truth), latency and
    worker CPU time per study."""
    from core.db import Database
    from serving.shadow import compare_shadow, read_truth

    db = Database.from_settings(get_settings())
    try:
        result = compare_shadow(
            db, name, version=version, truth=read_truth(truth) if truth is not None else None
        )
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    shadowed = ", ".join(result.versions) or "-"
    production = ", ".join(result.production_versions) or "-"
    agreement = result.agreement
    console.print(
        f"[bold]{name}[/]: shadow version {shadowed} against production {production} on "
        f"{result.studies} studies ({result.failed} shadow failures, {result.shed} shed)"
    )
    console.print(
        f"agreement {_figure(agreement.fraction)}: both positive {agreement.both_positive}, "
        f"both negative {agreement.both_negative}, only shadow {agreement.only_shadow}, only "
        f"production {agreement.only_production}"
        + (f"; mask Dice {_figure(result.mask_dice_mean)}" if result.mask_dice_mean else "")
    )
    table = Table("truth", "version", "studies", "positive", "AUC", "sensitivity", "specificity")
    for truth_name, by_arm in result.truths.items():
        for arm, figures in by_arm.items():
            table.add_row(
                truth_name,
                arm,
                str(figures.studies),
                str(figures.positives),
                _figure(figures.auc),
                _figure(figures.sensitivity),
                _figure(figures.specificity),
            )
    console.print(table)
    costs = Table("per study", "version", "p50", "p95", "mean")
    for label, spread in (("latency ms", result.latency_ms), ("worker CPU ms", result.cpu_ms)):
        for arm, values in spread.items():
            costs.add_row(label, arm, *(_figure(values[k], 1) for k in ("p50", "p95", "mean")))
    console.print(costs)


@models_app.command("import")
@command
def import_(
    path: Annotated[Path, typer.Argument(help="A MONAI bundle directory or an .onnx file.")],
    name: Annotated[str | None, typer.Option("--name", help="Registry name.")] = None,
    metadata: Annotated[
        Path | None,
        typer.Option("--metadata", help="For an .onnx file: a model card or MONAI metadata JSON."),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="head-ct-triage, head-ct-lesion-seg or chest-xr-triage, when the metadata "
            "names none of these.",
        ),
    ] = None,
) -> None:
    """Import a MONAI bundle directory, or an ONNX file with its metadata, as a staged version."""
    registry = _registry()
    if path.is_dir():
        if metadata is not None:
            fail("--metadata is for an .onnx file; a bundle has configs/metadata.json")
    elif path.is_file():
        if metadata is None:
            fail(f"{path} is a file: expected --metadata JSON (model card or MONAI metadata)")
    else:
        fail(f"{path} does not exist: expected a bundle directory or an .onnx file")
    with _audited(AuditAction.CREATE, name or path.stem, "imported", source=str(path)) as change:
        if metadata is None:
            model = registry.import_bundle(path, name=name, task=task)
        else:
            model = registry.import_onnx(path, metadata, name=name, task=task)
        change.detail |= {"name": model.name, "version": model.version}
    console.print(f"imported {model.name} version {model.version} ([yellow]staged[/])")


@models_app.command("ship")
@command
def ship(
    name: str,
    version: int,
    registry: Annotated[Path | None, _REGISTRY_OPTION] = None,
    to: Annotated[
        Path | None,
        typer.Option("--to", help="The shipped-models directory (default: models/shipped)."),
    ] = None,
    reproduce: Annotated[
        str | None,
        typer.Option(
            "--command", help="The command that reproduces the training (default: as recorded)."
        ),
    ] = None,
    machine: Annotated[
        str | None,
        typer.Option("--machine", help="The machine it was trained on (default: as recorded)."),
    ] = None,
) -> None:
    """Ship VERSION of NAME into the repository: a bundle with float16 weights (parity-checked),
    its card and its provenance, which `radcloud demo` registers instead of training."""
    from models.shipping import SHIPPED_DIR
    from models.shipping import ship as ship_model

    model = _registry(registry).get(name, version)
    path = ship_model(model, to or SHIPPED_DIR, command=reproduce, machine=machine)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    console.print(
        f"shipped {name} version {version} to {path} ({size / 1e6:.1f} MB): {_headline(model)}"
    )


@models_app.command("verify")
@command
def verify(
    name: str,
    version: Annotated[
        str,
        typer.Option("--version", "-v", help="A version number or 'production'."),
    ] = "production",
    studies: Annotated[int, typer.Option(help="Fresh synthetic studies to draw.")] = 100,
    seed: Annotated[
        int | None, typer.Option(help="Their seed (default: one no training run uses).")
    ] = None,
    registry: Annotated[Path | None, _REGISTRY_OPTION] = None,
    save: Annotated[
        Path | None,
        typer.Option(help="Write the figures and every study's score to this JSON file."),
    ] = None,
) -> None:
    """Score a model through serving's own pre- and post-processing on fresh synthetic studies:
    AUC, sensitivity and specificity at the card's threshold, Dice, with 95 % intervals; exits 1
    when a figure is below the floor its card sets."""
    from rich.progress import Progress

    from serving.verify import DEFAULT_SEED, verify_model

    model = _registry(registry).get(name, version)
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task(f"verifying {name} v{model.version}", total=studies)
        result = verify_model(
            model,
            studies=studies,
            seed=DEFAULT_SEED if seed is None else seed,
            on_study=lambda done, _total: progress.update(bar, completed=done),
        )
    card = model.card.metrics
    on_card = {
        "auc": card.auc,
        "sensitivity": card.sensitivity,
        "specificity": card.specificity,
        "dice": card.dice,
    }
    score = "calibrated probability" if result.calibrated else "score"
    table = Table(
        "figure",
        "measured [95 % interval]",
        "card",
        "floor",
        title=f"{name} v{model.version} on {result.positives} positive and {result.negatives} "
        f"negative SYNTHETIC studies (seed {result.seed}); threshold {result.threshold:.3f} "
        f"on the {score}",
    )
    for figure, estimate in result.measured().items():
        floor = result.floors.get(figure)
        expected = on_card.get(figure)
        table.add_row(
            figure,
            str(estimate),
            "-" if expected is None else f"{expected:.3f}",
            "-" if floor is None else f"{floor:.3f}",
        )
    console.print(table)
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        console.print(f"wrote {save}")
    if not result.passed:
        fail(f"{name} v{model.version} is below its floor: {'; '.join(result.failures)}")
    console.print("[bold green]passed[/]: every figure reaches its floor")


def register(app: typer.Typer) -> None:
    """Add the ``models`` command group to ``app``."""
    app.add_typer(models_app, name="models")
