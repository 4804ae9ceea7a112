"""Viewer: how soon the reading web app shows the first image of a 64-slice CT, in a browser.

``radcloud bench --suite viewer`` or
``python -m benchmarks.viewer [--repeats 10] [--slices 64] [--matrix 512] [--quick]``

A scratch radcloud (temporary ``RADCLOUD_HOME``, free ports, a slim random-weight head-CT
model, as in :mod:`benchmarks.triage`) receives two SYNTHETIC head CTs through the gateway
with dcmtk's storescu: a synthetic head resampled to ``slices`` slices of ``matrix`` x
``matrix`` pixels (64 of 512 x 512, 32 MiB each: a routine head CT). Once their AI results are
final, Debian's chromium (headless, driven by Playwright) repeats, ``warmup`` times untimed and
then ``repeats`` times: a fresh browser context (empty cache) signs in on ``/app/``, opens the
first study's viewer (``/app/viewer.html?study=...``: a **cold** open, the viewer's code not
yet cached), then the second study's (a **warm** open: the code cached, the images not, as
for the next study of a reading session). Per open, from that page's navigation start
(``performance.timeOrigin``), over loopback:

- ``open_ms``: the app's ``radcloud:open`` mark (its script running, the study being loaded);
- ``first_image_ms``: the ``radcloud:first-image`` mark (Cornerstone's first IMAGE_RENDERED);
- ``first_image_from_open_ms``: the two marks' difference;
- ``all_images_ms``: the end of the last of the series' ``slices`` WADO-RS frame responses
  (Resource Timing): every image fetched, the rest streaming in after the first. When the app
  fetches fewer frames within ``all_images_timeout_s`` (it may load on demand), this is not
  measured and the count fetched is recorded instead.

Reported per kind of open as median with min and max, p50 and p95. The goal (issue 7): the
first image within 1 s of opening on loopback. Nothing here is asserted by a test.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid

from benchmarks._env import (
    describe_machine,
    free_ports,
    percentiles,
    register_sender,
    summarise,
    write_result,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

    from core.config import Settings

__all__ = ["CHROMIUM", "QUICK", "launch_chromium", "markdown", "run_viewer", "synthetic_ct"]

logger = logging.getLogger(__name__)

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's chromium (``apt-get install chromium``); Playwright's own browser builds are not
downloaded (``playwright install`` needs a CDN)."""

QUICK: dict[str, Any] = {"slices": 32, "matrix": 128, "repeats": 2, "warmup": 1}
"""``--quick``: a small series (32 slices: the head-CT model takes slices of 6 mm at most) and
two timed sessions (checks the suite, not the app's speed)."""

_AE = "BENCH_VIEWER"
_USER = "bench-radiologist"
_PASSWORD = "bench-viewer-password"  # noqa: S105 - a scratch platform's throwaway account
_METRICS = ("open_ms", "first_image_ms", "first_image_from_open_ms", "all_images_ms")
_FIRST_IMAGE = "radcloud:first-image"
_OPEN = "radcloud:open"
_OPENS = ("cold", "warm")  # first study of a fresh context, then the next study in it


def launch_chromium(playwright: Playwright, executable: Path = CHROMIUM) -> Browser:
    """Debian's chromium, headless (WebGL on SwiftShader: no GPU needed).

    Raises
    ------
    FileNotFoundError
        ``executable`` is missing.
    """
    if not executable.is_file():
        raise FileNotFoundError(f"{executable} is missing: install Debian's chromium package")
    return playwright.chromium.launch(executable_path=str(executable), headless=True)


