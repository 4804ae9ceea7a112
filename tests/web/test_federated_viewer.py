"""Another hospital's studies in the reading web app, in a real browser against the session
stack: two hospitals' senders push studies of one patient (North Infirmary's NI-1001 and South
General's SG-77, linked by a national number in OtherPatientIDsSequence under the authority rule
``radcloud patients authority add NHS --kind national``), and a registered remote node that is
down. A radiologist of North opens North's study, sees South's in "Priors from other
hospitals" with South named and the list marked partial naming the node that did not answer,
opens it, and sees a read-only viewer naming South General in its header, the image drawn
through the federated WADO-RS, and no findings, report, sign or claim controls. Screenshots go
to ``docs/images/`` (``priors.png``, ``remote-study.png``) for the README."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import Page, expect
from pydicom import Dataset
from sqlalchemy import select

from core.audit import AuditTrail
from core.db.models import AuditEvent, Role, Study, StudyState, WorklistItem
from core.exceptions import AlreadyExistsError
from core.secrets import load_secrets
from core.security import Accounts, Actor
from imaging.synthetic import SyntheticStudy, generate_study
from tests.conftest import Stack
from tests.helpers import free_port
from tests.serving.test_triage_e2e import poll, push
from tests.web.pages import canvas_pixels, centre, open_viewer, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.integration]

NORTH, SOUTH = "North Infirmary", "South General"
SENDERS = {NORTH: "PRIORS-NORTH", SOUTH: "PRIORS-SOUTH"}
OFFLINE = "Eastbrook Offline"  # a remote node registered but not running
READER = "dr-north-priors"  # a radiologist of North
OPERATOR = "admin-priors"  # a platform operator's admin: no hospital of its own
PASSWORD = "priors-reader-password-1"
SEED = 1515
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


@dataclass(frozen=True)
class SharedPatient:
    """One patient's studies at two hospitals of the session stack."""

    stack: Stack
    north: SyntheticStudy  # North Infirmary's chest radiograph, on North's worklist
    south: SyntheticStudy  # South General's head CT: the prior from another hospital


def _as_patient(
    study: SyntheticStudy, patient_id: str, issuer: str, *, national: str, date: str, what: str
) -> SyntheticStudy:
    """``study`` as one hospital sends it: its own Patient ID and the national number."""
    for dataset in study.datasets:
        dataset.PatientID = patient_id
        dataset.IssuerOfPatientID = issuer
        dataset.PatientName = "PRIOR^PATRICIA"
        dataset.StudyDate = date
        dataset.StudyDescription = what
        other = Dataset()
        other.PatientID = national
        other.IssuerOfPatientID = "NHS"
        dataset.OtherPatientIDsSequence = [other]
    return study


