"""The reading web app in a real browser (Debian's chromium, headless, through Playwright)
against a real radcloud: sign-in, the worklist's order, the viewer (image, window presets, AI
overlay, stack scrolling), signing a report into an SR and training labels, and a role without
access. The selectors are docs/reading-app.md's; screenshots go to ``test-artifacts/web/``."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pydicom
import pytest
from playwright.sync_api import Locator, Page, expect
from sqlalchemy import select

from core.db.models import Label, Study
from tests.web.conftest import OUTSIDER, PASSWORD, RADIOLOGIST, ReadingRoom
from tests.web.pages import (
    ARTIFACT_DIR,
    canvas_pixels,
    centre,
    differs,
    open_viewer,
    screenshot_pixels,
    sign_in,
    worklist_rows,
)

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def _eventually_differs(
    capture: Callable[[], np.ndarray], before: np.ndarray, what: str, timeout_s: float = 10.0
) -> float:
    """Capture until the image differs from ``before`` (Cornerstone draws on the next
    animation frame); the fraction of pixels changed."""
    deadline = time.monotonic() + timeout_s
    while True:
        changed = differs(before, capture())
        if changed > 0.01:
            return changed
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {changed:.2%} of the pixels changed in {timeout_s} s")
        time.sleep(0.2)


def _settled(capture: Callable[[], np.ndarray], timeout_s: float = 10.0) -> np.ndarray:
    """The image once two captures in a row agree (a pending redraw has landed)."""
    deadline = time.monotonic() + timeout_s
    previous = capture()
    while True:
        current = capture()
        if differs(previous, current) == 0 or time.monotonic() > deadline:
            return current
        previous = current


def _signed_in_worklist(page: Page) -> None:
    sign_in(page, RADIOLOGIST, PASSWORD)
    expect(page.get_by_test_id("user-name")).to_contain_text(RADIOLOGIST)
    expect(worklist_rows(page).first).to_be_visible()


def _viewer_manifest(room: ReadingRoom, uid: str) -> dict[str, Any]:
    manifest: dict[str, Any] = room.api(RADIOLOGIST, "GET", f"/api/studies/{uid}/viewer")
    return manifest


def test_sign_in_refuses_a_wrong_password_and_then_names_the_user(
    page: Page, reading_room: ReadingRoom
) -> None:
    with page.expect_response(
        lambda r: r.request.method == "POST" and urlsplit(r.url).path.endswith("/auth/token")
    ) as refused:
        sign_in(page, RADIOLOGIST, "not-the-password-at-all")
    assert refused.value.status == 401, f"{refused.value.url}: {refused.value.status}"
    expect(page.get_by_test_id("sign-in-error")).to_be_visible()
    expect(page.get_by_test_id("user-name")).to_have_count(0)

    page.locator("#password").fill(PASSWORD)
    page.get_by_test_id("sign-in").click()
    expect(page.get_by_test_id("user-name")).to_contain_text(RADIOLOGIST)
    expect(page.get_by_test_id("sign-in-error")).to_be_hidden()


def test_the_worklist_shows_the_apis_priority_order_with_critical_studies_first(
    page: Page, reading_room: ReadingRoom
) -> None:
    with page.expect_response(
        lambda r: urlsplit(r.url).path == "/api/worklist" and r.request.method == "GET"
    ) as first_load:
        _signed_in_worklist(page)
    query = urlsplit(first_load.value.url).query
    expect(worklist_rows(page)).to_have_count(len(first_load.value.json()["items"]))
    shown = [row.get_attribute("data-study-uid") for row in worklist_rows(page).all()]

    answer = reading_room.api(RADIOLOGIST, "GET", f"/api/worklist?{query}")
    assert shown == [item["study_instance_uid"] for item in answer["items"]]
    first_head, second_head = (s.study_instance_uid for s in reading_room.head_cts)
    radiograph = reading_room.radiograph.study_instance_uid
    assert shown.index(first_head) < shown.index(radiograph)
    assert shown.index(second_head) < shown.index(radiograph)
    for uid, critical in ((first_head, "true"), (second_head, "true"), (radiograph, "false")):
        row = page.locator(f"[data-testid=worklist-row][data-study-uid='{uid}']")
        expect(row).to_have_attribute("data-critical", critical)
        expect(row).to_have_attribute("data-status", "unread")
    expect(page.locator(f"[data-study-uid='{first_head}']")).to_contain_class("critical")
    ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACT_DIR / "worklist.png")


def test_opening_a_study_claims_it_and_draws_its_image(
    page: Page, reading_room: ReadingRoom
) -> None:
    uid = reading_room.head_cts[0].study_instance_uid
    _signed_in_worklist(page)
    viewport = open_viewer(page, uid)

    claimed = reading_room.api(RADIOLOGIST, "GET", "/api/worklist?status=in_progress&limit=500")
    (row,) = [item for item in claimed["items"] if item["study_instance_uid"] == uid]
    assert row["status"] == "in_progress" and row["claimed_by"] == RADIOLOGIST
    image = canvas_pixels(page)[..., :3]
    assert image.std() > 0 and len(np.unique(image.reshape(-1, 3), axis=0)) > 16
    shown = screenshot_pixels(viewport)
    assert shown.std() > 0 and len(np.unique(shown.reshape(-1, 3), axis=0)) > 16
    slices = len(reading_room.head_cts[0].datasets)
    expect(page.get_by_test_id("corner-slice")).to_contain_text(f"/ {slices}")


def test_a_window_preset_redraws_the_image_and_the_corner(
    page: Page, reading_room: ReadingRoom
) -> None:
    _signed_in_worklist(page)
    open_viewer(page, reading_room.head_cts[0].study_instance_uid)
    presets = reading_room.api(RADIOLOGIST, "GET", "/api/viewer/config")["presets"]
    widest = max(presets, key=lambda preset: preset["window"])  # far from any brain window
    corner = page.get_by_test_id("corner-wl")
    before_text = corner.inner_text()
    before = canvas_pixels(page)

    page.locator(f"[data-testid=preset][data-preset-name='{widest['name']}']").click()
    expect(corner).to_have_text(f"W {widest['window']:g} L {widest['level']:g}")
    assert corner.inner_text() != before_text
    _eventually_differs(lambda: canvas_pixels(page), before, f"preset {widest['name']}")


def test_the_ai_overlay_toggles_on_the_findings_slice(
    page: Page, reading_room: ReadingRoom
) -> None:
    uid = reading_room.head_cts[0].study_instance_uid
    (finding,) = _viewer_manifest(reading_room, uid)["findings"]
    _signed_in_worklist(page)
    viewport = open_viewer(page, uid)
    listed = page.locator(f"[data-testid=finding][data-result-id='{finding['result_id']}']")
    expect(listed).to_contain_text("AI result — not verified")

    first, slices = finding["slices"][0], len(reading_room.head_cts[0].datasets)
    while _scroll(page, viewport, slices) == first:
        pass
    listed.get_by_test_id("finding-goto").click()
    expect(viewport).to_have_attribute("data-image-index", str(first))
    expect(page.get_by_test_id("corner-slice")).to_have_text(f"Im {first + 1} / {slices}")

    def shown() -> np.ndarray:
        return centre(screenshot_pixels(viewport))

    toggle = page.get_by_test_id("overlay-toggle")
    toggle.uncheck()
    without_overlay = _settled(shown)
    toggle.check()
    _eventually_differs(shown, without_overlay, "overlay on")
    with_overlay = shown()
    toggle.uncheck()
    _eventually_differs(shown, with_overlay, "overlay off")
    toggle.check()
    _eventually_differs(shown, without_overlay, "overlay on again")
    opaque = shown()
    page.get_by_test_id("overlay-opacity").fill("25")
    _eventually_differs(shown, opaque, "overlay opacity 25 %")
    _move_mouse_over(page, viewport)
    for _ in range(slices // 2 - first):  # to mid-brain, for the screenshot
        page.mouse.wheel(0, 120)
    expect(page.get_by_test_id("corner-slice")).to_have_text(f"Im {slices // 2 + 1} / {slices}")
    ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACT_DIR / "viewer.png")


def _image_index(viewport: Locator) -> int:
    expect(viewport).to_have_attribute("data-image-index", re.compile(r"^\d+$"))
    return int(viewport.get_attribute("data-image-index") or "")


def _move_mouse_over(page: Page, viewport: Locator) -> None:
    box = viewport.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)


def _scroll(page: Page, viewport: Locator, slices: int) -> int:
    """Turn the mouse wheel one notch over the image (towards the stack's far end); the new
    image index, after checking that it changed."""
    index = _image_index(viewport)
    _move_mouse_over(page, viewport)
    page.mouse.wheel(0, 120 if index < slices - 1 else -120)
    expect(viewport).not_to_have_attribute("data-image-index", str(index))
    return _image_index(viewport)


def test_the_mouse_wheel_scrolls_through_the_slices(page: Page, reading_room: ReadingRoom) -> None:
    _signed_in_worklist(page)
    viewport = open_viewer(page, reading_room.head_cts[0].study_instance_uid)
    corner = page.get_by_test_id("corner-slice")
    slices = len(reading_room.head_cts[0].datasets)
    index = _image_index(viewport)
    expect(corner).to_have_text(f"Im {index + 1} / {slices}")

    now = _scroll(page, viewport, slices)
    assert now != index and 0 <= now < slices
    expect(corner).to_have_text(f"Im {now + 1} / {slices}")


def _study_sr_uids(room: ReadingRoom, uid: str) -> set[str]:
    """SOPInstanceUIDs of the study's SR instances in Orthanc."""
    with room.stack.orthanc() as orthanc:
        found = orthanc.post(
            "/tools/find",
            json={
                "Level": "Instance",
                "Query": {"StudyInstanceUID": uid, "Modality": "SR"},
                "Expand": True,
            },
        ).json()
    return {instance["MainDicomTags"]["SOPInstanceUID"] for instance in found}


def _orthanc_instance(room: ReadingRoom, sop_instance_uid: str) -> pydicom.Dataset:
    with room.stack.orthanc() as orthanc:
        (match,) = [
            m
            for m in orthanc.post("/tools/lookup", content=sop_instance_uid).json()
            if m["Type"] == "Instance"
        ]
        data = orthanc.get(f"/instances/{match['ID']}/file").content
    return pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))