def synthetic_ct(slices: int = 64, matrix: int = 512, seed: int = 0) -> list[Dataset]:
    """A SYNTHETIC head CT of ``slices`` axial slices of ``matrix`` x ``matrix`` pixels.

    The synthetic head of :func:`imaging.synthetic.generate_study` (24-32 slices of 128 x 128)
    resampled (linearly) onto the finer grid over the same extent, with fresh UIDs; the other
    attributes are the generator's (PS3.3 A.3: CT Image Storage, int16, rescale to HU).

    Parameters
    ----------
    slices, matrix
        The series' size.
    seed
        The synthetic dataset's seed.
    """
    from scipy.ndimage import zoom

    from imaging.synthetic import generate_study

    source = generate_study("head-ct", 0, seed=seed, positive=True)
    first = source.datasets[0]
    hu = np.asarray(source.image, dtype=np.float32)
    factors = (slices / hu.shape[0], matrix / hu.shape[1], matrix / hu.shape[2])
    resampled = zoom(hu, factors, order=1)
    intercept, slope = float(first.RescaleIntercept), float(first.RescaleSlope)
    stored = np.round((resampled - intercept) / slope).astype("<i2")
    z = [float(ds.ImagePositionPatient[2]) for ds in source.datasets]
    thickness = (z[-1] - z[0] + (z[1] - z[0])) / slices
    old_spacing = float(first.PixelSpacing[0])
    spacing = old_spacing * hu.shape[1] / matrix
    x0, y0 = (float(v) - old_spacing / 2 + spacing / 2 for v in first.ImagePositionPatient[:2])
    z0 = z[0] - (z[1] - z[0]) / 2 + thickness / 2
    study, series = generate_uid(), generate_uid()
    datasets = []
    for k in range(slices):
        ds = copy.deepcopy(first)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [round(x0, 4), round(y0, 4), round(z0 + k * thickness, 4)]
        ds.SliceLocation = round(z0 + k * thickness, 4)
        ds.SliceThickness = round(thickness, 4)
        ds.PixelSpacing = [round(spacing, 6)] * 2
        ds.Rows = ds.Columns = matrix
        ds.SeriesDescription = f"HEAD AXIAL {thickness:.2g}mm ({slices} x {matrix}^2)"
        ds.PixelData = stored[k].tobytes()
        datasets.append(ds)
    return datasets


def _platform_settings(home: Path) -> Settings:
    from core.config import load_settings

    ports = free_ports(6)
    return load_settings(
        home=home,
        api_port=ports[0],
        gateway_port=ports[1],
        gateway_metrics_port=ports[2],
        orthanc_http_port=ports[3],
        orthanc_dicom_port=ports[4],
        gateway_stow_port=ports[5],
        gateway_stable_seconds=1.0,
        log_level="WARNING",
    )


@contextlib.contextmanager
def _scratch_platform(tmp: Path) -> Iterator[Settings]:
    """A radcloud in ``tmp`` on free ports with a slim head-CT model (every study critical),
    the benchmark's sender and radiologist; stopped on exit.

    Raises
    ------
    RuntimeError
        The web app is not served (not built).
    """
    import httpx

    from benchmarks._models import register_models
    from core.audit import AuditTrail
    from core.db import Database
    from core.db.models import Role
    from core.secrets import load_secrets
    from core.security import Accounts, Actor
    from radcloud.services import Supervisor
    from training.tasks import Task

    settings = _platform_settings(tmp / "home")
    register_models(tmp / "models", slim=True, threshold=0.0, tasks=(Task.HEAD_CT,))
    shutil.copytree(tmp / "models", settings.paths.models_dir)
    supervisor = Supervisor(settings)
    supervisor.up()
    try:
        register_sender(settings, _AE, "Benchmark (SYNTHETIC)")
        db = Database.from_settings(settings)
        try:
            audit, actor = AuditTrail.from_secrets(db, load_secrets(settings)), Actor.cli()
            Accounts(db, audit).add_user(
                _USER, Role.RADIOLOGIST, _PASSWORD, platform_operator=True, actor=actor
            )
        finally:
            db.dispose()
        app = httpx.get(f"{str(settings.api_url).rstrip('/')}/app/", timeout=30)
        if app.status_code != 200:
            raise RuntimeError(f"the web app is not served ({app.status_code}: {app.text})")
        yield settings
    finally:
        supervisor.down()


