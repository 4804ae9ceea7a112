"""The model registry: register, stages, rollback, bundle and ONNX imports, and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import typer
from monai.bundle.config_parser import ConfigParser
from monai.networks.nets.densenet import DenseNet121
from monai.networks.nets.unet import UNet
from onnx import numpy_helper
from rich.console import Console
from torch import nn
from typer.testing import CliRunner

import models.registry
from models import (
    DEMO_INTENDED_USE,
    CardError,
    InputSpec,
    IntensityNormalization,
    InvalidBundleError,
    ModelCard,
    ModelNotFoundError,
    ModelRegistry,
    OperatingThreshold,
    OutputSpec,
    ParityError,
    RegisteredModel,
    Stage,
    StageError,
    Task,
    TrainingData,
    architecture_ref,
    build_network,
    default_series_selection,
    export_onnx,
)
from models.card import Metrics
from radcloud.cli import _common
from radcloud.cli import models as models_cli

MANIFEST = "a" * 64
SHAPE = (1, 32, 32)
TINY_2D: dict[str, Any] = {"init_features": 4, "growth_rate": 2, "block_config": [1, 1, 1, 1]}


def chest_card(name: str = "chest-xr-demo", **overrides: Any) -> ModelCard:
    """A chest radiograph triage card for a tiny DenseNet on 32x32 inputs."""
    fields: dict[str, Any] = {
        "name": name,
        "task": Task.CHEST_XR_TRIAGE,
        "architecture": architecture_ref("densenet121-2d", **TINY_2D),
        "inputs": InputSpec(
            modality="DX",
            body_part="CHEST",
            normalization=IntensityNormalization(method="percentile", percentiles=(0.5, 99.5)),
            shape=SHAPE,
            axes="CHW",
        ),
        "outputs": OutputSpec(
            kind="classification",
            activation="sigmoid",
            shape=(1,),
            channel_def={0: "critical finding"},
            meaning="logit; sigmoid gives the probability of a critical finding",
        ),
        "threshold": OperatingThreshold(value=0.3, method="sensitivity >= 0.95 on validation"),
        "training_data": TrainingData(source="synthetic chest radiographs", counts={"train": 8}),
        "metrics": Metrics(evaluated_on="synthetic test split", auc=0.91, sensitivity=0.95),
        "series_selection": default_series_selection(Task.CHEST_XR_TRIAGE),
    }
    return ModelCard(**(fields | overrides))


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_network("densenet121-2d", **TINY_2D)


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


def register(
    registry: ModelRegistry, seed: int = 0, name: str = "chest-xr-demo"
) -> RegisteredModel:
    return registry.register(
        chest_card(name),
        tiny_net(seed),
        torch.rand(1, *SHAPE),
        metrics={"auc": 0.91, "roc": [[0, 0], [1, 1]]},
        training_config={"epochs": 1, "lr": 1e-3},
        data_manifest_sha256=MANIFEST,
    )


# --- register ----------------------------------------------------------------------------


def test_register_writes_a_staged_monai_bundle(registry: ModelRegistry) -> None:
    model = register(registry)
    assert (model.name, model.version, model.stage) == ("chest-xr-demo", 1, Stage.STAGED)
    assert model.path == registry.root / "chest-xr-demo" / "1"
    for relative in (
        "card.json",
        "configs/metadata.json",
        "configs/inference.json",
        "models/model.pt",
        "models/model.onnx",
        "metrics.json",
        "training_config.json",
        "data_manifest.sha256",
    ):
        assert (model.path / relative).is_file(), relative
    assert (registry.root / "chest-xr-demo" / "registry.json").is_file()

    metadata = json.loads((model.path / "configs/metadata.json").read_text())
    assert metadata["version"] == "1"
    assert metadata["task"] == "chest-xr-triage"
    assert metadata["intended_use"] == DEMO_INTENDED_USE
    assert {"monai_version", "pytorch_version", "numpy_version", "changelog"} <= metadata.keys()
    image = metadata["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 1 and image["spatial_shape"] == [32, 32]
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == 1 and pred["channel_def"] == {"0": "critical finding"}

    assert model.card.version == 1
    assert model.card.training_data.manifest_sha256 == MANIFEST
    assert (model.path / "data_manifest.sha256").read_text().strip() == MANIFEST
    assert model.metrics()["roc"] == [[0, 0], [1, 1]]
    assert json.loads((model.path / "training_config.json").read_text())["epochs"] == 1


def test_loaded_torch_and_onnx_models_give_the_registered_models_outputs(
    registry: ModelRegistry,
) -> None:
    register(registry, seed=3)
    original = tiny_net(seed=3)
    x = torch.rand(2, *SHAPE)
    with torch.no_grad():
        expected = original(x)
    loaded = registry.get("chest-xr-demo").load_torch("cpu")
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    session = registry.get("chest-xr-demo").onnx_session()
    (onnx_out,) = session.run(None, {"image": x.numpy()})
    np.testing.assert_allclose(onnx_out, expected.numpy(), atol=1e-4)


def test_monai_can_instantiate_the_written_network_def(registry: ModelRegistry) -> None:
    model = register(registry)
    parser = ConfigParser()
    parser.read_config(str(model.path / "configs/inference.json"))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(model.weights_path, weights_only=True))


def test_versions_increase_and_the_newest_is_the_default(registry: ModelRegistry) -> None:
    register(registry, seed=0)
    register(registry, seed=1)
    assert [m.version for m in registry.versions("chest-xr-demo")] == [1, 2]
    assert registry.get("chest-xr-demo").version == 2
    assert registry.get("chest-xr-demo", "1").version == 1
    changelog = json.loads(
        (registry.get("chest-xr-demo").path / "configs/metadata.json").read_text()
    )["changelog"]
    assert set(changelog) == {"1", "2"}


def test_register_a_segmenter_with_its_documented_tolerance(registry: ModelRegistry) -> None:
    params = {"channels": [2, 4, 4, 4, 4], "num_res_units": 1}
    torch.manual_seed(0)
    network = build_network("unet-3d", **params)
    card = ModelCard(
        name="head-ct-lesion-seg",
        task=Task.HEAD_CT_LESION_SEG,
        architecture=architecture_ref("unet-3d", **params),
        inputs=InputSpec(
            modality="CT",
            body_part="HEAD",
            spacing_mm=(1.0, 1.0, 2.5),
            normalization=IntensityNormalization(method="window", window_width=80, window_level=40),
            shape=(1, 32, 32, 16),
            axes="CHWD",
            is_patch_data=True,
        ),
        outputs=OutputSpec(
            kind="segmentation",
            activation="softmax",
            shape=(2, 32, 32, 16),
            channel_def={0: "background", 1: "lesion"},
            meaning="per-voxel logits; softmax over channels gives lesion probability",
        ),
        training_data=TrainingData(source="synthetic head CT phantoms"),
        metrics=Metrics(dice=0.8),
        series_selection=default_series_selection(Task.HEAD_CT_LESION_SEG),
    )
    model = registry.register(
        card,
        network,
        torch.rand(1, 1, 32, 32, 16),
        metrics={"dice": 0.8},
        training_config={},
        data_manifest_sha256=MANIFEST,
    )
    event = registry.history("head-ct-lesion-seg")[-1]
    assert event.action == "register" and "tolerance 0.001" in event.detail
    metadata = json.loads((model.path / "configs/metadata.json").read_text())
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert pred["format"] == "segmentation" and pred["spatial_shape"] == [32, 32, 16]
    assert metadata["network_data_format"]["inputs"]["image"]["format"] == "hounsfield"


def test_onnx_that_disagrees_with_torch_is_refused_and_nothing_is_left(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def export_then_corrupt(*args: Any, **kwargs: Any) -> Path:
        path = export_onnx(*args, **kwargs)
        model = onnx.load(str(path))
        for initializer in model.graph.initializer:
            values = numpy_helper.to_array(initializer)
            if values.dtype == np.float32 and values.size > 1:
                initializer.CopyFrom(numpy_helper.from_array(values * 3.0, initializer.name))
        onnx.save(model, str(path))
        return path

    monkeypatch.setattr(models.registry, "export_onnx", export_then_corrupt)
    with pytest.raises(ParityError) as caught:
        register(registry)
    assert caught.value.max_abs_diff > caught.value.tolerance == 1e-4
    assert registry.list_models() == []
    assert list(registry.root.iterdir()) == []  # no version, no index, no staging leftovers


class _TracedBranch(DenseNet121):
    """The card's DenseNet with Python control flow on the data, which tracing freezes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = super().forward(x)
        return out if float(x.mean()) > 0.7 else out + 1.0


