"""The ML engineers' Models page (issue 20 item 5) in Debian's chromium against a real stack of
its own (its promotions must not change the session stack's models): the versions and stages of
the chest X-ray model, the shadow comparison with its ROC curves and score scatter drawn from
real shadow results, Promote through the guard rails (a refusal shows its problems; forced with
a written reason it goes through), Roll back; each change seen in the API and the audit trail.
A radiologist does not see the page; an ML engineer of one hospital is refused it.

The stack serves slim fixture models (``tests/fixture_models.py``): version 1 in production
calls every radiograph critical (threshold 0), version 2 (the same card, threshold 1: calls
none) runs in shadow, version 3's card is below production's AUC floor. A radiologist signs the
shadowed studies (two findings confirmed, two rejected), so the comparison has a radiologist
truth with both classes, and so ROC curves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from core.audit import AuditTrail
from core.db.models import Role
from core.secrets import load_secrets
from core.security import Accounts, Actor
from imaging.synthetic import generate_study
from tests.conftest import Stack, settings_from_env, stack_env
from tests.fixture_models import register_fixture_models, register_fixture_version
from tests.serving.test_triage_e2e import poll, push, results
from tests.web.conftest import OUTSIDER, PASSWORD, RADIOLOGIST, SENDER, _add_accounts
from tests.web.pages import ARTIFACT_DIR, sign_in
from training.tasks import Task

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(1800),  # a stack of its own and four studies triaged twice each
]

ENGINEER = "ml-platform"  # an ML engineer of the platform (every hospital's models)
SEED = 808
TRUTH = (True, False, True, False)  # the radiologist's call on each shadowed study
_WAIT_S = 420


@dataclass(frozen=True)
class ModelRoom:
    """The stack, its chest X-ray model's name and the shadowed studies' truth."""

    stack: Stack
    name: str
    truth: dict[str, bool]  # Study Instance UID → confirmed finding

    @property
    def base_url(self) -> str:
        return str(self.stack.settings.api_url).rstrip("/")

    @contextlib.contextmanager
    def client(self, user: str) -> Iterator[httpx.Client]:
        """An API client signed in as ``user`` with the password the app uses."""
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            answer = client.post("/api/auth/token", data={"username": user, "password": PASSWORD})
            assert answer.status_code == 200, answer.text
            client.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
            yield client

    def model(self) -> dict[str, Any]:
        """The chest X-ray model as ``GET /api/models`` gives it."""
        with self.client(ENGINEER) as client:
            answer = client.get("/api/models")
        assert answer.status_code == 200, answer.text
        (model,) = [m for m in answer.json() if m["name"] == self.name]
        return dict(model)

    def changes(self) -> list[tuple[str, int | None, int, str, str | None]]:
        """The audited changes of the model, oldest first: (change, version, outcome, user,
        force reason)."""
        with self.stack.client("admin") as admin:
            records = admin.get("/api/audit", params={"resource_id": self.name}).json()
        return [
            (
                r["detail"]["change"],
                r["detail"].get("version"),
                r["outcome"],
                r["user_name"],
                r["detail"].get("force_reason"),
            )
            for r in reversed(records)
            if r["event_code"] == "110100"
        ]


def _sign(room_client: httpx.Client, uid: str, confirmed: bool) -> None:
    """Claim and sign the study, confirming or rejecting its one AI finding."""
    manifest = room_client.get(f"/api/studies/{uid}/viewer").json()
    (finding,) = manifest["findings"]
    claimed = room_client.post(
        f"/api/worklist/{uid}/claim", json={"version": manifest["reading"]["version"]}
    )
    assert claimed.status_code == 200, claimed.text
    decision = "confirmed" if confirmed else "rejected"
    signed = room_client.post(
        f"/api/studies/{uid}/sign",
        json={
            "version": claimed.json()["version"],
            "text": "Finding present." if confirmed else "No finding.",
            "decisions": [{"result_id": finding["result_id"], "decision": decision}],
        },
    )
    assert signed.status_code == 200, signed.text


@pytest.fixture(scope="module")
def model_room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelRoom]:
    env = stack_env(tmp_path_factory.mktemp("radcloud-models-page"))
    stack = Stack(env, settings_from_env(env))
    models_dir = stack.settings.paths.models_dir
    (name,) = register_fixture_models(models_dir, {Task.CHEST_XR: 0.0}, tasks=(Task.CHEST_XR,))
    register_fixture_version(models_dir, Task.CHEST_XR, 1.0)  # v2: the same card
    register_fixture_version(models_dir, Task.CHEST_XR, 1.0, auc=0.1)  # v3: below the floor
    try:
        stack.cli("up")  # inside: a start that fails stops what it did start
        _add_accounts(stack)
        db = stack.database()
        try:
            Accounts(db, AuditTrail.from_secrets(db, load_secrets(stack.settings))).add_user(
                ENGINEER, Role.ML_ENGINEER, PASSWORD, platform_operator=True, actor=Actor.cli()
            )
        finally:
            db.dispose()
        room = ModelRoom(stack, name, {})
        with room.client(ENGINEER) as engineer:
            started = engineer.post(f"/api/models/{name}/shadow", json={"version": 2})
        assert started.status_code == 200, started.text
        folder = tmp_path_factory.mktemp("models-page-studies")
        for index, positive in enumerate(TRUTH):
            study = generate_study("chest-xr", index, seed=SEED, positive=positive)
            push(stack, folder / str(index), study.datasets, sender=SENDER)
            room.truth[study.study_instance_uid] = positive
        with room.client(RADIOLOGIST) as reader:
            for uid, positive in room.truth.items():
                (row,) = results(stack, uid)
                assert row["status"] == "succeeded" and row["critical"], row
                _sign(reader, uid, positive)
        with room.client(ENGINEER) as engineer:
            poll(
                lambda: engineer.get(f"/api/models/{name}/compare").json()["studies"] == 4,
                timeout_s=_WAIT_S,
                what="shadow results of the four studies",
            )
        yield room
    finally:
        stack.cli("down", check=False)


@pytest.fixture(scope="module")
def web_origin(model_room: ModelRoom) -> str:
    """The origin ``page`` opens: this module's own stack."""
    return model_room.base_url