def _send_and_triage(
    settings: Settings, datasets: list[Dataset], folder: Path, timeout_s: float
) -> dict[str, Any]:
    """Send the series through the gateway; the study's final AI result (status, critical)."""
    from sqlalchemy import select

    from core.db import Database
    from core.db.models import InferenceResult, InferenceStatus, Study
    from dicom_gateway.dcmtk import storescu

    paths = []
    folder.mkdir()
    for number, dataset in enumerate(datasets):
        paths.append(folder / f"{number:04d}.dcm")
        dataset.save_as(paths[-1], enforce_file_format=True)
    report = storescu(
        paths,
        host="127.0.0.1",
        port=settings.gateway_port,
        calling_ae=_AE,
        called_ae=settings.gateway_ae_title,
    )
    if len(report.stored) != len(paths):
        raise RuntimeError(f"storescu stored {len(report.stored)} of {len(paths)} slices")
    uid = str(datasets[0].StudyInstanceUID)
    db = Database.from_settings(settings)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            with db.session() as session:
                row = session.scalars(
                    select(InferenceResult)
                    .join(Study, InferenceResult.study_id == Study.id)
                    .where(
                        Study.study_instance_uid == uid,
                        InferenceResult.status != InferenceStatus.PENDING,
                    )
                ).first()
                if row is not None:
                    return {"model": row.model_name, "status": row.status.value, "error": row.error}
            if time.monotonic() > deadline:
                raise RuntimeError(f"no final AI result for the study within {timeout_s:g} s")
            time.sleep(0.5)
    finally:
        db.dispose()


def _session(
    browser: Browser, base_url: str, uids: tuple[str, str], slices: int, timeout_s: float
) -> dict[str, dict[str, Any]]:
    """Sign in in a fresh context and open the two studies in turn; each open's timings."""
    context = browser.new_context(base_url=base_url, viewport={"width": 1440, "height": 900})
    context.add_init_script("performance.setResourceTimingBufferSize(5000)")
    try:
        page = context.new_page()
        _sign_in(page)
        return {
            kind: _open(page, uid, slices, timeout_s)
            for kind, uid in zip(_OPENS, uids, strict=True)
        }
    finally:
        context.close()


def _open(page: Page, uid: str, slices: int, timeout_s: float) -> dict[str, Any]:
    """Navigate to the study's viewer; its marks and frame timings (ms since navigation)."""
    page.goto(f"/app/viewer.html?study={uid}")
    page.wait_for_function(
        f"performance.getEntriesByName('{_FIRST_IMAGE}').length > 0", timeout=60_000
    )
    marks = page.evaluate(
        """([open, first]) => ({
            open: performance.getEntriesByName(open)[0]?.startTime ?? null,
            first: performance.getEntriesByName(first)[0].startTime,
        })""",
        [_OPEN, _FIRST_IMAGE],
    )
    frames = _frames_loaded(page, slices, timeout_s)
    open_ms = marks["open"]
    return {
        "open_ms": open_ms,
        "first_image_ms": marks["first"],
        "first_image_from_open_ms": None if open_ms is None else marks["first"] - open_ms,
        "all_images_ms": frames["last_ms"] if frames["count"] >= slices else None,
        "frames_fetched": frames["count"],
    }


def _sign_in(page: Page) -> None:
    page.goto("/app/")
    page.locator("#username").fill(_USER)
    page.locator("#password").fill(_PASSWORD)
    page.get_by_test_id("sign-in").click()
    page.get_by_test_id("user-name").wait_for(timeout=30_000)


_FRAMES_JS = """() => {
    const ends = new Map();
    for (const entry of performance.getEntriesByType('resource')) {
        if (entry.name.includes('/frames/') && !entry.name.endsWith('/rendered')) {
            ends.set(entry.name, Math.max(ends.get(entry.name) ?? 0, entry.responseEnd));
        }
    }
    return {count: ends.size, last_ms: ends.size ? Math.max(...ends.values()) : null};
}"""