def test_model_whose_export_differs_from_eager_is_refused(registry: ModelRegistry) -> None:
    with pytest.raises(ParityError):
        registry.register(
            chest_card(),
            _TracedBranch(spatial_dims=2, in_channels=1, out_channels=1, **TINY_2D),
            torch.full((1, *SHAPE), 0.9),
            metrics={},
            training_config={},
            data_manifest_sha256=MANIFEST,
        )
    assert registry.names() == []


def test_weights_that_do_not_fit_the_cards_architecture_are_refused(
    registry: ModelRegistry,
) -> None:
    card = chest_card(
        architecture=architecture_ref("densenet121-2d", **(TINY_2D | {"growth_rate": 4}))
    )
    with pytest.raises(CardError, match="do not fit architecture densenet121-2d"):
        registry.register(
            card,
            tiny_net(),
            torch.rand(1, *SHAPE),
            metrics={},
            training_config={},
            data_manifest_sha256=MANIFEST,
        )


def test_example_input_must_have_the_cards_shape(registry: ModelRegistry) -> None:
    with pytest.raises(CardError, match=r"example_input has shape \[1, 1, 64, 64\]"):
        registry.register(
            chest_card(),
            tiny_net(),
            torch.rand(1, 1, 64, 64),
            metrics={},
            training_config={},
            data_manifest_sha256=MANIFEST,
        )


