"""The shipped head-CT model, looked at (issue 12, point 10): on a real stack serving the models
of ``models/shipped/`` (not the slim fixture models), the AI outline of a study with a known
lesion lies on that lesion and little else, in the mask the API serves and in what the viewer
draws in Debian's chromium; a head the model reads as normal shows no outline at all.

The studies are SYNTHETIC (dataset seed :data:`SEED`, never used in training): the lesion is the
first positive head CT of that seed whose finding measures 2-20 ml (small beside the 30-60 ml
subdurals; under 1 ml the shipped model is weak, as its card's strata say), and three normal
heads. The screenshots (``test-artifacts/web/shipped-*.png``) are the README's.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect
from scipy import ndimage

from imaging.synthetic import SyntheticStudy, generate_study
from models.registry import ModelRegistry
from models.shipping import SHIPPED_DIR, shipped_bundles
from tests.conftest import Stack, settings_from_env, stack_env
from tests.serving.test_triage_e2e import push, results
from tests.web.conftest import PASSWORD, RADIOLOGIST, SENDER, _add_accounts
from tests.web.pages import ARTIFACT_DIR, canvas_pixels, differs, sign_in, worklist_rows

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

SEED = 4242
LESION_ML = (2.0, 20.0)
NORMALS = 3


def _volume_ml(study: SyntheticStudy) -> float:
    return float(study.mask.sum() * np.prod(study.spacing)) / 1000.0


def _lesion_study() -> SyntheticStudy:
    """The first positive head CT of :data:`SEED` whose finding measures 2-20 ml (chosen by
    the ground truth alone, never by what the model says)."""
    for index in range(64):
        study = generate_study("head-ct", index, SEED, positive=True)
        if LESION_ML[0] <= _volume_ml(study) <= LESION_ML[1]:
            return study
    raise AssertionError(f"no positive head CT of {LESION_ML} ml in seed {SEED}'s first 64")


@dataclass(frozen=True)
class ShippedRoom:
    """A stack serving the shipped models, with the studies triaged and a radiologist."""

    stack: Stack
    lesion: SyntheticStudy
    normals: list[SyntheticStudy]
    results: dict[str, dict[str, Any]]  # StudyInstanceUID -> its head-CT result

    def api(self, path: str) -> Any:
        with self.stack.client() as client:
            answer = client.post(
                "/api/auth/token", data={"username": RADIOLOGIST, "password": PASSWORD}
            )
            client.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
            got = client.get(path)
        assert got.is_success, f"GET {path}: {got.status_code} {got.text[:300]}"
        return got.json()


@pytest.fixture(scope="module")
def shipped_room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShippedRoom]:
    """Its own stack (the session stack serves fixture models), the shipped models promoted as
    ``make demo`` does."""
    env = stack_env(tmp_path_factory.mktemp("radcloud-shipped"))
    stack = Stack(env, settings_from_env(env))
    registry = ModelRegistry(stack.settings.paths.models_dir)
    for bundle in shipped_bundles(SHIPPED_DIR).values():
        model = registry.import_bundle(bundle)
        registry.promote(model.name, model.version)
    try:
        stack.cli("up")  # inside: a start that fails stops what it did start
        _add_accounts(stack)
        lesion = _lesion_study()
        normals = [generate_study("head-ct", i, SEED, positive=False) for i in range(NORMALS)]
        folder = tmp_path_factory.mktemp("shipped-studies")
        for study in (lesion, *normals):
            push(stack, folder / study.study_instance_uid, study.datasets, sender=SENDER)
        final = {}
        for study in (lesion, *normals):
            (row,) = results(stack, study.study_instance_uid)
            assert row["status"] == "succeeded", row
            final[study.study_instance_uid] = row
        yield ShippedRoom(stack, lesion, normals, final)
    finally:
        stack.cli("down", check=False)


def _served_mask(room: ShippedRoom, study: SyntheticStudy) -> np.ndarray:
    """The finding's outline as the API serves it to the viewer, in the study's slice order."""
    uid = study.study_instance_uid
    (finding,) = room.api(f"/api/studies/{uid}/viewer")["findings"]
    served = room.api(f"/api/studies/{uid}/findings/{finding['result_id']}/mask")
    slice_of = {str(ds.SOPInstanceUID): n for n, ds in enumerate(study.datasets)}
    mask = np.zeros(study.mask.shape, dtype=bool)
    for frame in served["frames"]:
        bits = np.unpackbits(np.frombuffer(base64.b64decode(frame["bits"]), dtype=np.uint8))
        plane = bits[: served["rows"] * served["columns"]].reshape(served["rows"], -1)
        mask[slice_of[frame["sop_instance_uid"]]] = plane.astype(bool)
    return mask


def test_the_outline_lies_on_the_lesion_and_little_else(shipped_room: ShippedRoom) -> None:
    study = shipped_room.lesion
    row = shipped_room.results[study.study_instance_uid]
    assert row["critical"], f"the {_volume_ml(study):.1f}-ml {study.finding} was missed: {row}"
    outline, truth = _served_mask(shipped_room, study), study.mask.astype(bool)
    near = ndimage.binary_dilation(truth, iterations=2)  # 2 voxels: ~4 mm in plane
    covered = (outline & truth).sum() / truth.sum()
    on_lesion = (outline & near).sum() / outline.sum()
    marked = set(np.flatnonzero(outline.any(axis=(1, 2))))
    assert covered >= 0.5, f"the outline covers {covered:.0%} of the lesion"
    assert on_lesion >= 0.8, f"{1 - on_lesion:.0%} of the outline is away from the lesion"
    # the defect this guards against: scattered voxels on 24-30 of 26-32 slices of every head
    stray = marked - set(np.flatnonzero(near.any(axis=(1, 2))))
    assert len(stray) <= 2, f"outline on slices {sorted(stray)} far from the lesion"


def test_a_head_the_model_reads_as_normal_has_no_outline(shipped_room: ShippedRoom) -> None:
    flagged = []
    for study in shipped_room.normals:
        uid = study.study_instance_uid
        row, findings = shipped_room.results[uid], shipped_room.api(f"/api/studies/{uid}/viewer")
        outlined = "seg_sop_instance_uid" in row["findings"]
        assert outlined == row["critical"], row  # an outline exactly when the AI flags it
        assert bool(findings["findings"]) == row["critical"], findings["findings"]
        flagged.append(row["critical"])
    assert not all(flagged), "every normal head was flagged critical"


@pytest.fixture
def shipped_page(browser: Browser, shipped_room: ShippedRoom) -> Iterator[Page]:
    base_url = str(shipped_room.stack.settings.api_url).rstrip("/")
    context = browser.new_context(base_url=base_url, viewport={"width": 1440, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


def _open(page: Page, uid: str) -> None:
    page.locator(f"[data-testid=worklist-row][data-study-uid='{uid}']").get_by_test_id(
        "open-study"
    ).click()
    expect(page.get_by_test_id("viewport")).to_have_attribute("data-loaded", "true")


def _overlay(page: Page, on: bool) -> np.ndarray:
    """The canvas once it shows the overlay ``on`` (or off) and has settled."""
    toggle = page.get_by_test_id("overlay-toggle")
    toggle.check() if on else toggle.uncheck()
    previous = canvas_pixels(page)
    for _ in range(50):
        page.wait_for_timeout(200)
        current = canvas_pixels(page)
        if differs(previous, current) == 0:
            return current
        previous = current
    return previous


def test_the_viewer_draws_the_outline_over_the_lesion(
    shipped_room: ShippedRoom, shipped_page: Page
) -> None:
    page, study = shipped_page, shipped_room.lesion
    sign_in(page, RADIOLOGIST, PASSWORD)
    expect(worklist_rows(page).first).to_be_visible()
    ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACT_DIR / "shipped-worklist.png")
    _open(page, study.study_instance_uid)
    page.get_by_test_id("finding").first.get_by_test_id("finding-goto").click()
    viewport = page.get_by_test_id("viewport")
    widest = int(np.argmax(study.mask.sum(axis=(1, 2))))  # where the lesion is largest
    box = viewport.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(200):  # the wheel moves one slice a notch (display order = file order here)
        index = int(viewport.get_attribute("data-image-index") or 0)
        if index == widest:
            break
        page.mouse.wheel(0, 120 if index < widest else -120)
        expect(viewport).not_to_have_attribute("data-image-index", str(index))
    expect(viewport).to_have_attribute("data-image-index", str(widest))

    without, drawn = _overlay(page, False), _overlay(page, True)
    changed = np.any(without[..., :3].astype(int) != drawn[..., :3].astype(int), axis=-1)
    assert changed.any(), "the overlay changed nothing on the lesion's largest slice"
    # Where the lesion is on the canvas: the image fitted to the canvas and centred.
    rows, columns = study.mask.shape[1:]
    height, width = changed.shape
    scale = min(width / columns, height / rows)
    lesion_rows, lesion_columns = np.nonzero(study.mask[widest])
    expected = (
        (height - scale * rows) / 2 + scale * (lesion_rows.mean() + 0.5),
        (width - scale * columns) / 2 + scale * (lesion_columns.mean() + 0.5),
    )
    drawn_rows, drawn_columns = np.nonzero(changed)
    distance = np.hypot(drawn_rows.mean() - expected[0], drawn_columns.mean() - expected[1])
    assert distance <= 0.08 * scale * columns, (distance, expected)
    area = changed.sum() / (scale * scale)  # in image pixels
    assert area <= 3 * study.mask[widest].sum(), (area, int(study.mask[widest].sum()))
    page.get_by_test_id("overlay-opacity").fill("40")
    page.wait_for_timeout(500)
    page.screenshot(path=ARTIFACT_DIR / "shipped-viewer.png")


def test_the_viewer_shows_no_outline_on_a_head_read_as_normal(
    shipped_room: ShippedRoom, shipped_page: Page
) -> None:
    quiet = [
        s
        for s in shipped_room.normals
        if not shipped_room.results[s.study_instance_uid]["critical"]
    ]
    assert quiet, "every normal head was flagged critical"
    page = shipped_page
    sign_in(page, RADIOLOGIST, PASSWORD)
    expect(worklist_rows(page).first).to_be_visible()
    _open(page, quiet[0].study_instance_uid)
    expect(page.get_by_test_id("finding")).to_have_count(0)
    expect(page.locator("#overlay-note")).to_have_text("none on this series")
    ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACT_DIR / "shipped-normal.png")