def test_a_radiologist_does_not_see_the_models_page(page: Page) -> None:
    sign_in(page, RADIOLOGIST, PASSWORD)
    expect(page.get_by_test_id("worklist")).to_be_visible()
    expect(page.get_by_test_id("nav-models")).to_have_count(0)
    page.goto("/app/?page=models")
    expect(page.get_by_test_id("worklist")).to_be_visible()  # not the Models page
    expect(page.get_by_test_id("models-page")).to_have_count(0)


def test_an_ml_engineer_of_one_hospital_is_refused_the_models(page: Page) -> None:
    sign_in(page, OUTSIDER, PASSWORD)
    expect(page.get_by_test_id("access-denied")).to_be_visible()
    expect(page.get_by_test_id("access-denied")).to_contain_text("platform operator")


def test_an_ml_engineer_sees_versions_stages_and_the_shadow_comparison(
    page: Page, model_room: ModelRoom
) -> None:
    sign_in(page, ENGINEER, PASSWORD)
    expect(page.get_by_test_id("nav-models")).to_have_attribute("aria-current", "page")
    model = page.locator(f"[data-testid=model][data-model='{model_room.name}']")
    rows = model.get_by_test_id("model-version")
    expect(rows).to_have_count(3)
    shown = [
        (
            row.get_attribute("data-version"),
            row.get_attribute("data-stage"),
            row.get_attribute("data-production"),
            row.get_attribute("data-shadow"),
        )
        for row in rows.all()
    ]
    assert shown == [
        ("3", "staged", "false", "false"),
        ("2", "staged", "false", "true"),
        ("1", "production", "true", "false"),
    ]
    expect(model.get_by_test_id("shadow-mark")).to_have_count(1)
    expect(rows.nth(2).get_by_test_id("promote")).to_be_hidden()  # production already

    comparison = model.get_by_test_id("shadow-comparison")
    expect(comparison.get_by_test_id("comparison-studies")).to_have_text("4")
    expect(comparison.get_by_test_id("comparison-agreement")).to_have_text("0 %")  # none agree
    radiologist = comparison.locator("[data-testid=comparison-figures][data-truth=radiologist]")
    expect(radiologist).to_have_count(2)
    with model_room.client(ENGINEER) as engineer:
        report = engineer.get(f"/api/models/{model_room.name}/compare").json()
    for arm in ("production", "shadow"):
        auc = report["truths"]["radiologist"][arm]["auc"]
        figures = comparison.locator(
            f"[data-testid=comparison-figures][data-truth=radiologist][data-arm={arm}]"
        )
        expect(figures.get_by_test_id("figure-auc")).to_have_text(f"{auc:.3f}")
    roc = comparison.locator("[data-testid=roc-plot][data-truth=radiologist]")
    expect(roc.get_by_test_id("roc-curve")).to_have_count(2)
    for curve in roc.get_by_test_id("roc-curve").all():
        arm = str(curve.get_attribute("data-arm"))
        assert int(str(curve.get_attribute("data-points"))) == len(
            report["roc"]["radiologist"][arm]
        )
        assert curve.bounding_box() is not None  # drawn
    expect(comparison.get_by_test_id("score-scatter").get_by_test_id("score-pair")).to_have_count(4)
    ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
    comparison.screenshot(path=ARTIFACT_DIR / "models-shadow-comparison.png")