def test_card_validation_names_the_bad_field() -> None:
    data = json.loads(chest_card().to_json())
    data["inputs"]["axes"] = "CHWD"
    with pytest.raises(CardError, match=r"inputs: .*axes \"CHWD\" do not describe shape"):
        ModelCard.from_dict(data)
    data = json.loads(chest_card().to_json())
    data["name"] = "Chest XR!"
    with pytest.raises(CardError, match='"Chest XR!" is not a model name'):
        ModelCard.from_json(json.dumps(data))
    card = chest_card()
    assert ModelCard.from_json(card.to_json()) == card


# --- stages ------------------------------------------------------------------------------


def test_promote_archives_the_previous_production(registry: ModelRegistry) -> None:
    for seed in range(3):
        register(registry, seed=seed)
    assert registry.production("chest-xr-demo") is None
    with pytest.raises(ModelNotFoundError, match="has no production version"):
        registry.get("chest-xr-demo", "production")

    assert registry.promote("chest-xr-demo", 1).stage is Stage.PRODUCTION
    registry.promote("chest-xr-demo", 2)
    stages = {m.version: m.stage for m in registry.versions("chest-xr-demo")}
    assert stages == {1: Stage.ARCHIVED, 2: Stage.PRODUCTION, 3: Stage.STAGED}
    assert registry.get("chest-xr-demo", "production").version == 2
    production = registry.production("chest-xr-demo")
    assert production is not None and production.version == 2


def test_rollback_restores_the_previous_production(registry: ModelRegistry) -> None:
    for seed in range(3):
        register(registry, seed=seed)
    with pytest.raises(StageError, match="no production version to roll back"):
        registry.rollback("chest-xr-demo")
    registry.promote("chest-xr-demo", 1)
    with pytest.raises(StageError, match="no earlier production version"):
        registry.rollback("chest-xr-demo")
    registry.promote("chest-xr-demo", 2)
    registry.promote("chest-xr-demo", 3)

    assert registry.rollback("chest-xr-demo").version == 2
    stages = {m.version: m.stage for m in registry.versions("chest-xr-demo")}
    assert stages == {1: Stage.ARCHIVED, 2: Stage.PRODUCTION, 3: Stage.ARCHIVED}
    assert registry.rollback("chest-xr-demo").version == 1
    assert [e.action for e in registry.history("chest-xr-demo")][-2:] == ["rollback", "rollback"]


def test_stage_changes_survive_a_new_registry_object(registry: ModelRegistry) -> None:
    register(registry)
    registry.promote("chest-xr-demo", 1)
    again = ModelRegistry(registry.root)
    assert again.get("chest-xr-demo", "production").version == 1


