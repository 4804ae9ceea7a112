"""Networks, model cards, the model registry and ONNX export.

- :mod:`models.networks`: the MONAI architectures by name, with default input shapes
  (measured sizes and CPU speeds in its docstring and ``models/README.md``).
- :mod:`models.card`: :class:`ModelCard`, what a model expects, says and is for.
- :mod:`models.export`: ONNX export and the torch vs ONNX Runtime parity check.
- :mod:`models.registry`: :class:`ModelRegistry`, versions in MONAI bundle layout under
  ``RADCLOUD_HOME/models`` with stages (staged, production, archived) and rollback.
- :mod:`models.bundle`: reading and validating MONAI bundles.
- :mod:`models.exceptions`: the ``ModelError`` tree.
"""

from models.card import (
    DEMO_INTENDED_USE,
    ArchitectureRef,
    FrameworkVersions,
    InputSpec,
    IntensityNormalization,
    Metrics,
    ModelCard,
    OperatingThreshold,
    OutputSpec,
    ScoreCalibration,
    SeriesSelection,
    Task,
    TrainingData,
    default_series_selection,
)
from models.exceptions import (
    ArchitectureError,
    CardError,
    ExportError,
    InvalidBundleError,
    ModelError,
    ModelLoadError,
    ModelNotFoundError,
    ParityError,
    RegistryError,
    RegistryIndexError,
    StageError,
)
from models.export import check_parity, export_onnx, onnx_session, preferred_providers
from models.networks import (
    ARCHITECTURES,
    DEFAULT_PARITY_TOLERANCE,
    SEGMENTER_PARITY_TOLERANCE,
    Architecture,
    architecture_ref,
    build_network,
    count_parameters,
    default_device,
    get_architecture,
    sliding_window_inferer,
)
from models.registry import ModelRegistry, RegisteredModel, RegistryEvent, Stage

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_PARITY_TOLERANCE",
    "DEMO_INTENDED_USE",
    "SEGMENTER_PARITY_TOLERANCE",
    "Architecture",
    "ArchitectureError",
    "ArchitectureRef",
    "CardError",
    "ExportError",
    "FrameworkVersions",
    "InputSpec",
    "IntensityNormalization",
    "InvalidBundleError",
    "Metrics",
    "ModelCard",
    "ModelError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelRegistry",
    "OperatingThreshold",
    "OutputSpec",
    "ParityError",
    "RegisteredModel",
    "RegistryError",
    "RegistryEvent",
    "RegistryIndexError",
    "ScoreCalibration",
    "SeriesSelection",
    "Stage",
    "StageError",
    "Task",
    "TrainingData",
    "architecture_ref",
    "build_network",
    "check_parity",
    "count_parameters",
    "default_device",
    "default_series_selection",
    "export_onnx",
    "get_architecture",
    "onnx_session",
    "preferred_providers",
    "sliding_window_inferer",
]