def _texts(dataset: pydicom.Dataset) -> str:
    """Every text value of ``dataset`` and its sequences, one per line."""
    values: list[str] = []
    for element in dataset.iterall():
        if element.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "CS", "UC") and element.value:
            values.append(str(element.value))
    return "\n".join(values)


def test_confirming_the_findings_and_signing_stores_an_sr_and_training_labels(
    page: Page, reading_room: ReadingRoom
) -> None:
    uid = reading_room.head_cts[1].study_instance_uid
    srs_before = _study_sr_uids(reading_room, uid)
    _signed_in_worklist(page)
    open_viewer(page, uid)
    sign = page.get_by_test_id("sign-report")
    findings = page.get_by_test_id("finding")
    expect(findings).to_have_count(len(_viewer_manifest(reading_room, uid)["findings"]))
    expect(sign).to_be_disabled()

    for finding in findings.all():
        finding.get_by_test_id("confirm-finding").click()
        expect(finding).to_have_attribute("data-decision", "confirmed")
    text = "Synthetic hyperdense lesion confirmed. Browser test report."
    page.get_by_test_id("report-text").fill(text)
    expect(sign).to_be_enabled()
    with page.expect_response(
        lambda r: urlsplit(r.url).path == f"/api/studies/{uid}/sign"
    ) as signed:
        sign.click()
    expect(page.get_by_test_id("sign-status")).to_contain_text("Signed")
    expect(findings.first).not_to_contain_text("not verified")
    assert signed.value.status == 200, signed.value.text()
    outcome = signed.value.json()

    sr_uid = outcome["sr_sop_instance_uid"]
    assert _study_sr_uids(reading_room, uid) == srs_before | {sr_uid}
    sr = _orthanc_instance(reading_room, sr_uid)
    assert sr.Modality == "SR" and sr.StudyInstanceUID == uid
    written = _texts(sr)
    assert RADIOLOGIST in written and text in written

    db = reading_room.stack.database()
    try:
        with db.session() as session:
            labels = session.scalars(
                select(Label)
                .join(Study, Label.study_id == Study.id)
                .where(Study.study_instance_uid == uid)
            ).all()
            rows = [(x.source, x.author, x.present, x.inference_result_id) for x in labels]
    finally:
        db.dispose()
    assert rows and len(rows) == outcome["labels"]
    assert all(r[:3] == ("radiologist", RADIOLOGIST, True) for r in rows), rows
    assert all(r[3] is not None for r in rows), rows

    page.goto("/app/")
    page.get_by_test_id("filter-status").select_option("reported")
    row = page.locator(f"[data-testid=worklist-row][data-study-uid='{uid}']")
    expect(row).to_have_attribute("data-status", "reported")


