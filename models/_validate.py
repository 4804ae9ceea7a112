"""Checking MONAI bundle files: the layout, loading state dicts, and :func:`validate_bundle`.

Private to :mod:`models`; :mod:`models.bundle` re-exports the public names. The checks are
those of the :mod:`models.bundle` docstring: the state dict loads with
``torch.load(weights_only=True)`` into the network and the network runs on an input of the
declared shape giving the declared output; ONNX Runtime loads the ONNX file, whose input and
output shapes match the declared ones; and when both are present they agree.

It also holds the checks :meth:`models.registry.ModelRegistry.register` makes of a trained
model against its card (:func:`checked_card`, :func:`rebuild_network`, :func:`check_rebuilt`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.card import ArchitectureRef, BundleMetadata, ModelCard, concrete_shape
from models.exceptions import (
    ArchitectureError,
    CardError,
    InvalidBundleError,
    ModelLoadError,
    ParityError,
)
from models.export import check_parity, onnx_session
from models.networks import (
    ARCHITECTURES,
    DEFAULT_PARITY_TOLERANCE,
    SEGMENTER_PARITY_TOLERANCE,
    build_network,
)

__all__ = [
    "CARD_FILE",
    "INFERENCE_FILE",
    "METADATA_FILE",
    "ONNX_FILE",
    "WEIGHTS_FILE",
    "check_rebuilt",
    "checked_card",
    "load_state_dict",
    "rebuild_network",
    "validate_bundle",
]

logger = logging.getLogger(__name__)

METADATA_FILE = Path("configs/metadata.json")
INFERENCE_FILE = Path("configs/inference.json")
WEIGHTS_FILE = Path("models/model.pt")
ONNX_FILE = Path("models/model.onnx")
CARD_FILE = Path("card.json")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# --- loading -------------------------------------------------------------------------------


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict with ``torch.load(weights_only=True)`` on the CPU.

    A checkpoint that wraps the state dict under ``model``, ``state_dict`` or ``network`` is
    unwrapped.

    Raises
    ------
    ModelLoadError
        When the file is missing, not loadable with ``weights_only=True``, or not a state dict.
    """
    if not path.is_file():
        raise ModelLoadError(path, "no such file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises pickle, zip and runtime errors
        reason = f"torch.load(weights_only=True) failed: {type(exc).__name__}: {exc}"
        raise ModelLoadError(path, reason.splitlines()[0]) from exc
    if isinstance(loaded, dict):
        for key in ("model", "state_dict", "network"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ModelLoadError(path, "not a state dict: expected a mapping of names to tensors")
    return loaded


# --- validation ----------------------------------------------------------------------------


def _shape_problem(
    actual: tuple[int, ...], meta: BundleMetadata, spatial_in: list[int], what: str
) -> str | None:
    expected_channels = meta.outputs.num_channels
    out_spatial = concrete_shape(meta.outputs.spatial_shape)
    if len(actual) < 2 or actual[1] != expected_channels:
        return (
            f"{what} gives output shape {list(actual)}: network_data_format.outputs."
            f"{meta.output_name} expects {expected_channels} channel(s) on axis 1"
        )
    if len(out_spatial) == len(spatial_in) and len(actual) == 2 + len(spatial_in):
        if list(actual[2:]) != out_spatial and all(
            isinstance(s, int) for s in meta.outputs.spatial_shape
        ):
            return (
                f"{what} gives output spatial shape {list(actual[2:])}: "
                f"network_data_format.outputs.{meta.output_name}.spatial_shape is {out_spatial}"
            )
    elif not out_spatial and len(actual) != 2:
        return f"{what} gives output shape {list(actual)}: expected (batch, channels)"
    return None


def _check_weights(
    bundle: Path,
    weights: Path,
    architecture: ArchitectureRef,
    meta: BundleMetadata,
    example: torch.Tensor,
) -> torch.nn.Module:
    try:
        state = load_state_dict(weights)
    except ModelLoadError as exc:
        raise InvalidBundleError(bundle, f"{WEIGHTS_FILE}: {exc.reason}") from exc
    try:
        network = build_network(architecture)
    except ArchitectureError as exc:
        raise InvalidBundleError(bundle, f"network_def does not build: {exc}") from exc
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise InvalidBundleError(
            bundle, f"{WEIGHTS_FILE} does not fit {architecture.name}: {detail}"
        ) from exc
    try:
        with torch.no_grad():
            output = network(example)
    except RuntimeError as exc:
        raise InvalidBundleError(
            bundle,
            f"{architecture.name} cannot run on the declared input shape {list(example.shape)} "
            f"(network_data_format.inputs.{meta.input_name}): {str(exc).splitlines()[0]}",
        ) from exc
    actual = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
    problem = _shape_problem(actual, meta, list(example.shape[2:]), WEIGHTS_FILE.as_posix())
    if problem:
        raise InvalidBundleError(bundle, problem)
    return network


def _check_onnx(
    bundle: Path, onnx_path: Path, meta: BundleMetadata, example: torch.Tensor
) -> torch.Tensor:
    """Check the ONNX file against ``meta``; returns the input it was run on."""
    try:
        session = onnx_session(onnx_path, ["CPUExecutionProvider"])
    except ModelLoadError as exc:
        raise InvalidBundleError(bundle, f"{ONNX_FILE}: {exc.reason}") from exc
    declared = [meta.inputs.num_channels, *meta.inputs.spatial_shape]
    onnx_shape = list(session.get_inputs()[0].shape)
    if len(onnx_shape) != len(declared) + 1:
        raise InvalidBundleError(
            bundle,
            f"{ONNX_FILE} input shape {onnx_shape} has {len(onnx_shape)} axes: "
            f"network_data_format.inputs.{meta.input_name} declares (batch, {declared})",
        )
    for axis, (found, wanted) in enumerate(zip(onnx_shape[1:], declared, strict=True), start=1):
        if isinstance(found, int) and isinstance(wanted, int) and found != wanted:
            raise InvalidBundleError(
                bundle,
                f"{ONNX_FILE} input shape {onnx_shape} differs on axis {axis} from "
                f"network_data_format.inputs.{meta.input_name} (channels {declared[0]}, "
                f"spatial_shape {declared[1:]})",
            )
    # symbolic sizes ("16*n") take the ONNX file's fixed size where it has one
    fixed = [
        found if isinstance(found, int) and isinstance(wanted, str) else size
        for found, wanted, size in zip(
            onnx_shape[2:], meta.inputs.spatial_shape, example.shape[2:], strict=True
        )
    ]
    if fixed != list(example.shape[2:]):
        example = torch.rand((1, example.shape[1], *fixed), generator=_generator())
    name = session.get_inputs()[0].name
    try:
        output = session.run(None, {name: example.numpy()})[0]
    except Exception as exc:  # onnxruntime raises bare pybind11 errors
        raise InvalidBundleError(
            bundle, f"{ONNX_FILE} cannot run on input shape {list(example.shape)}: {exc}"
        ) from exc
    problem = _shape_problem(
        tuple(np.asarray(output).shape), meta, list(example.shape[2:]), ONNX_FILE.as_posix()
    )
    if problem:
        raise InvalidBundleError(bundle, problem)
    return example


def validate_bundle(
    bundle: Path,
    meta: BundleMetadata,
    architecture: ArchitectureRef | None,
    *,
    parity_tolerance: float | None = None,
) -> None:
    """Check a bundle's weights and ONNX file against its metadata (see the module docstring).

    Parameters
    ----------
    bundle
        The bundle directory.
    meta
        Its parsed metadata.
    architecture
        The network the state dict belongs to (``None``: the bundle must have an ONNX file).
    parity_tolerance
        Allowed difference between the state dict's and the ONNX file's outputs (default: the
        architecture's; for other MONAI networks 1e-3 for segmenters, else 1e-4).

    Raises
    ------
    InvalidBundleError
        Naming the file and what does not fit.
    """
    weights, onnx_path = bundle / WEIGHTS_FILE, bundle / ONNX_FILE
    if not weights.is_file() and not onnx_path.is_file():
        raise InvalidBundleError(bundle, f"neither {WEIGHTS_FILE} nor {ONNX_FILE} exists")
    if weights.is_file() and architecture is None and not onnx_path.is_file():
        raise InvalidBundleError(
            bundle,
            f"{WEIGHTS_FILE} has no network to load into: expected a network_def with a "
            f"monai.networks.nets _target_ in {INFERENCE_FILE}, a card.json, or {ONNX_FILE}",
        )
    spatial = concrete_shape(meta.inputs.spatial_shape)
    example = torch.rand((1, meta.inputs.num_channels, *spatial), generator=_generator())
    network = None
    if weights.is_file():
        if architecture is None:
            try:
                load_state_dict(weights)
            except ModelLoadError as exc:
                raise InvalidBundleError(bundle, f"{WEIGHTS_FILE}: {exc.reason}") from exc
            logger.warning("%s: no network_def; weights loaded but not checked", bundle)
        else:
            network = _check_weights(bundle, weights, architecture, meta, example)
    if onnx_path.is_file():
        onnx_example = _check_onnx(bundle, onnx_path, meta, example)
        if network is not None and architecture is not None:
            tolerance = parity_tolerance or _tolerance(architecture, meta)
            try:
                check_parity(network, onnx_path, onnx_example, tolerance)
            except ParityError as exc:
                raise InvalidBundleError(
                    bundle, f"{ONNX_FILE} and {WEIGHTS_FILE} disagree: {exc}"
                ) from exc


def _tolerance(architecture: ArchitectureRef, meta: BundleMetadata) -> float:
    if architecture.name in ARCHITECTURES:
        return ARCHITECTURES[architecture.name].parity_tolerance
    if len(meta.outputs.spatial_shape) == len(meta.inputs.spatial_shape):
        return SEGMENTER_PARITY_TOLERANCE
    return DEFAULT_PARITY_TOLERANCE


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# --- registering: the trained model against its card ----------------------------------------


def checked_card(card: ModelCard, example_input: torch.Tensor, manifest_sha256: str) -> ModelCard:
    """``card`` with ``training_data.manifest_sha256`` set, once it fits the input and hash.

    Raises
    ------
    CardError
        When the card has no architecture, ``example_input`` is not ``(batch, *inputs.shape)``,
        or the manifest hash is malformed or differs from the card's.
    """
    if card.architecture is None:
        raise CardError(card.name, "architecture is missing: register needs the network")
    if tuple(example_input.shape[1:]) != card.inputs.shape:
        raise CardError(
            card.name,
            f"example_input has shape {list(example_input.shape)}: expected (batch, "
            f"{', '.join(map(str, card.inputs.shape))}) as card.inputs.shape says",
        )
    if not _SHA256.match(manifest_sha256):
        raise CardError(
            card.name,
            f'data_manifest_sha256 "{manifest_sha256}": expected 64 lowercase hex digits',
        )
    declared = card.training_data.manifest_sha256
    if declared is not None and declared != manifest_sha256:
        raise CardError(
            card.name,
            f"training_data.manifest_sha256 {declared} differs from data_manifest_sha256 "
            f"{manifest_sha256}",
        )
    training_data = card.training_data.model_copy(update={"manifest_sha256": manifest_sha256})
    return card.model_copy(update={"training_data": training_data})


def rebuild_network(card: ModelCard, state: dict[str, torch.Tensor]) -> nn.Module:
    """Build the card's architecture and load ``state`` into it (``strict=True``).

    Raises
    ------
    CardError
        When the weights do not fit the architecture.
    """
    assert card.architecture is not None  # noqa: S101 - checked by the caller
    network = build_network(card.architecture)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[:3])
        raise CardError(
            card.name,
            f"the model's weights do not fit architecture {card.architecture.name} "
            f"{card.architecture.params}: {detail}",
        ) from exc
    return network


def check_rebuilt(
    card: ModelCard,
    trained: nn.Module,
    rebuilt: nn.Module,
    probes: Sequence[torch.Tensor],
    tolerance: float,
) -> None:
    """Check that ``rebuilt`` reproduces ``trained`` on ``probes`` within ``tolerance``.

    Raises
    ------
    CardError
        When an output element differs by more than ``tolerance``.
    """
    with torch.no_grad():
        for probe in probes:
            diff = float((trained(probe) - rebuilt(probe)).abs().max())
            if not diff <= tolerance:
                raise CardError(
                    card.name,
                    f"architecture {card.architecture.name if card.architecture else None} "
                    f"with the model's weights gives outputs up to {diff:.3g} away from the "
                    f"model's: expected at most {tolerance:.3g}",
                )