def test_promote_refused_forced_and_rolled_back_from_the_page(
    page: Page, model_room: ModelRoom
) -> None:
    name = model_room.name
    sign_in(page, ENGINEER, PASSWORD)
    model = page.locator(f"[data-testid=model][data-model='{name}']")
    version = model.locator("[data-testid=model-version][data-version='2']")
    version.get_by_test_id("promote").click()
    action = model.get_by_test_id("model-action")
    expect(action.get_by_test_id("confirm-question")).to_contain_text("version 2")
    assert model_room.model()["production"] == 1  # nothing happens before the confirmation
    action.get_by_test_id("confirm-action").click()
    status = page.get_by_test_id("models-status")
    expect(status).to_contain_text("version 2 is production (was 1)")
    expect(version).to_have_attribute("data-production", "true")
    assert model_room.model()["production"] == 2
    assert model_room.changes()[-1][:4] == ("promoted", 2, 0, ENGINEER)

    model.locator("[data-testid=model-version][data-version='3']").get_by_test_id("promote").click()
    action.get_by_test_id("confirm-action").click()
    expect(action.get_by_test_id("promotion-problems")).to_contain_text("auc 0.100")
    force = action.get_by_test_id("force-promote")
    expect(force).to_be_disabled()  # no reason written yet
    assert model_room.model()["production"] == 2
    assert model_room.changes()[-1][:4] == ("promoted", 3, 4, ENGINEER)  # the refusal
    reason = "the card's figures come from a smaller test set"
    action.get_by_test_id("force-reason").fill(reason)
    force.click()
    expect(status).to_contain_text("version 3 is production (was 2); forced past: auc")
    assert model_room.model()["production"] == 3
    assert model_room.changes()[-1] == ("promoted", 3, 0, ENGINEER, reason)

    model.get_by_test_id("rollback").click()
    expect(action.get_by_test_id("confirm-question")).to_contain_text("from version 3")
    action.get_by_test_id("confirm-action").click()
    expect(status).to_contain_text("rolled back: version 2 is production (was 3)")
    expect(model.locator("[data-testid=model-version][data-version='2']")).to_have_attribute(
        "data-production", "true"
    )
    assert model_room.model()["production"] == 2
    assert model_room.changes()[-1][:4] == ("rolled back", 2, 0, ENGINEER)
