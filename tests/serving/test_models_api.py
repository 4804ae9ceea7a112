"""``GET /api/models`` over the real API under uvicorn, on a real registry and SQLite database:
every model's versions with stage, card figures and input contract, production and shadow
marked; refused to a radiologist and to an admin of one hospital (models serve every hospital)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from core.audit import AuditTrail
from core.config import load_settings
from core.db import Database, upgrade
from core.db.models import Role
from core.secrets import load_secrets
from core.security import Accounts, Actor, TokenService
from models.registry import ModelRegistry
from serving.api.app import create_app
from tests.fixture_models import register_fixture_version
from tests.helpers import served
from training.tasks import Task

USERS = {
    "engineer": (Role.ML_ENGINEER, [], True),
    "operator": (Role.ADMIN, [], True),
    "hospital-admin": (Role.ADMIN, ["North"], False),
    "reader": (Role.RADIOLOGIST, [], True),
}


@dataclass
class World:
    client: httpx.Client
    tokens: TokenService
    chest: str  # the chest X-ray model: v1 archived, v2 production, v3 shadow, v4 staged
    head: str  # the head CT model: one staged version, none in production
    registry: ModelRegistry

    def get(self, name: str, path: str = "/api/models") -> httpx.Response:
        role, _, _ = USERS[name]
        token = self.tokens.issue(name, [role])
        return self.client.get(path, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("models-api")
    settings = load_settings(home=home, mode="dev")
    db = Database.from_settings(settings)
    upgrade(db)
    accounts = Accounts(db, AuditTrail.from_secrets(db, load_secrets(settings)))
    for name, (role, hospitals, operator) in USERS.items():
        accounts.add_user(
            name, role, hospitals=hospitals, platform_operator=operator, actor=Actor.cli()
        )
    db.dispose()
    models_dir = settings.paths.models_dir
    registry = ModelRegistry(models_dir)
    chest = register_fixture_version(models_dir, Task.CHEST_XR, 1.0).name
    register_fixture_version(models_dir, Task.CHEST_XR, 1.0)
    register_fixture_version(models_dir, Task.CHEST_XR, 0.5, auc=0.1)
    register_fixture_version(models_dir, Task.CHEST_XR, 0.0)
    registry.promote(chest, 1)
    registry.promote(chest, 2)
    registry.set_shadow(chest, 3)
    head = register_fixture_version(models_dir, Task.HEAD_CT, 0.0).name
    with (
        served(create_app(settings)) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        tokens = TokenService(settings, load_secrets(settings).jwt_signing_key)
        yield World(client, tokens, chest, head, registry)


def test_every_model_with_its_versions_stages_production_and_shadow(world: World) -> None:
    answer = world.get("engineer")
    assert answer.status_code == 200, answer.text
    models = {m["name"]: m for m in answer.json()}
    assert sorted(models) == sorted([world.chest, world.head])
    chest = models[world.chest]
    card = world.registry.get(world.chest, 3).card
    assert (chest["task"], chest["production"], chest["shadow"]) == (str(card.task), 2, 3)
    assert [
        (v["version"], v["stage"], v["production"], v["shadow"]) for v in chest["versions"]
    ] == [
        (1, "archived", False, False),
        (2, "production", True, False),
        (3, "staged", False, True),
        (4, "staged", False, False),
    ]
    third = chest["versions"][2]
    assert third["threshold"] == 0.5 and third["metrics"]["auc"] == 0.1
    assert third["inputs"] == {
        "modality": card.inputs.modality,
        "body_part": card.inputs.body_part,
        "shape": list(card.inputs.shape),
        "axes": card.inputs.axes,
        "spacing_mm": list(card.inputs.spacing_mm) if card.inputs.spacing_mm else None,
        "dtype": card.inputs.dtype,
    }
    head = models[world.head]
    assert (head["production"], head["shadow"]) == (None, None)
    assert [v["stage"] for v in head["versions"]] == ["staged"]
    assert world.get("operator").json() == answer.json()  # a platform operator admin


def test_a_radiologist_and_an_admin_of_one_hospital_are_refused(world: World) -> None:
    for name in ("reader", "hospital-admin"):
        answer = world.get(name)
        assert answer.status_code == 403, (name, answer.text)
        assert world.chest not in answer.text