def test_unknown_models_and_versions_are_named(registry: ModelRegistry) -> None:
    with pytest.raises(ModelNotFoundError, match='model "nope" is not registered'):
        registry.get("nope")
    with pytest.raises(ModelNotFoundError):
        registry.get("../../etc")  # names never reach outside the registry
    register(registry)
    with pytest.raises(ModelNotFoundError, match="has no version 7"):
        registry.promote("chest-xr-demo", 7)


# --- bundle import -----------------------------------------------------------------------

SEG_PARAMS: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [2, 4],
    "strides": [2],
}


def seg_metadata(spatial_shape: list[Any], num_channels: int = 2) -> dict[str, Any]:
    return {
        "version": "0.3.1",
        "name": "Lesion Seg",
        "task": "head-ct-lesion-seg",
        "description": "a bundle from elsewhere",
        "authors": "someone",
        "monai_version": "1.6.1",
        "pytorch_version": "2.13.0",
        "numpy_version": "2.4.6",
        "changelog": {"0.3.1": "tuned"},
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": spatial_shape,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": num_channels,
                    "spatial_shape": spatial_shape,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {"0": "background", "1": "lesion"},
                }
            },
        },
    }


def make_bundle(
    root: Path,
    *,
    metadata: dict[str, Any] | None = None,
    weights: bool = True,
    onnx_file: bool = False,
) -> tuple[Path, nn.Module]:
    """A MONAI bundle directory holding a tiny 3D UNet, as a user would copy it in."""
    torch.manual_seed(1)
    network = UNet(**SEG_PARAMS).eval()
    bundle = root / "lesion_seg_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs/metadata.json").write_text(json.dumps(metadata or seg_metadata([16] * 3)))
    (bundle / "configs/inference.json").write_text(
        json.dumps(
            {
                "spatial_dims": 3,
                "network_def": {"_target_": "UNet", **SEG_PARAMS, "spatial_dims": "@spatial_dims"},
                "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16]},
            }
        )
    )
    if weights:
        torch.save(network.state_dict(), bundle / "models/model.pt")
    if onnx_file:
        export_onnx(network, torch.rand(1, 1, 16, 16, 16), bundle / "models/model.onnx")
    return bundle, network


def test_import_bundle_registers_a_loadable_staged_version(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    bundle, network = make_bundle(tmp_path, onnx_file=True)
    model = registry.import_bundle(bundle)
    assert (model.name, model.version, model.stage) == ("lesion-seg", 1, Stage.STAGED)
    assert model.card.task is Task.HEAD_CT_LESION_SEG
    assert model.card.inputs.shape == (1, 16, 16, 16)
    assert model.card.outputs.channel_def == {0: "background", 1: "lesion"}
    assert "0.3.1" in model.card.source

    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.load_torch("cpu")(x), network(x))
    (onnx_out,) = model.onnx_session().run(None, {"image": x.numpy()})
    assert onnx_out.shape == (1, 2, 16, 16, 16)
    assert (bundle / "configs/metadata.json").is_file()  # the source is left alone