def _frames_loaded(page: Page, slices: int, timeout_s: float) -> dict[str, Any]:
    """Distinct WADO-RS frames fetched, and when the last of them ended (ms since navigation),
    once ``slices`` have been or ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        frames: dict[str, Any] = page.evaluate(_FRAMES_JS)
        if frames["count"] >= slices or time.monotonic() > deadline:
            return frames
        time.sleep(0.1)


def run_viewer(
    *,
    slices: int = 64,
    matrix: int = 512,
    repeats: int = 10,
    warmup: int = 1,
    all_images_timeout_s: float = 30.0,
    triage_timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Open a synthetic ``slices``-slice CT in the viewer ``repeats`` times; the result
    document (samples and their summaries, see the module docstring).

    Raises
    ------
    FileNotFoundError
        Chromium is not installed.
    RuntimeError
        The study did not reach Orthanc or get its AI result, or the web app is not built.
    """
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        raise FileNotFoundError(f"{CHROMIUM} is missing: install Debian's chromium package")
    studies = (synthetic_ct(slices, matrix), synthetic_ct(slices, matrix))
    uids = (str(studies[0][0].StudyInstanceUID), str(studies[1][0].StudyInstanceUID))
    with (
        tempfile.TemporaryDirectory(prefix="radcloud-viewer-") as tmp,
        _scratch_platform(Path(tmp)) as settings,
    ):
        ai = [
            _send_and_triage(settings, study, Path(tmp) / f"series-{n}", triage_timeout_s)
            for n, study in enumerate(studies)
        ]
        base_url = str(settings.api_url).rstrip("/")
        sessions: list[dict[str, Any]] = []
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            try:
                chromium = browser.version
                for number in range(warmup + repeats):
                    opened = _session(browser, base_url, uids, slices, all_images_timeout_s)
                    logger.info("session %d: %s", number, opened)
                    sessions.append(opened | {"warmup": number < warmup})
            finally:
                browser.close()
    timed = [session for session in sessions if not session["warmup"]]
    samples = {
        kind: {m: [s[kind][m] for s in timed if s[kind][m] is not None] for m in _METRICS}
        for kind in _OPENS
    }
    summary = {
        kind: {
            metric: summarise(values) | percentiles(values) if values else None
            for metric, values in samples[kind].items()
        }
        for kind in _OPENS
    }
    return {
        "suite": "viewer",
        "machine": describe_machine(),
        "parameters": {
            "slices": slices,
            "matrix": matrix,
            "series_mib": round(slices * matrix * matrix * 2 / 2**20, 1),
            "repeats": repeats,
            "warmup": warmup,
            "all_images_timeout_s": all_images_timeout_s,
            "browser": f"chromium {chromium} (headless, {CHROMIUM})",
            "playwright": metadata.version("playwright"),
            "opens": "per repeat a fresh browser context (empty cache) signs in, opens one "
            "study (cold: the viewer's code not cached) then another (warm)",
            "network": "loopback",
            "data": "2 SYNTHETIC head CTs (a resampled synthetic head), slim random-weight model",
            "ai_results": ai,
        },
        "goal_first_image_ms": 1000.0,
        "sessions": sessions,
        "samples": samples,
        "summary": summary,
        "frames_fetched": {kind: [s[kind]["frames_fetched"] for s in timed] for kind in _OPENS},
    }


def markdown(result: dict[str, Any]) -> str:
    """The summary as a markdown table (milliseconds from the viewer's navigation start)."""
    parameters = result["parameters"]
    lines = [
        f"{parameters['slices']} slices of {parameters['matrix']}x{parameters['matrix']} "
        f"({parameters['series_mib']} MiB) per study, {parameters['repeats']} sessions after "
        f"{parameters['warmup']} warm-up, each a cold then a warm open; {parameters['browser']}; "
        f"goal: first image within {result['goal_first_image_ms']:.0f} ms",
        "",
        "| open | from navigation start to | median ms (min-max) | p95 ms | opens |",
        "|---|---|---:|---:|---:|",
    ]
    names = {
        "open_ms": "`radcloud:open` (viewer script loading the study)",
        "first_image_ms": "**`radcloud:first-image`** (first image on screen)",
        "first_image_from_open_ms": "first image, from `radcloud:open`",
        "all_images_ms": f"all {parameters['slices']} frames fetched",
    }
    for kind in _OPENS:
        for metric, name in names.items():
            stat = result["summary"][kind].get(metric)
            if stat:
                lines.append(
                    f"| {kind} | {name} | {stat['median']:.0f} "
                    f"({stat['min']:.0f}-{stat['max']:.0f}) | {stat['p95']:.0f} | {stat['n']} |"
                )
            else:
                fetched = ", ".join(str(n) for n in result["frames_fetched"][kind])
                lines.append(
                    f"| {kind} | {name} | not measured (frames fetched per open: {fetched}) | | |"
                )
    return "\n".join(lines)


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="32 slices of 128^2, 2 sessions")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    options = (
        QUICK
        if args.quick
        else {
            "slices": args.slices,
            "matrix": args.matrix,
            "repeats": args.repeats,
            "warmup": args.warmup,
        }
    )
    result = run_viewer(**options)
    path = write_result("viewer", "cpu", result, args.out)
    print(markdown(result))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
