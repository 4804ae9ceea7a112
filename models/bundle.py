"""MONAI bundle files: writing our metadata, reading and validating external bundles.

A MONAI bundle (https://docs.monai.io/en/stable/mb_specification.html) is a directory with
``configs/metadata.json`` (whose ``network_data_format`` describes the input ``image`` and
output ``pred`` tensors), optionally ``configs/inference.json`` (a ``network_def`` with a
``_target_``), and weights in ``models/model.pt`` (a state dict) and/or ``models/model.onnx``.

:func:`validate_bundle` checks that the files fit the metadata: the state dict loads with
``torch.load(weights_only=True)`` into the network and the network runs on an input of the
declared shape giving the declared output; ONNX Runtime loads the ONNX file, whose input and
output shapes match the declared ones; and when both are present they agree.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from models.card import (
    ArchitectureRef,
    BundleMetadata,
    ModelCard,
    Task,
    TensorFormat,
    card_from_metadata,
    concrete_shape,
)
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
    "inference_config",
    "load_state_dict",
    "monai_metadata",
    "network_def",
    "parse_metadata",
    "read_metadata",
    "stage_bundle",
    "stage_onnx",
    "validate_bundle",
]

logger = logging.getLogger(__name__)

METADATA_FILE = Path("configs/metadata.json")
INFERENCE_FILE = Path("configs/inference.json")
WEIGHTS_FILE = Path("models/model.pt")
ONNX_FILE = Path("models/model.onnx")
CARD_FILE = Path("card.json")

# --- writing -------------------------------------------------------------------------------


def _input_format(card: ModelCard) -> dict[str, Any]:
    inputs = card.inputs
    norm = inputs.normalization
    hounsfield = inputs.modality == "CT" and norm.method in ("window", "none")
    return {
        "type": "image",
        "format": "hounsfield" if hounsfield else "magnitude",
        "modality": inputs.modality,
        "num_channels": inputs.shape[0],
        "spatial_shape": list(inputs.spatial_shape),
        "dtype": inputs.dtype,
        "value_range": list(norm.output_range) if norm.method != "zscore" else [],
        "is_patch_data": inputs.is_patch_data,
        "channel_def": {str(k): v for k, v in sorted(inputs.channel_def.items())},
    }


def _output_format(card: ModelCard) -> dict[str, Any]:
    outputs = card.outputs
    segmentation = outputs.kind == "segmentation"
    return {
        "type": "image" if segmentation else "logits",
        "format": "segmentation" if segmentation else "classes",
        "num_channels": outputs.num_channels,
        "spatial_shape": list(outputs.shape[1:]),
        "dtype": "float32",
        "value_range": [],
        "is_patch_data": card.inputs.is_patch_data,
        "channel_def": {str(k): v for k, v in sorted(outputs.channel_def.items())},
    }


def monai_metadata(card: ModelCard, changelog: Mapping[int, str]) -> dict[str, Any]:
    """``configs/metadata.json`` for a registered model.

    Parameters
    ----------
    card
        The model's card, with its version set.
    changelog
        Registry version → what changed, for this and earlier versions.

    Returns
    -------
    dict
        MONAI bundle metadata. ``version`` is the registry's integer version as a string.
    """
    frameworks = card.frameworks
    optional = {"onnx": frameworks.onnx, "onnxruntime": frameworks.onnxruntime}
    return {
        "version": str(card.version),
        "changelog": {str(v): text for v, text in sorted(changelog.items(), reverse=True)},
        "monai_version": frameworks.monai,
        "pytorch_version": frameworks.torch,
        "numpy_version": frameworks.numpy,
        "optional_packages_version": {k: v for k, v in optional.items() if v},
        "name": card.name,
        "task": str(card.task),
        "description": card.description or f"{card.task} model {card.name}",
        "authors": ", ".join(card.authors),
        "copyright": "Copyright (c) radcloud",
        "intended_use": card.intended_use,
        "data_source": card.training_data.source,
        "data_type": "dicom",
        "network_data_format": {
            "inputs": {card.inputs.name: _input_format(card)},
            "outputs": {card.outputs.name: _output_format(card)},
        },
    }


def inference_config(card: ModelCard) -> dict[str, Any] | None:
    """A minimal ``configs/inference.json`` whose ``network_def`` MONAI can instantiate.

    Returns ``None`` when the card has no architecture (an ONNX-only model).
    """
    if card.architecture is None:
        return None
    ref = card.architecture
    if ref.name in ARCHITECTURES:
        arch = ARCHITECTURES[ref.name]
        target, params = arch.target, {**arch.params, **ref.params}
    else:
        target, params = ref.name, dict(ref.params)
    return {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": target, **params},
        "network": "$@network_def.to(@device)",
    }


# --- reading -------------------------------------------------------------------------------


def _read_json(path: Path, bundle: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidBundleError(bundle, f"{_rel(path, bundle)} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidBundleError(bundle, f"{_rel(path, bundle)} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidBundleError(
            bundle, f"{_rel(path, bundle)} holds a {type(data).__name__}: expected an object"
        )
    return data


def _rel(path: Path, bundle: Path) -> str:
    try:
        return str(path.relative_to(bundle))
    except ValueError:
        return str(path)


def _tensor_format(data: Any, where: str, bundle: Path) -> tuple[str, TensorFormat]:
    if not isinstance(data, dict) or not data:
        raise InvalidBundleError(bundle, f"network_data_format.{where} is missing or empty")
    key = next(iter(data))
    try:
        return key, TensorFormat.model_validate(data[key])
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise InvalidBundleError(
            bundle, f"network_data_format.{where}.{key}.{field}: {error['msg']}"
        ) from exc


def parse_metadata(raw: dict[str, Any], bundle: Path) -> BundleMetadata:
    """Validate the ``network_data_format`` of a MONAI metadata dict (see :func:`read_metadata`)."""
    ndf = raw.get("network_data_format")
    if not isinstance(ndf, dict):
        raise InvalidBundleError(bundle, "metadata has no network_data_format object")
    input_name, inputs = _tensor_format(ndf.get("inputs"), "inputs", bundle)
    output_name, outputs = _tensor_format(ndf.get("outputs"), "outputs", bundle)
    if not 1 <= len(inputs.spatial_shape) <= 3:
        raise InvalidBundleError(
            bundle,
            f"network_data_format.inputs.{input_name}.spatial_shape {inputs.spatial_shape}: "
            "expected 1 to 3 spatial sizes",
        )
    for fmt, where in ((inputs, f"inputs.{input_name}"), (outputs, f"outputs.{output_name}")):
        try:
            concrete_shape(fmt.spatial_shape)
        except ValueError as exc:
            raise InvalidBundleError(bundle, f"network_data_format.{where}: {exc}") from exc
    return BundleMetadata(raw, input_name, inputs, output_name, outputs)


def read_metadata(bundle: Path) -> BundleMetadata:
    """Read and validate ``configs/metadata.json`` of the bundle directory ``bundle``.

    Raises
    ------
    InvalidBundleError
        When the file is missing, not JSON, or its ``network_data_format`` lacks an input or
        output with ``num_channels`` and ``spatial_shape``.
    """
    return parse_metadata(_read_json(bundle / METADATA_FILE, bundle), bundle)


def network_def(bundle: Path) -> ArchitectureRef | None:
    """The network of ``configs/inference.json`` (``network_def``), or ``None``.

    Only ``monai.networks.nets`` constructors with literal parameters (or ``@key`` references
    to literal top-level values) are understood; anything else gives ``None`` and a log line,
    never code execution.
    """
    path = bundle / INFERENCE_FILE
    if not path.is_file():
        return None
    config = _read_json(path, bundle)
    definition = config.get("network_def")
    if not isinstance(definition, dict) or not isinstance(definition.get("_target_"), str):
        logger.info("%s has no network_def with a _target_", path)
        return None
    target: str = definition["_target_"]
    params: dict[str, Any] = {}
    for key, value in definition.items():
        if key.startswith("_"):
            continue
        resolved = value
        if isinstance(value, str) and value.startswith("@") and value[1:] in config:
            resolved = config[value[1:]]
        if isinstance(resolved, str) and resolved.startswith(("$", "@", "%")):
            logger.info("%s: network_def.%s is an expression (%s); not evaluated", path, key, value)
            return None
        params[key] = resolved
    name = target if "." in target else f"monai.networks.nets.{target}"
    if not name.startswith("monai.networks.nets."):
        logger.info("%s: network_def target %s is not a MONAI network", path, target)
        return None
    return ArchitectureRef(name=name, params=params)


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


# --- staging imports -----------------------------------------------------------------------


def stage_bundle(
    path: Path, staging: Path, *, name: str | None, task: Task | str | None
) -> tuple[ModelCard, Path, bool]:
    """Validate the bundle directory ``path`` and copy it into ``staging``.

    Parameters
    ----------
    path
        The bundle directory.
    staging
        An empty directory; the copy goes to ``staging / "bundle"`` (without ``card.json``).
    name
        Registry name (default: the card's, else the metadata's ``name``, else the directory's).
    task
        The task, when neither a ``card.json`` nor the metadata names one of ours.

    Returns
    -------
    tuple
        The card (from ``card.json``, else made from the metadata), the copy, and whether the
        bundle is a radcloud bundle (it has a ``card.json``).

    Raises
    ------
    InvalidBundleError
        Naming what is wrong (see :func:`validate_bundle`).
    """
    if not path.is_dir():
        raise InvalidBundleError(path, "not a directory: expected a MONAI bundle directory")
    meta = read_metadata(path)
    card_path = path / CARD_FILE
    card: ModelCard | None = None
    if card_path.is_file():
        try:
            card = ModelCard.load(card_path)
        except CardError as exc:
            raise InvalidBundleError(path, f"{CARD_FILE}: {exc.reason}") from exc
        card = _renamed(card, name, path) if name is not None else card
        architecture = card.architecture
    else:
        architecture = network_def(path)
    validate_bundle(path, meta, architecture)
    if card is None:
        try:
            card = card_from_metadata(
                meta,
                source=path.name,
                name=name or _slug(str(meta.raw.get("name") or path.name)),
                task=task,
                architecture=architecture,
                roi_size=_roi_size(path),
            )
        except CardError as exc:
            raise InvalidBundleError(path, exc.reason) from exc
    copy = staging / "bundle"
    shutil.copytree(
        path,
        copy,
        ignore=shutil.ignore_patterns(CARD_FILE.name, ".*"),
        copy_function=shutil.copyfile,  # contents only: the registry owns its files' modes
    )
    return card, copy, card_path.is_file()


def stage_onnx(
    onnx_path: Path,
    metadata_json_path: Path,
    staging: Path,
    *,
    name: str | None,
    task: Task | str | None,
) -> tuple[ModelCard, bool]:
    """Assemble a bundle in ``staging`` from an ONNX file and its metadata, and validate it.

    Parameters
    ----------
    onnx_path
        The ``.onnx`` file.
    metadata_json_path
        A radcloud model card, or MONAI metadata with ``network_data_format``.
    staging
        An empty directory to assemble the bundle in.
    name, task
        As for :func:`stage_bundle` (default name: the metadata's, else the file's stem).

    Returns
    -------
    tuple
        The card, and whether it came from a radcloud card (then MONAI metadata is to be
        written from it; MONAI metadata given is kept as it is).

    Raises
    ------
    InvalidBundleError
        When the metadata is neither format, or the ONNX file does not load or fit it.
    """
    if not onnx_path.is_file():
        raise InvalidBundleError(onnx_path, "no such ONNX file")
    try:
        raw = json.loads(metadata_json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidBundleError(metadata_json_path, f"cannot be read as JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidBundleError(metadata_json_path, "expected a JSON object")
    chosen = name or _slug(str(raw.get("name") or onnx_path.stem))
    from_card = "network_data_format" not in raw
    try:
        if from_card:
            if not {"task", "inputs", "outputs"} <= raw.keys():
                raise InvalidBundleError(
                    metadata_json_path,
                    "neither MONAI metadata (no network_data_format) nor a radcloud model card "
                    "(needs task, inputs, outputs)",
                )
            card = ModelCard.from_dict(raw | {"name": chosen}, source=str(metadata_json_path))
            raw = monai_metadata(card, {})
        meta = parse_metadata(raw, metadata_json_path)
        if not from_card:
            card = card_from_metadata(
                meta, source=onnx_path.name, name=chosen, task=task, architecture=None
            )
    except CardError as exc:
        raise InvalidBundleError(metadata_json_path, exc.reason) from exc
    (staging / ONNX_FILE).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, staging / ONNX_FILE)
    (staging / METADATA_FILE).parent.mkdir(parents=True, exist_ok=True)
    (staging / METADATA_FILE).write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    try:
        validate_bundle(staging, meta, None)
    except InvalidBundleError as exc:
        raise InvalidBundleError(onnx_path, exc.reason) from exc
    return card, from_card


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")[:64]
    return slug or "model"


def _renamed(card: ModelCard, name: str, source: Path) -> ModelCard:
    try:
        return ModelCard.from_dict({**card.model_dump(), "name": name}, source=str(source))
    except CardError as exc:
        raise InvalidBundleError(source, exc.reason) from exc


def _roi_size(bundle: Path) -> list[int] | None:
    try:
        config = json.loads((bundle / INFERENCE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    inferer = config.get("inferer") if isinstance(config, dict) else None
    roi = inferer.get("roi_size") if isinstance(inferer, dict) else None
    if isinstance(roi, list) and roi and all(isinstance(v, int) and v > 0 for v in roi):
        return roi
    return None
