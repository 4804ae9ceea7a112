"""Model cards: what a model is, what it expects, what it says and how well it does.

A :class:`ModelCard` travels with every registered model (``card.json`` in its bundle
directory) and is everything serving needs to use the model correctly: which series to send
(:class:`SeriesSelection`), how to prepare them (:class:`InputSpec`: spacing, intensity
normalisation, shape and axes), how to read the answer (:class:`OutputSpec`,
:class:`OperatingThreshold`), and how far to trust it (:class:`Metrics`, :class:`TrainingData`,
``intended_use``).

Cards are strict (unknown keys are refused) and immutable; the registry assigns ``version`` on
registration with ``card.model_copy(update=...)``.

External MONAI bundles describe their tensors in ``network_data_format`` (:class:`TensorFormat`);
:func:`card_from_metadata` makes a card from that, filling in conservatively what it lacks.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import operator
import platform
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.exceptions import CardError

__all__ = [
    "DEMO_INTENDED_USE",
    "ArchitectureRef",
    "BundleMetadata",
    "FrameworkVersions",
    "InputSpec",
    "IntensityNormalization",
    "Metrics",
    "ModelCard",
    "OperatingThreshold",
    "OutputSpec",
    "ScoreCalibration",
    "SeriesSelection",
    "Task",
    "TensorFormat",
    "TrainingData",
    "card_from_metadata",
    "concrete_shape",
    "default_series_selection",
]

DEMO_INTENDED_USE = "synthetic demo model: not for clinical use"

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DICOM_CODE = re.compile(r"^[A-Z0-9_ ]{1,16}$")


class Task(StrEnum):
    """What a model is for; serving routes series to models by task."""

    HEAD_CT_TRIAGE = "head-ct-triage"
    HEAD_CT_LESION_SEG = "head-ct-lesion-seg"
    CHEST_XR_TRIAGE = "chest-xr-triage"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArchitectureRef(_Strict):
    """The network to build: a name from :data:`models.networks.ARCHITECTURES` (or a
    ``monai.networks.nets.<Name>`` target for imported bundles) with its full parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class IntensityNormalization(_Strict):
    """How pixel values become network input.

    ``window``: clip to ``[level - width/2, level + width/2]`` (CT in HU, after the DICOM
    rescale) and map linearly onto ``output_range``. ``minmax`` / ``percentile``: per image,
    from its minimum/maximum or its ``percentiles`` onto ``output_range``. ``zscore``: per image,
    subtract the mean and divide by the standard deviation. ``none``: raw values. ``external``:
    defined by an imported bundle's own transforms (its ``configs/inference.json``).
    """

    method: Literal["window", "minmax", "percentile", "zscore", "none", "external"]
    window_width: float | None = Field(None, gt=0)
    window_level: float | None = None
    percentiles: tuple[float, float] | None = None
    output_range: tuple[float, float] = (0.0, 1.0)

    @model_validator(mode="after")
    def _complete(self) -> IntensityNormalization:
        if self.method == "window" and (self.window_width is None or self.window_level is None):
            raise ValueError("method 'window' needs window_width and window_level")
        if self.method == "percentile" and self.percentiles is None:
            raise ValueError("method 'percentile' needs percentiles, e.g. [0.5, 99.5]")
        return self