def test_a_role_without_access_is_refused_and_sees_no_patient_data(
    page: Page, reading_room: ReadingRoom
) -> None:
    answered: list[tuple[str, int]] = []
    page.on("response", lambda r: answered.append((urlsplit(r.url).path, r.status)))
    sign_in(page, OUTSIDER, PASSWORD)
    expect(page.get_by_test_id("access-denied")).to_be_visible()
    expect(worklist_rows(page)).to_have_count(0)
    study = reading_room.head_cts[0]
    page.goto(f"/app/viewer.html?study={study.study_instance_uid}")
    expect(page.get_by_test_id("access-denied")).to_be_visible()
    expect(page.get_by_test_id("finding")).to_have_count(0)
    content = page.content()
    for shown in reading_room.studies:
        first = shown.datasets[0]
        for value in (first.PatientID, first.PatientName.given_name, first.AccessionNumber):
            assert str(value) not in content, f"{value} shown to a role without access"
    patient_data = ("/api/worklist", "/api/studies/", "/dicom-web/")
    served = [(path, status) for path, status in answered if path.startswith(patient_data)]
    assert served and all(status == 403 for _, status in served), served


def test_the_app_runs_under_a_csp_that_refuses_injected_inline_script(
    page: Page, reading_room: ReadingRoom, csp_violations: list[str]
) -> None:
    """The app signs in and lists under its Content Security Policy (every test's ``page``
    fails on a violation); a script injected inline, as an XSS would, does not run, and the
    violation is reported (so the check of the other tests can fail)."""
    _signed_in_worklist(page)
    assert csp_violations == []
    page.evaluate(
        """() => {
          const script = document.createElement("script");
          script.textContent = "window.injected = true";
          document.body.append(script);
        }"""
    )
    page.wait_for_timeout(500)
    assert page.evaluate("() => window.injected === undefined")
    assert any("script-src" in violation for violation in csp_violations), csp_violations
    csp_violations.clear()  # the one violation this test caused on purpose