def _ready(stack: Stack, uid: str) -> bool:
    db = stack.database()
    try:
        with db.session() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
            if study is None or study.state != StudyState.READY:
                return False
            item = session.scalar(select(WorklistItem).where(WorklistItem.study_id == study.id))
            return item is not None
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def shared_patient(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedPatient]:
    """The two hospitals' senders, the NHS authority rule, the radiologist of North, a dead
    remote node, and the patient's study at each hospital sent through the real gateway."""
    with stack.client() as client:
        app = client.get("/app/")
    if app.status_code != 200 or "html" not in app.headers.get("content-type", ""):
        pytest.fail(f"the web app is not served at /app/ ({app.status_code}: {app.text[:200]})")
    db = stack.database()
    try:
        audit, actor = AuditTrail.from_secrets(db, load_secrets(stack.settings)), Actor.cli()
        accounts = Accounts(db, audit)
        with contextlib.suppress(AlreadyExistsError):
            accounts.add_user(READER, Role.RADIOLOGIST, PASSWORD, hospitals=[NORTH], actor=actor)
        with contextlib.suppress(AlreadyExistsError):
            accounts.add_user(OPERATOR, Role.ADMIN, PASSWORD, platform_operator=True, actor=actor)
    finally:
        db.dispose()
    for hospital, ae_title in SENDERS.items():
        stack.add_sender(ae_title, hospital)  # once it returns, either edge admits it
    stack.cli_unless_exists("patients", "authority", "add", "NHS", "--kind", "national")
    stack.cli(
        "hospitals", "add", OFFLINE, "--dicomweb", f"http://127.0.0.1:{free_port()}/dicom-web"
    )
    national = str(uuid.uuid4().int)[:10]
    north = _as_patient(
        generate_study("chest-xr", 0, seed=SEED, positive=False),
        "NI-1001",
        "NORTH-MRN",
        national=national,
        date="20260110",
        what="CHEST XR FOLLOW-UP",
    )
    south = _as_patient(
        generate_study("head-ct", 1, seed=SEED, positive=True),
        "SG-77",
        "SOUTH-MRN",
        national=national,
        date="20250302",
        what="CT HEAD PRIOR",
    )
    folder = tmp_path_factory.mktemp("priors")
    for hospital, study in ((NORTH, north), (SOUTH, south)):
        push(stack, folder / study.study_instance_uid, study.datasets, sender=SENDERS[hospital])
    for study in (north, south):
        uid = study.study_instance_uid
        poll(lambda uid=uid: _ready(stack, uid), timeout_s=120, what=f"study {uid} ready")
    try:
        yield SharedPatient(stack, north, south)
    finally:
        stack.cli("hospitals", "remove", OFFLINE, check=False)


@pytest.fixture(scope="module")
def web_origin(shared_patient: SharedPatient) -> str:
    """The origin ``page`` opens: the session stack's API, with this module's studies."""
    return str(shared_patient.stack.settings.api_url).rstrip("/")


def test_a_reader_sees_a_prior_from_another_hospital_and_opens_it_read_only(
    page: Page, shared_patient: SharedPatient
) -> None:
    north, south = shared_patient.north.study_instance_uid, shared_patient.south.study_instance_uid
    sign_in(page, READER, PASSWORD)
    expect(page.get_by_test_id("user-name")).to_contain_text(READER)
    open_viewer(page, north)

    # Priors: South's study with South named; not North's own study; partial, naming the
    # node that did not answer.
    panel = page.get_by_test_id("priors-panel")
    expect(panel).to_contain_text("Priors from other hospitals")
    prior = panel.locator(f"[data-testid=prior][data-study-uid='{south}']")
    expect(prior).to_be_visible()
    expect(prior.get_by_test_id("prior-hospital")).to_have_text(SOUTH)
    expect(prior).to_contain_text("CT HEAD PRIOR")
    expect(prior).to_contain_text("2025-03-02")
    expect(panel.locator(f"[data-testid=prior][data-study-uid='{north}']")).to_have_count(0)
    expect(panel.get_by_test_id("priors-partial")).to_contain_text(OFFLINE)
    DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=DOCS_IMAGES / "priors.png")

    # The other hospital's study: read-only, South named, the image drawn, no reading controls.
    prior.get_by_test_id("prior-open").click()
    page.wait_for_url(f"**/app/viewer.html?hospital={quote(SOUTH)}&study={south}&federated=1")
    manifest = _api(shared_patient.stack, READER, f"/api/studies/{north}/viewer")
    assert manifest["patient_key"], "the viewer manifest names the study's patient key"
    bound_to = page.evaluate("sessionStorage.getItem('radcloud.context.patient')")
    assert bound_to == manifest["patient_key"], "the context token is bound to that patient"
    context_token = page.evaluate("sessionStorage.getItem('radcloud.context')")
    assert context_token, "the context token is kept in sessionStorage"
    assert context_token not in page.url, "the context token must never be in the URL"
    expect(page.get_by_test_id("held-by")).to_have_text(f"Held by {SOUTH}: read-only")
    expect(page.get_by_test_id("read-only-note")).to_contain_text(SOUTH)
    viewport = page.get_by_test_id("viewport")
    expect(viewport).to_have_attribute("data-loaded", "true")
    expect(page.get_by_test_id("corner-slice")).to_contain_text(
        f"/ {len(shared_patient.south.datasets)}"
    )
    drawn = centre(canvas_pixels(page))[..., :3]
    assert drawn.std() > 5, "the remote study's image is drawn (not a blank canvas)"
    for control in (
        "sign-report",
        "report-text",
        "finding",
        "confirm-finding",
        "reject-finding",
        "add-finding",
        "reading-status",
        "overlay-toggle",
    ):
        expect(page.get_by_test_id(control)).to_have_count(0)
    expect(page.get_by_role("button", name="Release")).to_have_count(0)
    # each series' thumbnail is rendered by South, through radcloud (a decoded image, not the
    # "no preview" placeholder)
    thumbnail = page.locator("[data-testid=series-thumb] .thumb-frame img").first
    expect(thumbnail).to_have_attribute("src", re.compile(r"^blob:"))
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=series-thumb] img')]"
        ".every((image) => image.complete && image.naturalWidth > 0)"
    )
    expect(page.locator(".thumb-missing")).to_have_count(0)
    page.screenshot(path=DOCS_IMAGES / "remote-study.png")

    # Each image came through radcloud's federated WADO-RS, audited for the reader and South.
    fetched = [
        event.detail
        for event in _audit_events(shared_patient.stack, READER)
        if event.detail.get("federated") and event.outcome == 0
    ]
    frames = [d for d in fetched if "/frames/" in str(d.get("path"))]
    assert frames and all(d["hospital"] == SOUTH for d in frames), fetched[-3:]
    thumbnails = [d for d in fetched if str(d.get("path")).endswith("/rendered")]
    assert thumbnails and all(d["hospital"] == SOUTH for d in thumbnails), fetched[-3:]
    assert {d["purpose"] for d in fetched} == {"treatment"}