class InputSpec(_Strict):
    """The network's input tensor and how to make it from a DICOM series.

    ``shape`` excludes the batch axis and starts with channels; ``axes`` names each axis
    (``C`` channels, ``H`` rows, ``W`` columns, ``D`` slices), e.g. ``CHWD`` for a volume.
    ``spacing_mm`` gives the resampled spacing of each spatial axis (``None``: resized to
    ``shape`` without a fixed spacing, as for radiographs; 0 on an axis: the source's spacing
    is kept, no resampling). ``is_patch_data``: the network sees
    patches of ``shape`` and larger volumes go through a sliding-window inferer.
    """

    name: str = "image"
    modality: str
    body_part: str
    spacing_mm: tuple[float, ...] | None = None
    orientation: str | None = None
    normalization: IntensityNormalization
    shape: tuple[int, ...]
    axes: str
    dtype: Literal["float32", "float16"] = "float32"
    is_patch_data: bool = False
    channel_def: dict[int, str] = Field(default_factory=lambda: {0: "image"})

    @field_validator("modality", "body_part")
    @classmethod
    def _dicom_code(cls, value: str) -> str:
        if not _DICOM_CODE.match(value):
            raise ValueError(f'"{value}" is not a DICOM code string: expected e.g. "CT", "HEAD"')
        return value

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        if len(self.axes) != len(self.shape) or not self.axes.startswith("C"):
            raise ValueError(
                f'axes "{self.axes}" do not describe shape {list(self.shape)}: expected one letter '
                "per axis, channels first (e.g. CHW, CHWD)"
            )
        if any(size < 1 for size in self.shape):
            raise ValueError(f"shape {list(self.shape)} has an empty axis")
        if self.spacing_mm is not None and len(self.spacing_mm) != len(self.shape) - 1:
            raise ValueError(
                f"spacing_mm {list(self.spacing_mm)} has {len(self.spacing_mm)} values: expected "
                f"one per spatial axis ({len(self.shape) - 1})"
            )
        return self

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The spatial axes of ``shape``."""
        return self.shape[1:]


class OutputSpec(_Strict):
    """The network's output tensor and what it means.

    Classifiers output ``(batch, channels)`` logits (``shape`` = ``[channels]``); segmenters
    output ``(batch, channels, *spatial)`` logits over the input's spatial axes.
    ``activation`` turns logits into probabilities; ``channel_def`` names each channel.
    """

    name: str = "pred"
    kind: Literal["classification", "segmentation"]
    activation: Literal["sigmoid", "softmax", "none"]
    shape: tuple[int, ...]
    channel_def: dict[int, str]
    meaning: str
    # Segmenters that also triage: the study's score is the mean of the k highest
    # probabilities of the last channel.
    study_score_top_k: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> OutputSpec:
        if not self.shape:
            raise ValueError("output shape is empty: expected at least the channel axis")
        if set(self.channel_def) != set(range(self.shape[0])):
            raise ValueError(
                f"channel_def names channels {sorted(self.channel_def)}: expected one entry for "
                f"each of the {self.shape[0]} output channels"
            )
        return self

    @property
    def num_channels(self) -> int:
        """Number of output channels."""
        return self.shape[0]


class OperatingThreshold(_Strict):
    """The probability above which a study is flagged, and how it was chosen."""

    value: float = Field(ge=0, le=1)
    applies_to: str = "sigmoid probability of output channel 0"
    method: str


class ScoreCalibration(_Strict):
    """Maps the network's raw study score to a calibrated probability of a finding.

    ``platt``: ``p = sigmoid(slope * logit(raw) + intercept)``, with ``raw`` clipped to
    ``[1e-6, 1 - 1e-6]``; fitted on validation studies, checked on test studies (reliability
    plot). The operating threshold then applies to the calibrated probability.
    """

    method: Literal["platt"] = "platt"
    slope: float
    intercept: float
    fitted_on: str = ""


class TrainingData(_Strict):
    """Where the training data came from; ``manifest_sha256`` pins the exact file list."""

    source: str
    manifest_sha256: str | None = None
    counts: dict[str, int] = Field(default_factory=dict)

    @field_validator("manifest_sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.match(value):
            raise ValueError(f'"{value}" is not a SHA-256: expected 64 lowercase hex digits')
        return value


class Metrics(_Strict):
    """Headline evaluation results (at ``OperatingThreshold`` where that applies)."""

    evaluated_on: str = ""
    auc: float | None = Field(None, ge=0, le=1)
    sensitivity: float | None = Field(None, ge=0, le=1)
    specificity: float | None = Field(None, ge=0, le=1)
    dice: float | None = Field(None, ge=0, le=1)
    extra: dict[str, float] = Field(default_factory=dict)


class SeriesSelection(_Strict):
    """Which series serving sends to the model (DICOM Modality, BodyPartExamined, ...)."""

    modalities: list[str]
    body_parts: list[str]
    dimensionality: Literal["2d", "3d"]
    orientation: Literal["axial", "coronal", "sagittal", "any"] = "any"
    view_positions: list[str] = Field(default_factory=list)
    min_slices: int = Field(1, ge=1)
    max_slice_thickness_mm: float | None = Field(None, gt=0)


class FrameworkVersions(_Strict):
    """Library versions a model was made with."""

    python: str
    torch: str
    monai: str
    numpy: str
    onnx: str | None = None
    onnxruntime: str | None = None

    @classmethod
    def current(cls) -> FrameworkVersions:
        """The versions installed in this process's environment."""

        def version(package: str) -> str | None:
            try:
                return importlib_metadata.version(package)
            except importlib_metadata.PackageNotFoundError:
                return None

        ort = version("onnxruntime") or version("onnxruntime-gpu")
        return cls(
            python=platform.python_version(),
            torch=version("torch") or "unknown",
            monai=version("monai") or "unknown",
            numpy=version("numpy") or "unknown",
            onnx=version("onnx"),
            onnxruntime=ort,
        )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ModelCard(_Strict):
    """Everything known about one model version. See the module docstring."""

    name: str
    version: int | None = Field(None, ge=1)
    task: Task
    description: str = ""
    architecture: ArchitectureRef | None
    inputs: InputSpec
    outputs: OutputSpec
    threshold: OperatingThreshold | None = None
    calibration: ScoreCalibration | None = None
    training_data: TrainingData
    metrics: Metrics = Field(default_factory=Metrics)
    intended_use: str = DEMO_INTENDED_USE
    series_selection: SeriesSelection
    authors: list[str] = Field(default_factory=lambda: ["radcloud"])
    changelog: str = "first version"
    source: str = "trained by radcloud"
    created: dt.datetime = Field(default_factory=_now)
    frameworks: FrameworkVersions = Field(default_factory=FrameworkVersions.current)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f'"{value}" is not a model name: expected 1-64 of a-z, 0-9, ".", "_", "-", '
                "starting with a letter or digit"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if self.outputs.kind == "segmentation" and self.outputs.shape[1:] != self.inputs.shape[1:]:
            raise ValueError(
                f"segmentation output shape {list(self.outputs.shape)} does not cover the input's "
                f"spatial shape {list(self.inputs.spatial_shape)}"
            )
        dims = "2d" if len(self.inputs.spatial_shape) == 2 else "3d"
        if self.series_selection.dimensionality != dims:
            raise ValueError(
                f"series_selection.dimensionality is {self.series_selection.dimensionality} but "
                f"the input has {len(self.inputs.spatial_shape)} spatial axes ({dims})"
            )
        return self

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "<json>") -> ModelCard:
        """Parse and validate a card.

        Parameters
        ----------
        text
            The card as JSON.
        source
            Where it came from, for error messages.

        Returns
        -------
        ModelCard
            The validated card.

        Raises
        ------
        CardError
            When the JSON is malformed or a field is missing or invalid (named in the message).
        """
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise CardError(source, _first_error(exc)) from exc

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<dict>") -> ModelCard:
        """Validate a card given as a JSON-like dict; see :meth:`from_json`."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise CardError(source, _first_error(exc)) from exc

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        """Read a ``card.json``; raises :class:`~models.exceptions.CardError` when invalid."""
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise CardError(str(path), f"cannot be read: {exc.strerror}") from exc
        return cls.from_json(text, source=str(path))

    def to_json(self) -> str:
        """The card as indented JSON (what ``card.json`` holds)."""
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "card"
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


def default_series_selection(task: Task) -> SeriesSelection:
    """The series a model for ``task`` is meant for, when nothing more specific is known.

    Parameters
    ----------
    task
        The model's task.

    Returns
    -------
    SeriesSelection
        Head CT tasks: axial CT volumes of the head with at least 16 slices of at most 5 mm;
        chest radiograph triage: single CR/DX images of the chest, PA or AP.
    """
    if task is Task.CHEST_XR_TRIAGE:
        return SeriesSelection(
            modalities=["CR", "DX"],
            body_parts=["CHEST"],
            dimensionality="2d",
            view_positions=["PA", "AP"],
        )
    return SeriesSelection(
        modalities=["CT"],
        body_parts=["HEAD", "BRAIN"],
        dimensionality="3d",
        orientation="axial",
        min_slices=16,
        max_slice_thickness_mm=5.0,
    )


# --- MONAI bundle metadata ---------------------------------------------------------------

_BODY_PARTS = {Task.CHEST_XR_TRIAGE: "CHEST"}
_SPATIAL_AXES = "HWD"


class TensorFormat(BaseModel):
    """One entry of ``network_data_format`` (MONAI's field names; other keys are kept)."""

    model_config = ConfigDict(extra="allow")

    type: str = "image"
    format: str = ""
    modality: str | None = None
    num_channels: int
    spatial_shape: list[int | str]
    dtype: str = "float32"
    value_range: list[float] = []
    is_patch_data: bool = False
    channel_def: dict[str, str] = {}


@dataclass(frozen=True)
class BundleMetadata:
    """Parsed MONAI bundle metadata: the raw dict and its first input and output."""

    raw: dict[str, Any]
    input_name: str
    inputs: TensorFormat
    output_name: str
    outputs: TensorFormat


_OPERATORS: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Mult: operator.mul,
    ast.Add: operator.add,
    ast.Pow: operator.pow,
}


