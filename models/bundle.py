"""MONAI bundle files: writing our metadata, reading and validating external bundles.

A MONAI bundle (https://docs.monai.io/en/stable/mb_specification.html) is a directory with
``configs/metadata.json`` (whose ``network_data_format`` describes the input ``image`` and
output ``pred`` tensors), optionally ``configs/inference.json`` (a ``network_def`` with a
``_target_``), and weights in ``models/model.pt`` (a state dict) and/or ``models/model.onnx``.

:func:`validate_bundle` checks that the files fit the metadata: the state dict loads with
``torch.load(weights_only=True)`` into the network and the network runs on an input of the
declared shape giving the declared output; ONNX Runtime loads the ONNX file, whose input and
output shapes match the declared ones; and when both are present they agree (the checks and
the file layout live in :mod:`models._validate`; this module re-exports them).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from models._validate import (
    CARD_FILE,
    INFERENCE_FILE,
    METADATA_FILE,
    ONNX_FILE,
    WEIGHTS_FILE,
    load_state_dict,
    validate_bundle,
)
from models.card import (
    ArchitectureRef,
    BundleMetadata,
    ModelCard,
    Task,
    TensorFormat,
    card_from_metadata,
    concrete_shape,
)
from models.exceptions import CardError, InvalidBundleError
from models.networks import ARCHITECTURES

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
