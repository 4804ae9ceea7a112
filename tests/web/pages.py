"""What the browser tests do on the app's pages, by the selectors of docs/reading-app.md, and
how they read what the viewer drew."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import Locator, Page, expect

__all__ = [
    "ARTIFACT_DIR",
    "canvas_pixels",
    "centre",
    "differs",
    "open_viewer",
    "screenshot_pixels",
    "sign_in",
    "worklist_rows",
]

ARTIFACT_DIR = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"

# The canvas Cornerstone3D draws each viewport's image into (on-screen, a 2D context).
_CANVAS = "[data-testid=viewport] canvas.cornerstone-canvas"


def sign_in(page: Page, name: str, password: str) -> None:
    """Sign in on ``/app/`` (leaves the page on the worklist or, for a role without access,
    wherever the app goes after signing in)."""
    page.goto("/app/")
    page.locator("#username").fill(name)
    page.locator("#password").fill(password)
    page.get_by_test_id("sign-in").click()


def worklist_rows(page: Page) -> Locator:
    """The worklist's rows, in displayed order."""
    return page.get_by_test_id("worklist-row")


def open_viewer(page: Page, study_instance_uid: str) -> Locator:
    """Open the study from the worklist (which claims it) and wait for its first image;
    returns the viewport."""
    row = page.locator(f"[data-testid=worklist-row][data-study-uid='{study_instance_uid}']")
    row.get_by_test_id("open-study").click()
    page.wait_for_url(f"**/app/viewer.html?study={study_instance_uid}*")
    viewport = page.get_by_test_id("viewport")
    expect(viewport).to_have_attribute("data-loaded", "true")
    return viewport


def canvas_pixels(page: Page) -> np.ndarray:
    """The viewport's image as Cornerstone drew it (``(rows, columns, RGBA)``): the canvas's
    own pixels, without the corner texts or other page elements over it."""
    data_url = page.locator(_CANVAS).first.evaluate("canvas => canvas.toDataURL('image/png')")
    png = base64.b64decode(str(data_url).split(",", 1)[1])
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGBA"))


def screenshot_pixels(element: Locator, path: Path | None = None) -> np.ndarray:
    """What the page shows of ``element`` (RGB), as a screenshot; saved to ``path`` if given."""
    png = element.screenshot(path=path)
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def centre(pixels: np.ndarray) -> np.ndarray:
    """The middle half of an image in each direction (clear of the corner texts)."""
    rows, columns = pixels.shape[:2]
    return pixels[rows // 4 : rows - rows // 4, columns // 4 : columns - columns // 4]


def differs(before: np.ndarray, after: np.ndarray) -> float:
    """The fraction of pixels that changed between two images of one shape."""
    assert before.shape == after.shape, (before.shape, after.shape)
    changed = np.any(before.astype(np.int16) != after.astype(np.int16), axis=-1)
    return float(changed.mean())