def _evaluate(node: ast.AST, names: Mapping[str, int]) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left, names), _evaluate(node.right, names)
        if isinstance(node.op, ast.Pow) and right > 16:
            raise ValueError("exponent too large")
        return _OPERATORS[type(node.op)](left, right)
    raise ValueError("unsupported")


def concrete_shape(spatial_shape: list[int | str], n: int = 1, p: int = 1) -> list[int]:
    """Sizes for MONAI's symbolic ``spatial_shape`` entries such as ``"16*n"`` or ``"2**p*n"``.

    Raises
    ------
    ValueError
        When an entry is neither a positive integer nor such an expression.
    """
    sizes = []
    for entry in spatial_shape:
        if isinstance(entry, int):
            size = entry
        else:
            try:
                size = _evaluate(ast.parse(entry, mode="eval").body, {"n": n, "p": p, "any": 1})
            except (SyntaxError, ValueError):
                raise ValueError(
                    f'spatial size "{entry}" is not understood: expected an integer or an '
                    'expression like "16*n"'
                ) from None
        if size < 1:
            raise ValueError(f"spatial size {entry} is not positive")
        sizes.append(size)
    return sizes


def _task(value: Task | str | None, raw: dict[str, Any], source: str) -> Task:
    candidate = value if value is not None else raw.get("task")
    try:
        return Task(str(candidate))
    except ValueError:
        known = ", ".join(t.value for t in Task)
        raise CardError(
            source, f'task "{candidate}" is not one of {known}: give the task explicitly'
        ) from None


