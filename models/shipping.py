"""Shipped models: registry versions as MONAI bundles in the repository, weights in float16.

The production models are part of the product: ``models/shipped/<name>/`` (:data:`SHIPPED_DIR`)
holds one bundle per model, in the registry's layout (see :mod:`models.registry`) except that

- ``models/model.pt`` stores the state dict in **half precision** (float16): half the bytes,
  so both models fit the repository's 25 MB budget;
- there is no ``models/model.onnx`` (it would double the size): importing the bundle
  (:meth:`models.registry.ModelRegistry.import_bundle`, via :func:`complete_bundle`) loads the
  float16 weights into the float32 network, stores them as float32 and exports and
  parity-checks ONNX, exactly as registration does;
- ``provenance.json`` (:class:`Provenance`) records where the model came from: the registry
  version, the command and seed that reproduce its training, the machine and time it took, and
  the parity of the float16 weights. The card's ``source`` says the same in one sentence.

Parity of the float16 weights (:func:`ship`): the network with the rounded weights (computed
in float32) and the original run on the probes registration uses (the seeded example input and
two seeded uniform batches); every output *probability* (after the card's sigmoid or softmax)
must agree within :data:`SHIP_PARITY_TOLERANCE` (0.01, a hundredth of the [0, 1] scale the
operating threshold and the worklist use; rounding to float16 keeps 11 significant bits, so
each weight moves by at most 0.05 %, and measured differences are about 1e-3).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from models._store import METRICS_FILE, TRAINING_CONFIG_FILE, RegisteredModel
from models._validate import (
    CARD_FILE,
    ONNX_FILE,
    WEIGHTS_FILE,
    load_state_dict,
    rebuild_network,
)
from models.card import ModelCard
from models.exceptions import HalfPrecisionParityError, ModelLoadError
from models.export import check_parity, export_onnx, onnx_session
from models.networks import ARCHITECTURES, DEFAULT_PARITY_TOLERANCE

__all__ = [
    "PROVENANCE_FILE",
    "SHIPPED_DIR",
    "SHIP_PARITY_TOLERANCE",
    "Provenance",
    "complete_bundle",
    "probabilities",
    "ship",
    "shipped_bundles",
    "this_machine",
]

logger = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
PROVENANCE_FILE = Path("provenance.json")
SHIP_PARITY_TOLERANCE = 0.01
_PARITY_SEED = 0  # as registration's probes


class Provenance(BaseModel):
    """Where a shipped model came from (``provenance.json``)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    registry_version: int
    command: str = Field(description="the command that reproduces the training run")
    seed: int | None
    machine: str
    training_seconds: float | None
    trained_at: dt.datetime
    shipped_at: dt.datetime
    weights_dtype: str = "float16"
    weights_sha256: str
    parity_max_probability_difference: float
    parity_tolerance: float


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def _full(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def probabilities(card: ModelCard, logits: torch.Tensor) -> torch.Tensor:
    """The card's output activation applied to a batch of network outputs."""
    if card.outputs.activation == "sigmoid":
        return torch.sigmoid(logits)
    if card.outputs.activation == "softmax":
        return torch.softmax(logits, dim=1)
    return logits


def _probes(card: ModelCard) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(_PARITY_SEED)
    return [torch.rand((1, *card.inputs.shape), generator=generator) for _ in range(3)]


def _probability_difference(
    card: ModelCard, reference: torch.nn.Module, candidate: torch.nn.Module
) -> float:
    largest = 0.0
    with torch.no_grad():
        for probe in _probes(card):
            expected = probabilities(card, reference(probe))
            actual = probabilities(card, candidate(probe))
            largest = max(largest, float((expected - actual).abs().max()))
    return largest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _reproducing_command(config: dict[str, Any]) -> str:
    """``radcloud train ...`` from a ``training_config.json`` (or its own ``command``)."""
    if isinstance(config.get("command"), str):
        return str(config["command"])
    if "task" not in config or "preset" not in config:
        return "not recorded"
    parts = ["radcloud train", f"--task {config['task']}", f"--preset {config['preset']}"]
    for option in ("studies", "epochs", "seed"):
        if config.get(option) is not None:
            parts.append(f"--{option} {config[option]}")
    if int(config.get("workers") or 1) > 1:
        parts.append(f"--workers {config['workers']}")
    if config.get("gpu"):
        parts.append("--gpu")
    return " ".join(parts)


def _training_seconds(config: dict[str, Any], metrics: dict[str, Any]) -> float | None:
    """Training time as recorded: the config's or metrics' ``seconds``, else the run report."""
    for source in (config, metrics):
        seconds = source.get("seconds")
        if isinstance(seconds, int | float):
            return float(seconds)
        if isinstance(seconds, dict):
            return float(sum(v for v in seconds.values() if isinstance(v, int | float)))
    run = metrics.get("run")
    if isinstance(run, str):
        report = _read_json(Path(run) / "report.json")
        if report:
            return _training_seconds({}, report)
    return None


def this_machine() -> str:
    """This machine in words: CPU cores and architecture, and the GPU if torch sees one."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), {gpu}"


def _source_sentence(provenance: Provenance) -> str:
    took = (
        f" in {provenance.training_seconds / 60:.1f} min"
        if provenance.training_seconds is not None
        else ""
    )
    return (
        f"trained by radcloud: `{provenance.command}` (seed {provenance.seed}) on "
        f"{provenance.machine}{took}; shipped from registry version "
        f"{provenance.registry_version} with float16 weights"
    )


def ship(
    model: RegisteredModel,
    destination: Path = SHIPPED_DIR,
    *,
    command: str | None = None,
    machine: str | None = None,
    tolerance: float = SHIP_PARITY_TOLERANCE,
) -> Path:
    """Write ``model`` as a shipped bundle ``destination/<name>/`` (replacing one there).

    Parameters
    ----------
    model
        The registry version to ship (it must have torch weights and an architecture).
    destination
        The shipped-models directory (default: the repository's :data:`SHIPPED_DIR`).
    command
        The command that reproduces the training (default: as recorded in its
        ``training_config.json``, else made from that configuration).
    machine
        The machine it was trained on (default: as recorded, else this machine, said so).
    tolerance
        Largest allowed difference of an output probability between the float16 and the
        original weights.

    Returns
    -------
    pathlib.Path
        The shipped bundle directory.

    Raises
    ------
    HalfPrecisionParityError
        When the float16 weights change an output probability by more than ``tolerance``;
        nothing is written.
    ModelLoadError
        When the version has no torch weights or architecture.
    """
    card = model.card
    if card.architecture is None:
        raise ModelLoadError(model.path, "ONNX-only model: shipping needs the torch weights")
    state = _full(load_state_dict(model.weights_path))
    half = _half(state)
    difference = _probability_difference(
        card, rebuild_network(card, state).eval(), rebuild_network(card, _full(half)).eval()
    )
    if not difference <= tolerance:
        raise HalfPrecisionParityError(difference, tolerance)
    config = _read_json(model.path / TRAINING_CONFIG_FILE)
    metrics = _read_json(model.path / METRICS_FILE)
    recorded_machine = config.get("machine") or metrics.get("machine")
    destination.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{card.name}-", dir=destination))
    try:
        shutil.copytree(
            model.path,
            staging,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(WEIGHTS_FILE.name, ONNX_FILE.name, ".*"),
            copy_function=shutil.copyfile,
        )
        torch.save(half, staging / WEIGHTS_FILE)
        provenance = Provenance(
            name=card.name,
            registry_version=model.version,
            command=command or _reproducing_command(config),
            seed=config.get("seed"),
            machine=machine
            or (
                str(recorded_machine)
                if recorded_machine
                else f"{this_machine()} (where it was shipped: training recorded no machine)"
            ),
            training_seconds=_training_seconds(config, metrics),
            trained_at=card.created,
            shipped_at=dt.datetime.now(dt.UTC),
            weights_sha256=_sha256(staging / WEIGHTS_FILE),
            parity_max_probability_difference=difference,
            parity_tolerance=tolerance,
        )
        shipped_card = card.model_copy(update={"source": _source_sentence(provenance)})
        (staging / CARD_FILE).write_text(shipped_card.to_json(), encoding="utf-8")
        (staging / PROVENANCE_FILE).write_text(
            provenance.model_dump_json(indent=2) + "\n", encoding="utf-8"
        )
        staging.chmod(0o755)
        target = destination / card.name
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info(
        "shipped %s version %d to %s (float16 parity %.2g)",
        card.name,
        model.version,
        target,
        difference,
    )
    return target


def shipped_bundles(root: Path = SHIPPED_DIR) -> dict[str, Path]:
    """Model name → shipped bundle directory, for every bundle with a card under ``root``."""
    if not root.is_dir():
        return {}
    return {
        entry.name: entry
        for entry in sorted(root.iterdir())
        if not entry.name.startswith(".") and (entry / CARD_FILE).is_file()
    }


def complete_bundle(card: ModelCard, bundle: Path) -> str | None:
    """Make a radcloud bundle without ONNX (a shipped one) what registration would store.

    The weights are stored as float32 and exported to ``models/model.onnx``, checked against
    the torch network on the registration probes with the architecture's parity tolerance.

    Returns
    -------
    str or None
        What was done (for the registry's event log), or ``None`` when the bundle already
        has an ONNX file or has no torch weights.

    Raises
    ------
    ParityError
        When ONNX Runtime's outputs differ from torch's by more than the tolerance.
    """
    if (bundle / ONNX_FILE).is_file() or not (bundle / WEIGHTS_FILE).is_file():
        return None
    state = _full(load_state_dict(bundle / WEIGHTS_FILE))
    network = rebuild_network(card, state).eval()
    torch.save(state, bundle / WEIGHTS_FILE)
    probes = _probes(card)
    arch = ARCHITECTURES.get(card.architecture.name) if card.architecture else None
    tolerance = arch.parity_tolerance if arch else DEFAULT_PARITY_TOLERANCE
    onnx_path = export_onnx(network, probes[0], bundle / ONNX_FILE)
    session = onnx_session(onnx_path, ["CPUExecutionProvider"])
    difference = check_parity(network, onnx_path, probes, tolerance, session=session)
    return f"weights to float32, ONNX exported: parity {difference:.2g} (tolerance {tolerance:.2g})"