def test_without_a_care_relationship_priors_are_refused_plainly(
    page: Page, shared_patient: SharedPatient
) -> None:
    """A platform operator's admin holds no identifier of the patient: the treatment token is
    refused without a reason, and the panel says so and offers nothing (no break-glass)."""
    north, south = shared_patient.north.study_instance_uid, shared_patient.south.study_instance_uid
    sign_in(page, OPERATOR, PASSWORD)
    expect(page.get_by_test_id("user-name")).to_contain_text(OPERATOR)
    page.goto(f"/app/viewer.html?study={north}")
    expect(page.get_by_test_id("viewport")).to_have_attribute("data-loaded", "true")
    panel = page.get_by_test_id("priors-panel")
    expect(panel.get_by_test_id("priors-refused")).to_contain_text("no record of this patient")
    expect(panel.get_by_test_id("prior")).to_have_count(0)
    expect(panel.locator("input, textarea, button, a")).to_have_count(0)
    assert page.evaluate("sessionStorage.getItem('radcloud.context')") is None
    # nor does the read-only viewer open South's study for it by URL
    page.goto(f"/app/viewer.html?hospital={quote(SOUTH)}&study={south}&federated=1")
    expect(page.locator("#banner")).to_contain_text("No patient context")
    expect(page.get_by_test_id("viewport")).to_have_attribute("data-loaded", "false")


def _api(stack: Stack, user: str, path: str) -> Any:
    """``user``'s JSON answer to ``GET path`` (signed in with the password, as the app is)."""
    with stack.client() as client:
        signed_in = client.post("/api/auth/token", data={"username": user, "password": PASSWORD})
        assert signed_in.status_code == 200, signed_in.text
        client.headers["Authorization"] = f"Bearer {signed_in.json()['access_token']}"
        answer = client.get(path)
    assert answer.status_code == 200, f"{path}: {answer.status_code} {answer.text[:300]}"
    return answer.json()


def _audit_events(stack: Stack, user: str) -> list[AuditEvent]:
    db = stack.database()
    try:
        with db.session() as session:
            events = session.scalars(
                select(AuditEvent).where(AuditEvent.user_name == user).order_by(AuditEvent.seq)
            ).all()
            session.expunge_all()
            return list(events)
    finally:
        db.dispose()