def card_from_metadata(
    meta: BundleMetadata,
    *,
    source: str,
    name: str,
    task: Task | str | None,
    architecture: ArchitectureRef | None,
    roi_size: list[int] | None = None,
) -> ModelCard:
    """A model card for an external bundle, from its MONAI metadata.

    What MONAI metadata does not say (spacing, normalisation: ``external``; series selection:
    the task's defaults) is filled in conservatively. ``source`` names the bundle (in the card's
    ``source`` and in errors); ``roi_size`` replaces a symbolic input ``spatial_shape``.

    Raises
    ------
    CardError
        When the task is unknown or the derived card does not validate.
    """
    raw = meta.raw
    resolved_task = _task(task, raw, source)
    spatial = roi_size or concrete_shape(meta.inputs.spatial_shape)
    out_spatial = concrete_shape(meta.outputs.spatial_shape)
    segmentation = len(out_spatial) == len(spatial) and meta.outputs.format != "classes"
    channels = meta.outputs.num_channels
    if segmentation:
        activation = "softmax" if channels > 1 else "sigmoid"
    elif meta.outputs.type == "probabilities":
        activation = "none"
    else:
        activation = "sigmoid" if channels == 1 else "softmax"
    default_modality = "DX" if resolved_task is Task.CHEST_XR_TRIAGE else "CT"
    authors = raw.get("authors", [])
    frameworks = FrameworkVersions(
        python="unknown",
        torch=str(raw.get("pytorch_version", "unknown")),
        monai=str(raw.get("monai_version", "unknown")),
        numpy=str(raw.get("numpy_version", "unknown")),
    )
    changelog = raw.get("changelog")
    try:
        return ModelCard(
            name=name,
            task=resolved_task,
            description=str(raw.get("description", "")),
            architecture=architecture,
            inputs=InputSpec(
                name=meta.input_name,
                modality=(meta.inputs.modality or default_modality).upper(),
                body_part=_BODY_PARTS.get(resolved_task, "HEAD"),
                normalization=IntensityNormalization(method="external"),
                shape=(meta.inputs.num_channels, *spatial),
                axes="C" + _SPATIAL_AXES[: len(spatial)],
                is_patch_data=meta.inputs.is_patch_data,
                channel_def={
                    i: meta.inputs.channel_def.get(str(i), "image" if i == 0 else f"channel {i}")
                    for i in range(meta.inputs.num_channels)
                },
            ),
            outputs=OutputSpec(
                name=meta.output_name,
                kind="segmentation" if segmentation else "classification",
                activation=activation,
                shape=(channels, *spatial) if segmentation else (channels,),
                channel_def={
                    i: meta.outputs.channel_def.get(str(i), f"channel {i}") for i in range(channels)
                },
                meaning=f"{meta.outputs.type} ({meta.outputs.format or 'unspecified format'}), "
                "as documented by the imported bundle",
            ),
            training_data=TrainingData(source=str(raw.get("data_source", "unknown"))),
            intended_use=str(raw.get("intended_use", DEMO_INTENDED_USE)),
            series_selection=default_series_selection(resolved_task),
            authors=[authors] if isinstance(authors, str) else [str(a) for a in authors],
            changelog=str(next(iter(changelog.values())))
            if isinstance(changelog, dict) and changelog
            else "imported",
            source=f"imported MONAI bundle {source} version {raw.get('version', '?')}",
            frameworks=frameworks,
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "card"
        message = error["msg"].removeprefix("Value error, ")
        raise CardError(source, f"made from MONAI metadata: {where}: {message}") from exc