def test_symbolic_spatial_shapes_of_zoo_bundles_are_understood(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    bundle, _ = make_bundle(tmp_path, metadata=seg_metadata(["8*n"] * 3), onnx_file=True)
    model = registry.import_bundle(bundle)
    assert model.card.inputs.shape == (1, 16, 16, 16)  # the inferer's roi_size


def test_import_bundle_takes_a_name(registry: ModelRegistry, tmp_path: Path) -> None:
    bundle, _ = make_bundle(tmp_path)
    assert registry.import_bundle(bundle, name="head-ct-seg").name == "head-ct-seg"


def test_bundle_without_metadata_is_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    bundle, _ = make_bundle(tmp_path)
    (bundle / "configs/metadata.json").unlink()
    with pytest.raises(InvalidBundleError, match=r"configs/metadata\.json is missing") as caught:
        registry.import_bundle(bundle)
    assert caught.value.path == bundle
    assert registry.names() == []


def test_metadata_without_network_data_format_is_refused(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    metadata = seg_metadata([16] * 3)
    del metadata["network_data_format"]["inputs"]["image"]["spatial_shape"]
    bundle, _ = make_bundle(tmp_path, metadata=metadata)
    with pytest.raises(InvalidBundleError, match=r"inputs\.image\.spatial_shape"):
        registry.import_bundle(bundle)


def test_spatial_shape_that_the_onnx_file_contradicts_is_refused(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    bundle, _ = make_bundle(
        tmp_path, metadata=seg_metadata([32, 32, 32]), weights=False, onnx_file=True
    )
    with pytest.raises(InvalidBundleError, match=r"model\.onnx input shape .* spatial_shape"):
        registry.import_bundle(bundle)
    assert registry.names() == []


def test_spatial_shape_the_weights_contradict_is_refused(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    bundle, _ = make_bundle(tmp_path, metadata=seg_metadata([17, 17, 17]))
    with pytest.raises(
        InvalidBundleError,
        match=r"model\.pt gives output spatial shape \[18, 18, 18\]: .*spatial_shape is \[17",
    ):
        registry.import_bundle(bundle)
    assert registry.names() == []


def test_output_channels_the_weights_contradict_are_refused(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    bundle, _ = make_bundle(tmp_path, metadata=seg_metadata([16] * 3, num_channels=3))
    with pytest.raises(InvalidBundleError, match=r"expects 3 channel\(s\)"):
        registry.import_bundle(bundle)


def test_unreadable_weights_are_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    bundle, _ = make_bundle(tmp_path)
    (bundle / "models/model.pt").write_bytes(b"\x00 not a torch file")
    with pytest.raises(InvalidBundleError, match=r"models/model\.pt: .*weights_only=True"):
        registry.import_bundle(bundle)
    assert registry.names() == []


def test_weights_that_do_not_fit_the_network_def_are_refused(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    bundle, _ = make_bundle(tmp_path)
    torch.save(UNet(**{**SEG_PARAMS, "channels": [4, 8]}).state_dict(), bundle / "models/model.pt")
    with pytest.raises(InvalidBundleError, match=r"model\.pt does not fit"):
        registry.import_bundle(bundle)


def test_pickled_code_in_weights_is_never_run(registry: ModelRegistry, tmp_path: Path) -> None:
    bundle, network = make_bundle(tmp_path)
    torch.save({"model": network, "note": "a whole pickled module"}, bundle / "models/model.pt")
    with pytest.raises(InvalidBundleError, match="weights_only"):
        registry.import_bundle(bundle)


def test_bundle_of_an_unknown_task_needs_one(registry: ModelRegistry, tmp_path: Path) -> None:
    metadata = seg_metadata([16] * 3) | {"task": "Spleen segmentation"}
    bundle, _ = make_bundle(tmp_path, metadata=metadata)
    with pytest.raises(InvalidBundleError, match='task "Spleen segmentation" is not one of'):
        registry.import_bundle(bundle)
    model = registry.import_bundle(bundle, task="head-ct-lesion-seg")
    assert model.card.task is Task.HEAD_CT_LESION_SEG


def test_a_registered_version_can_be_imported_elsewhere(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    register(registry, seed=0)
    source = register(registry, seed=1)
    other = ModelRegistry(tmp_path / "other")
    copied = other.import_bundle(source.path)
    assert copied.card.architecture == source.card.architecture
    assert copied.version == copied.card.version == 1
    metadata = json.loads((copied.path / "configs/metadata.json").read_text())
    assert metadata["version"] == "1"
    x = torch.rand(1, *SHAPE)
    with torch.no_grad():
        assert torch.equal(copied.load_torch("cpu")(x), source.load_torch("cpu")(x))


# --- ONNX import -------------------------------------------------------------------------


def test_import_onnx_with_monai_metadata(registry: ModelRegistry, tmp_path: Path) -> None:
    bundle, _ = make_bundle(tmp_path, onnx_file=True)
    metadata = tmp_path / "metadata.json"
    shutil.copy(bundle / "configs/metadata.json", metadata)
    model = registry.import_onnx(bundle / "models/model.onnx", metadata, name="seg-onnx")
    assert (model.name, model.stage, model.card.architecture) == ("seg-onnx", Stage.STAGED, None)
    (out,) = model.onnx_session().run(None, {"image": np.zeros((2, 1, 16, 16, 16), np.float32)})
    assert out.shape == (2, 2, 16, 16, 16)
    assert not model.weights_path.exists()


def test_import_onnx_with_a_model_card(registry: ModelRegistry, tmp_path: Path) -> None:
    onnx_path = export_onnx(tiny_net(), torch.rand(1, *SHAPE), tmp_path / "chest.onnx")
    card_path = tmp_path / "card.json"
    card_path.write_text(chest_card("chest-from-onnx").to_json())
    model = registry.import_onnx(onnx_path, card_path)
    assert model.name == "chest-from-onnx" and model.card.version == 1
    metadata = json.loads((model.path / "configs/metadata.json").read_text())
    assert metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] == [32, 32]


def test_import_onnx_refuses_metadata_with_other_shapes(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    onnx_path = export_onnx(tiny_net(), torch.rand(1, 1, 64, 64), tmp_path / "chest.onnx")
    card_path = tmp_path / "card.json"
    card_path.write_text(chest_card().to_json())  # says 32x32
    with pytest.raises(InvalidBundleError, match=r"input shape \['batch', 1, 64, 64\]") as caught:
        registry.import_onnx(onnx_path, card_path)
    assert caught.value.path == onnx_path
    assert registry.names() == []


def test_import_onnx_refuses_metadata_of_neither_format(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    onnx_path = export_onnx(tiny_net(), torch.rand(1, *SHAPE), tmp_path / "chest.onnx")
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps({"name": "x"}))
    with pytest.raises(InvalidBundleError, match="neither MONAI metadata"):
        registry.import_onnx(onnx_path, metadata)


# --- CLI ---------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("RADCLOUD_HOME", str(tmp_path / "home"))
    # rich tables are as wide as the terminal: the commands print to a console 160 wide. Not
    # COLUMNS set here: rich fixes a console's width at its creation if COLUMNS is set then, as it
    # is in a pytest-xdist worker (COLUMNS=80, exported in its controller by GNU readline).
    monkeypatch.setattr(models_cli, "console", Console(width=160))
    _common.get_settings.cache_clear()
    app = typer.Typer()
    models_cli.register(app)
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(app, ["models", *args])

    yield invoke
    _common.get_settings.cache_clear()


def test_cli_list_show_promote_rollback(cli: Any, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "home" / "models")
    register(registry, seed=0)
    register(registry, seed=1)

    listed = cli("list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.output.splitlines()]
    assert [(r["version"], r["stage"]) for r in rows] == [(1, "staged"), (2, "staged")]
    assert "chest-xr-demo" in cli("list").output

    shown = cli("show", "chest-xr-demo", "--version", "1", "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["version"] == 1
    assert "critical finding" in cli("show", "chest-xr-demo").output

    assert cli("promote", "chest-xr-demo", "1").exit_code == 0
    promoted = cli("promote", "chest-xr-demo", "2")
    assert promoted.exit_code == 0 and "version 1 archived" in promoted.output
    rolled = cli("rollback", "chest-xr-demo")
    assert rolled.exit_code == 0 and "version 1 is production again" in rolled.output
    assert registry.get("chest-xr-demo", "production").version == 1


def test_cli_reports_errors_with_exit_status_1(cli: Any) -> None:
    result = cli("show", "nope")
    assert result.exit_code == 1
    assert 'model "nope" is not registered' in result.output
    assert cli("rollback", "nope").exit_code == 1


def test_cli_imports_bundles_and_onnx_files(cli: Any, tmp_path: Path) -> None:
    bundle, _ = make_bundle(tmp_path, onnx_file=True)
    result = cli("import", str(bundle), "--name", "lesion-seg")
    assert result.exit_code == 0, result.output
    assert "imported lesion-seg version 1" in result.output

    no_metadata = cli("import", str(bundle / "models/model.onnx"))
    assert no_metadata.exit_code == 1 and "--metadata" in no_metadata.output
    result = cli(
        "import",
        str(bundle / "models/model.onnx"),
        "--metadata",
        str(bundle / "configs/metadata.json"),
        "--name",
        "lesion-seg",
    )
    assert result.exit_code == 0, result.output
    assert "imported lesion-seg version 2" in result.output

    metadata = json.loads((bundle / "configs/metadata.json").read_text())
    (bundle / "configs/metadata.json").write_text(json.dumps(metadata | {"task": "spleen"}))
    assert cli("import", str(bundle)).exit_code == 1
    with_task = cli("import", str(bundle), "--task", "head-ct-lesion-seg")
    assert with_task.exit_code == 0, with_task.output
    assert "imported lesion-seg version 3" in with_task.output

    (bundle / "configs/metadata.json").unlink()
    refused = cli("import", str(bundle))
    assert refused.exit_code == 1 and "configs/metadata.json is missing" in refused.output
