"""Shipping a registry version into the repository and importing it back (models.shipping)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from models.bundle import ONNX_FILE, WEIGHTS_FILE
from models.card import ModelCard
from models.exceptions import HalfPrecisionParityError
from models.registry import ModelRegistry
from models.shipping import PROVENANCE_FILE, Provenance, ship, shipped_bundles
from tests.conftest import RADCLOUD
from tests.fixture_models import register_fixture_models
from training.tasks import Task


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    models = tmp_path_factory.mktemp("home") / "models"
    register_fixture_models(models, tasks=(Task.CHEST_XR,), thresholds={Task.CHEST_XR: 0.5})
    return ModelRegistry(models)


def test_a_shipped_bundle_has_float16_weights_provenance_and_no_onnx(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    model = registry.get("chest-xr-finding", 1)

    path = ship(model, tmp_path / "shipped", command="radcloud train --task chest-xr", machine="m")

    assert path == tmp_path / "shipped" / "chest-xr-finding"
    assert shipped_bundles(tmp_path / "shipped") == {"chest-xr-finding": path}
    state = torch.load(path / WEIGHTS_FILE, weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    assert not (path / ONNX_FILE).exists()
    provenance = Provenance.model_validate_json((path / PROVENANCE_FILE).read_text())
    assert provenance.registry_version == 1
    assert provenance.command == "radcloud train --task chest-xr"
    assert provenance.machine == "m" and provenance.seed == 0
    assert 0 <= provenance.parity_max_probability_difference <= provenance.parity_tolerance
    card = ModelCard.load(path / "card.json")
    assert "radcloud train --task chest-xr" in card.source and card.metrics == model.card.metrics
    assert json.loads((path / "metrics.json").read_text()) == model.metrics()


def test_importing_a_shipped_bundle_restores_float32_weights_and_onnx(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    original = registry.get("chest-xr-finding", 1)
    path = ship(original, tmp_path / "shipped")
    target = ModelRegistry(tmp_path / "home" / "models")

    imported = target.import_bundle(path)

    assert imported.onnx_path.is_file() and (imported.path / PROVENANCE_FILE).is_file()
    assert "ONNX exported" in target.history(imported.name)[-1].detail
    network = imported.load_torch("cpu")
    assert {p.dtype for p in network.parameters()} == {torch.float32}
    probe = torch.rand(2, *original.card.inputs.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torch.sigmoid(original.load_torch("cpu")(probe))
        actual = torch.sigmoid(network(probe))
    assert float((expected - actual).abs().max()) <= 0.01  # the documented shipping tolerance
    runner = imported.onnx_session(["CPUExecutionProvider"])
    onnx_out = runner.run(None, {runner.get_inputs()[0].name: probe.numpy()})[0]
    assert float((torch.sigmoid(torch.from_numpy(onnx_out)) - actual).abs().max()) <= 1e-4


def test_shipping_refuses_weights_float16_changes_too_much(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    shipped = tmp_path / "shipped"
    ship(registry.get("chest-xr-finding", 1), shipped)
    before = (shipped / "chest-xr-finding" / PROVENANCE_FILE).read_text()

    with pytest.raises(HalfPrecisionParityError, match="expected at most 0"):
        ship(registry.get("chest-xr-finding", 1), shipped, tolerance=0.0)

    # the bundle shipped before is untouched and no staging directory is left
    assert (shipped / "chest-xr-finding" / PROVENANCE_FILE).read_text() == before
    assert [p.name for p in shipped.iterdir()] == ["chest-xr-finding"]


def test_the_ship_command_ships_a_version_of_another_registry(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    home = registry.root.parent
    shipped = tmp_path / "shipped"

    options = ["--registry", str(home), "--to", str(shipped), "--machine", "a test machine"]
    result = subprocess.run(
        [*RADCLOUD, "models", "ship", "chest-xr-finding", "1", *options],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert "shipped chest-xr-finding version 1" in result.stdout
    provenance = Provenance.model_validate_json(
        (shipped / "chest-xr-finding" / PROVENANCE_FILE).read_text()
    )
    assert provenance.machine == "a test machine"
    assert provenance.command.startswith("radcloud train --task chest-xr --preset tiny")
