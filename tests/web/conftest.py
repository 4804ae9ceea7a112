"""Fixtures of the reading web app's browser tests: a reading room on the session stack and
Debian's chromium driven by Playwright.

``reading_room`` sends SYNTHETIC studies through the real gateway with dcmtk's storescu (two
head CTs, critical under the fixture models and so with a SEG finding each, and one chest
radiograph without findings), waits until their AI results are final, and creates a radiologist
and an ML engineer who sign in with passwords. ``browser`` launches ``/usr/bin/chromium``
headless. Both fail, never skip, when what they need is missing: the app must be built and
chromium installed wherever ``make install`` ran.

Each test gets a fresh browser context (``page``); when a test fails, a screenshot of its page
and the browser's console are saved to ``test-artifacts/web/``. Every page runs under the API's
Content Security Policy (``serving/api/_headers.py``), and a test whose page broke it fails: each
``securitypolicyviolation`` event and each console report of a refused resource is collected,
and the fixture asserts there were none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from benchmarks.viewer import CHROMIUM, launch_chromium
from core.audit import AuditTrail
from core.db.models import Role
from core.exceptions import AlreadyExistsError
from core.secrets import load_secrets
from core.security import Accounts, Actor
from imaging.synthetic import SyntheticStudy, generate_study
from tests.conftest import Stack
from tests.serving.test_triage_e2e import push, results
from tests.web.pages import ARTIFACT_DIR

SENDER = "WEBREAD1"
HOSPITAL = "Reading Room Hospital"
PASSWORD = "reading-room-password-1"
RADIOLOGIST = "dr-reader"
OUTSIDER = "ml-outsider"
SEED = 707  # of the synthetic studies (deterministic: the same UIDs each run)

expect.set_options(timeout=20_000)  # a 2-core machine builds Cornerstone's first frame slowly


@dataclass(frozen=True)
class ReadingRoom:
    """The session stack with the studies sent, their AI results and the web users."""

    stack: Stack
    head_cts: tuple[SyntheticStudy, SyntheticStudy]  # critical, each with a SEG finding
    radiograph: SyntheticStudy  # no finding
    results: dict[str, list[dict[str, Any]]]  # StudyInstanceUID -> the study's final results

    @property
    def base_url(self) -> str:
        """The API's origin, which serves the app at ``/app/``."""
        return str(self.stack.settings.api_url).rstrip("/")

    @property
    def studies(self) -> tuple[SyntheticStudy, ...]:
        """Every study this room sent."""
        return (*self.head_cts, self.radiograph)

    def token(self, name: str) -> str:
        """A bearer token of ``name``, from the password sign-in the app uses."""
        with self.stack.client() as client:
            answer = client.post("/api/auth/token", data={"username": name, "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        return str(answer.json()["access_token"])

    def api(self, name: str, method: str, path: str, **kwargs: Any) -> Any:
        """``name``'s JSON answer to ``method path`` (asserting a 2xx status)."""
        with self.stack.client() as client:
            client.headers["Authorization"] = f"Bearer {self.token(name)}"
            answer = client.request(method, path, **kwargs)
        assert answer.is_success, f"{method} {path}: {answer.status_code} {answer.text[:500]}"
        return answer.json()


def _send(stack: Stack, study: SyntheticStudy, directory: Path) -> None:
    push(stack, directory, study.datasets, sender=SENDER)


def _add_accounts(stack: Stack) -> None:
    db = stack.database()
    try:
        audit, actor = AuditTrail.from_secrets(db, load_secrets(stack.settings)), Actor.cli()
        accounts = Accounts(db, audit)
        for name, role in ((RADIOLOGIST, Role.RADIOLOGIST), (OUTSIDER, Role.ML_ENGINEER)):
            with contextlib.suppress(AlreadyExistsError):  # from another module's room
                accounts.add_user(name, role, PASSWORD, hospitals=[HOSPITAL], actor=actor)
    finally:
        db.dispose()
    stack.add_sender(SENDER, HOSPITAL)  # once it returns, either edge admits it


@pytest.fixture(scope="module")
def reading_room(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> ReadingRoom:
    """Two critical head CTs and a radiograph triaged on the session stack, and the users."""
    with stack.client() as client:
        app = client.get("/app/")
    if app.status_code != 200 or "html" not in app.headers.get("content-type", ""):
        pytest.fail(f"the web app is not served at /app/ ({app.status_code}: {app.text[:200]})")
    _add_accounts(stack)
    folder = tmp_path_factory.mktemp("reading-room")
    head_cts = (
        generate_study("head-ct", 0, seed=SEED, positive=True),
        generate_study("head-ct", 1, seed=SEED, positive=True),
    )
    radiograph = generate_study("chest-xr", 2, seed=SEED, positive=False)
    for study in (*head_cts, radiograph):
        _send(stack, study, folder / study.study_instance_uid)
    final = {
        study.study_instance_uid: results(stack, study.study_instance_uid) for study in head_cts
    }
    final[radiograph.study_instance_uid] = results(stack, radiograph.study_instance_uid)
    for study in head_cts:
        (row,) = final[study.study_instance_uid]
        assert row["status"] == "succeeded" and row["critical"], row
        assert row["findings"].get("seg_sop_instance_uid"), row["findings"]
    (chest,) = final[radiograph.study_instance_uid]
    assert chest["status"] == "succeeded" and not chest["critical"], chest
    return ReadingRoom(stack, head_cts, radiograph, final)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless, driven by Playwright."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    with sync_playwright() as playwright:
        launched = launch_chromium(playwright)
        try:
            yield launched
        finally:
            launched.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test, so ``page`` knows whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


_REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.radcloudCspViolation(
    `${event.effectiveDirective} refused ${event.blockedURI || "inline"} ` +
    `at ${event.sourceFile}:${event.lineNumber}`
  );
});
"""


@pytest.fixture
def csp_violations() -> list[str]:
    """What the test's ``page`` reported breaking the Content Security Policy."""
    return []


@pytest.fixture(scope="module")
def web_origin(reading_room: ReadingRoom) -> str:
    """The origin ``page`` opens: the reading room's API (a module with studies of its own
    overrides this fixture, e.g. ``tests/web/test_federated_viewer.py``)."""
    return reading_room.base_url


@pytest.fixture
def page(
    browser: Browser,
    web_origin: str,
    request: pytest.FixtureRequest,
    csp_violations: list[str],
) -> Iterator[Page]:
    """A page in a fresh browser context on the app's origin (no token, empty cache)."""
    context = browser.new_context(base_url=web_origin, viewport={"width": 1440, "height": 900})
    violations = csp_violations

    def on_violation(report: str) -> None:  # a Python function: Playwright tags it
        violations.append(report)

    context.expose_function("radcloudCspViolation", on_violation)
    context.add_init_script(_REPORT_CSP_VIOLATIONS)
    opened = context.new_page()
    console: list[str] = []

    def on_console(message: Any) -> None:
        console.append(f"{message.type}: {message.text}")
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    opened.on("console", on_console)
    opened.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    try:
        yield opened
        opened.wait_for_timeout(200)  # let a violation of the last action be reported
        assert violations == [], f"the page broke the Content Security Policy: {violations}"
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
            stem = ARTIFACT_DIR / f"failed-{request.node.name}"
            with contextlib.suppress(PlaywrightError):  # a crashed page has no screenshot
                opened.screenshot(path=stem.with_suffix(".png"), full_page=True)
            stem.with_suffix(".log").write_text(f"{opened.url}\n" + "\n".join(console) + "\n")
        context.close()
