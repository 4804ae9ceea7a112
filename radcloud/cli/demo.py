"""``radcloud demo``: the main job, end to end, on SYNTHETIC studies.

1. Models: for each task without a production model, register the model shipped with radcloud
   (``models/shipped/``, :mod:`models.shipping`) and promote it; with ``--retrain`` (or when
   none is shipped) train the demo preset instead (progress bars), register it and promote it
   (a demo convenience: in a real deployment an ML engineer promotes after review).
2. Services: ``radcloud up`` (restarting serving when models were just trained, since serving
   deploys the production models it finds at start).
3. Studies: synthetic head CTs and chest radiographs (a seed the training data never used) are
   sent to the DICOM gateway with dcmtk's ``storescu``, one association per study, as a PACS
   would.
4. Triage: waits until every study has its AI result, then prints the worklist in priority
   order with scores, critical flags and the time from a study's last instance to its result.

The services stay up; the command prints their URLs and how to stop them.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select

from core.config import Settings, url_host
from radcloud.cli._common import command, console, fail, get_settings, setup_logging
from radcloud.cli.train import epoch_progress

__all__ = ["register"]

logger = logging.getLogger(__name__)

DEMO_SENDER = "DEMO_PACS"
DEMO_HOSPITAL = "Demo Hospital (SYNTHETIC)"
_TASKS = ("head-ct", "chest-xr")


def _missing_models(settings: Settings) -> list[str]:
    from models.registry import ModelRegistry
    from training.tasks import task_spec

    registry = ModelRegistry(settings.paths.models_dir)
    names = set(registry.names())
    return [
        task
        for task in _TASKS
        if task_spec(task).model_name not in names
        or registry.production(task_spec(task).model_name) is None
    ]


def _use_shipped(settings: Settings, task: str, shipped: Path) -> bool:
    """Register and promote the shipped model of ``task``; ``False`` when none is shipped."""
    from models.registry import ModelRegistry
    from models.shipping import shipped_bundles
    from training.tasks import task_spec

    bundle = shipped_bundles(shipped).get(task_spec(task).model_name)
    if bundle is None:
        return False
    registry = ModelRegistry(settings.paths.models_dir)
    with console.status(f"registering the shipped {task} model"):
        model = registry.import_bundle(bundle)
        registry.promote(model.name, model.version)
    metrics = model.card.metrics
    shown = ", ".join(
        f"{label} {value:.3f}"
        for label, value in (("test AUC", metrics.auc), ("lesion Dice", metrics.dice))
        if value is not None
    )
    console.print(
        f"{model.name} v{model.version}: the shipped model ({shown or 'no test figures'}); "
        "promoted to production. [yellow]SYNTHETIC demo model: not for clinical use.[/]"
    )
    return True


def _train(settings: Settings, task: str) -> None:
    from models.registry import ModelRegistry
    from training.pipeline import Preset
    from training.pipeline import train as run
    from training.registration import registry_callback
    from training.tasks import Task

    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
    with epoch_progress(f"training the {task} demo model") as on_epoch:
        report = run(
            Task(task),
            Preset.DEMO,
            home=settings.home,
            register=registry_callback(settings.paths.models_dir),
            on_epoch=on_epoch,
        )
    if report.version is None:
        fail(f"training {task} registered no model")
    ModelRegistry(settings.paths.models_dir).promote(report.model_name, report.version)
    test = report.metrics["test"]
    console.print(
        f"{report.model_name} v{report.version}: test AUC {test['auc']:.3f}"
        + (f", lesion Dice {test['lesion_dice']:.3f}" if test.get("lesion_dice") else "")
        + f" (hand-rule baseline AUC {report.baseline['auc']:.3f}); promoted to production. "
        "[yellow]SYNTHETIC demo model: not for clinical use.[/]"
    )


def _services(settings: Settings, restart_serving: bool) -> None:
    from radcloud.services import Supervisor

    supervisor = Supervisor(settings)
    if restart_serving and any(s.healthy for s in supervisor.status() if s.name == "api"):
        console.print("restarting the services so that serving deploys the new models")
        supervisor.down()
    with console.status("starting Orthanc, the DICOM gateway and Ray Serve"):
        supervisor.up()


def _push_host(settings: Settings) -> str:
    """Where the demo sends to, and so the address its associations come from."""
    return url_host(settings.bind_host).strip("[]")


def _sender(settings: Settings) -> None:
    from core.audit import AuditTrail
    from core.db import Database
    from core.secrets import load_secrets
    from core.security import Actor
    from dicom_gateway.senders import SenderRegistry

    db = Database.from_settings(settings)
    registry = SenderRegistry(
        db, AuditTrail.from_secrets(db, load_secrets(settings)), edge=settings.gateway_edge
    )
    if DEMO_SENDER not in {s.ae_title for s in registry.list_senders()}:
        # bound to the address it sends from (prod admits no unbound sender)
        registry.add_sender(DEMO_SENDER, DEMO_HOSPITAL, _push_host(settings), actor=Actor.cli())
    db.dispose()
    from dicom_gateway.edge.peers import wait_until_admitted

    if not wait_until_admitted(settings, [DEMO_SENDER], timeout_s=15):
        fail(f"the Orthanc edge did not admit the demo sender {DEMO_SENDER} in 15 s")


def _push(settings: Settings, studies: int, seed: int) -> list[tuple[str, str, float]]:
    """Send synthetic studies; return (study uid, task, time its last instance was stored)."""
    from dicom_gateway.dcmtk import storescu
    from imaging.synthetic import generate_study

    sent = []
    with tempfile.TemporaryDirectory() as tmp, Progress(console=console) as progress:
        bar = progress.add_task("sending studies with storescu", total=studies * len(_TASKS))
        for index in range(studies):
            for task in _TASKS:
                study = generate_study(task, index, seed)
                folder = Path(tmp) / f"{task}-{index}"
                folder.mkdir()
                paths = []
                for number, dataset in enumerate(study.datasets):
                    path = folder / f"{number:04d}.dcm"
                    dataset.save_as(path, enforce_file_format=True)
                    paths.append(path)
                report = storescu(
                    paths,
                    host=_push_host(settings),
                    port=settings.gateway_port,
                    calling_ae=DEMO_SENDER,
                    called_ae=settings.gateway_ae_title,
                )
                if len(report.stored) != len(paths):
                    fail(f"the gateway did not accept {task} study {index}: {report.output[-500:]}")
                sent.append((study.study_instance_uid, task, time.time()))
                progress.advance(bar)
    return sent


def _wait_for_triage(settings: Settings, uids: list[str], timeout_s: float) -> None:
    from core.db import Database
    from core.db.models import InferenceResult, InferenceStatus, Study

    db = Database.from_settings(settings)
    deadline = time.monotonic() + timeout_s
    with Progress(
        TextColumn("[bold]waiting for triage"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} studies"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("triage", total=len(uids))
        while True:
            with db.session() as session:
                done = session.scalars(
                    select(Study.study_instance_uid)
                    .join(InferenceResult, InferenceResult.study_id == Study.id)
                    .where(
                        Study.study_instance_uid.in_(uids),
                        InferenceResult.status != InferenceStatus.PENDING,
                    )
                    .distinct()
                ).all()
            progress.update(bar, completed=len(done))
            if len(done) == len(uids):
                break
            if time.monotonic() > deadline:
                db.dispose()
                fail(
                    f"{len(uids) - len(done)} studies have no AI result after {timeout_s:g} s: "
                    f"see {settings.paths.log_dir}/api.log and `radcloud status`"
                )
            time.sleep(1.0)
    db.dispose()


def _worklist(settings: Settings, uids: set[str]) -> None:
    from core.db import Database
    from core.db.models import Hospital, InferenceResult, Study, WorklistItem
    from serving.worklist import priority_key

    db = Database.from_settings(settings)
    with db.session() as session:
        rows: list[Any] = list(
            session.execute(
                select(WorklistItem, Study, Hospital)
                .join(Study, WorklistItem.study_id == Study.id)
                .outerjoin(Hospital, Study.hospital_id == Hospital.id)
                .where(Study.study_instance_uid.in_(uids))
            )
        )
        results: dict[int, list[InferenceResult]] = {}
        for result in session.scalars(
            select(InferenceResult).where(InferenceResult.study_id.in_([r[1].id for r in rows]))
        ):
            results.setdefault(result.study_id, []).append(result)
        rows.sort(key=lambda r: priority_key(r[0].due_at, r[0].ai_score, r[1].ready_at))
        table = Table(title="radcloud worklist (SYNTHETIC studies, demo models)")
        columns = ("#", "priority", "AI", "score", "modality", "study", "model")
        for column in (*columns, "to triage"):
            table.add_column(column, justify="right" if column == "#" else "left")
        calibrated = _calibrated_models(settings)
        for rank, (item, study, _hospital) in enumerate(rows, start=1):
            found = results.get(study.id, [])
            flag = "[bold red]CRITICAL[/]" if any(r.critical for r in found) else item.ai_status
            latency = max(
                ((r.timings or {}).get("time_to_triage_s", 0.0) for r in found), default=0.0
            )
            models = ", ".join(f"{r.model_name} v{r.model_version}" for r in found)
            table.add_row(
                str(rank),
                item.priority_class,
                flag,
                _score_text(found, calibrated) if item.ai_score is not None else "-",
                study.modalities or "",
                (study.study_description or "")[:32],
                models,
                f"{latency:.1f} s",
            )
    db.dispose()
    console.print(table)


def _calibrated_models(settings: Settings) -> set[tuple[str, str]]:
    """(name, version) of the registered models whose card calibrates their score."""
    from models.registry import ModelRegistry

    return {
        (model.name, str(model.version))
        for model in ModelRegistry(settings.paths.models_dir).list_models()
        if model.card.calibration is not None
    }


def _score_text(results: list[Any], calibrated: set[tuple[str, str]]) -> str:
    """The most urgent result's score, as serving stored it, in the words the SR and the web
    app use (:func:`imaging.sr.score_statement`)."""
    from imaging.sr import score_statement

    scored = [r for r in results if r.score is not None]
    if not scored:
        return "-"

    def threshold(result: Any) -> float | None:
        value = (result.findings or {}).get("threshold")
        return float(value) if value is not None else None

    def urgency(result: Any) -> float:
        limit = threshold(result)
        return float(result.score) / limit if limit else float(result.score)

    lead = max(scored, key=urgency)
    return score_statement(
        float(lead.score), threshold(lead), (lead.model_name, lead.model_version) in calibrated
    )


def demo(
    studies: Annotated[int, typer.Option(help="Studies of each task to send.")] = 4,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed of the studies (default: from the clock, new studies each run)."),
    ] = None,
    timeout_s: Annotated[float, typer.Option(help="How long to wait for triage.")] = 900.0,
    retrain: Annotated[
        bool,
        typer.Option(
            "--retrain",
            help="Train the demo models (minutes per task) and promote them, instead of using "
            "the shipped ones.",
        ),
    ] = False,
    shipped: Annotated[
        Path | None,
        typer.Option(help="Directory of shipped models (default: radcloud's models/shipped)."),
    ] = None,
) -> None:
    """Register the shipped models (or train with --retrain), start everything, send synthetic
    studies, show the triaged worklist."""
    from models.shipping import SHIPPED_DIR

    setup_logging("WARNING")
    # The supervisor leaves its components running on purpose: not a leaked subprocess.
    warnings.filterwarnings("ignore", category=ResourceWarning)
    settings = get_settings()
    started = time.monotonic()
    seed = seed if seed is not None else 1000 + int(time.time()) % 1_000_000  # training used 0
    changed = list(_TASKS) if retrain else _missing_models(settings)
    for task in changed:
        if retrain or not _use_shipped(settings, task, shipped or SHIPPED_DIR):
            _train(settings, task)
    _services(settings, restart_serving=bool(changed))
    _sender(settings)
    console.print(f"sending {studies} SYNTHETIC studies of each task (seed {seed})")
    sent = _push(settings, studies, seed)
    _wait_for_triage(settings, [uid for uid, _, _ in sent], timeout_s)
    _worklist(settings, {uid for uid, _, _ in sent})
    elapsed = dt.timedelta(seconds=round(time.monotonic() - started))
    console.print(
        f"done in {elapsed}. Services are up:\n"
        f"  reading web app (worklist and viewer): {settings.api_url}/app/  (an account: "
        "radcloud users add NAME --role radiologist --password)\n"
        f"  API, DICOMweb: {settings.api_url}\n"
        f"  DICOM gateway: {settings.gateway_ae_title}@{settings.bind_host}:"
        f"{settings.gateway_port}\n"
        f"  Orthanc (internal): http://{settings.bind_host}:{settings.orthanc_http_port}\n"
        "Stop them with: make down  (or: radcloud down)"
    )


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""
    app.command("demo")(command(demo))
