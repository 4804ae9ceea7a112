"""Promotion and rollback on the running service, the catch-up, a shadow version and the guard
rails, through real parts (serving/promotion.py, serving/shadow.py): one radcloud whose chest
X-ray model has four staged versions and none in production; studies through DIMSE (dcmtk
storescu → the gateway → Ray Serve triage)."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from core.db.models import InferenceResult, OutboxEvent, ShadowResult, Study, WorklistItem
from imaging.sr import read_findings
from imaging.synthetic import generate_study
from tests.conftest import Stack
from tests.fixture_models import register_fixture_version
from tests.serving.test_triage_e2e import orthanc_series, poll, push
from training.tasks import Task

# one stack through catch-up, a stream, guard rails and a shadow: 2-6 min, longer on a loaded
# machine than pytest's 600-s default allows
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

SENDER = "PROMO1"
STREAM_LIMIT = 40  # studies the stream sends at most (it stops once both switches are seen)

_WAIT_S = 420  # each wait: a loaded 2-core CI machine triages a study in tens of seconds


def _rows(stack: Stack) -> dict[str, list[tuple[str, str, str, str | None]]]:
    """Study Instance UID → its result rows (model, version, status, error)."""
    db = stack.database()
    try:
        with db.session() as session:
            found: dict[str, list[tuple[str, str, str, str | None]]] = {}
            for uid, row in session.execute(
                select(Study.study_instance_uid, InferenceResult).join(
                    InferenceResult, InferenceResult.study_id == Study.id
                )
            ).all():
                found.setdefault(uid, []).append(
                    (row.model_name, row.model_version, row.status.value, row.error)
                )
            return found
    finally:
        db.dispose()


def _events(stack: Stack, topic: str) -> list[OutboxEvent]:
    db = stack.database()
    try:
        with db.session() as session:
            return list(
                session.scalars(
                    select(OutboxEvent).where(OutboxEvent.topic == topic).order_by(OutboxEvent.id)
                )
            )
    finally:
        db.dispose()


def _succeeded(stack: Stack, uids: list[str]) -> Callable[[], dict[str, str] | None]:
    """A condition: every study of ``uids`` has a succeeded result (UID → its version)."""

    def done() -> dict[str, str] | None:
        rows = _rows(stack)
        versions = {
            uid: [v for _, v, status, _ in rows.get(uid, []) if status == "succeeded"]
            for uid in uids
        }
        if not all(versions.values()):
            return None
        return {uid: found[0] for uid, found in versions.items()}

    return done


class _Stream:
    """Pushes chest radiographs one after the other, in a thread, until stopped."""

    def __init__(self, stack: Stack, directory: Path) -> None:
        self.stack, self.directory = stack, directory
        self.uids: list[str] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream", daemon=True)

    def _run(self) -> None:
        try:
            for index in range(STREAM_LIMIT):
                if self._stop.is_set():
                    return
                study = generate_study("chest-xr", 100 + index, seed=20, positive=False)
                push(self.stack, self.directory / str(index), study.datasets, sender=SENDER)
                self.uids.append(study.study_instance_uid)
                self._stop.wait(0.5)
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            self.error = exc

    def __enter__(self) -> _Stream:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def versions(self) -> list[str]:
        """The version of each study sent so far that has a succeeded result, in arrival order."""
        rows = _rows(self.stack)
        return [
            v
            for uid in list(self.uids)
            for _, v, status, _ in rows.get(uid, [])
            if status == "succeeded"
        ]

    def wait_for(self, version: str, after: int, what: str) -> int:
        """Wait until a study after the first ``after`` results ran on ``version``; return how
        many results there are then."""

        def seen() -> int | None:
            if self.error is not None:
                raise self.error
            versions = self.versions()
            return len(versions) if version in versions[after:] else None

        return int(poll(seen, timeout_s=_WAIT_S, what=what))


def test_promotion_rollback_and_catch_up_on_the_running_service(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    """Studies that came without a model are triaged once the first version is promoted; a
    stream of studies goes through a promotion (API) and a rollback (CLI) with every study
    triaged once, by one named version, the versions switching once each way; a version whose
    card is below the production's floor is refused, and forced with a reason, audited."""
    name = ""

    def registered(stack: Stack) -> None:
        nonlocal name
        models_dir = stack.settings.paths.models_dir
        name = register_fixture_version(models_dir, Task.CHEST_XR, 1.0).name  # v1
        register_fixture_version(models_dir, Task.CHEST_XR, 1.0)  # v2: the same card
        register_fixture_version(models_dir, Task.CHEST_XR, 1.0, auc=0.1)  # v3: below the floor
        register_fixture_version(models_dir, Task.CHEST_XR, 0.0)  # v4: calls every study critical

    # a webhook, so that a critical call would queue a notification (none is delivered here)
    stack = make_stack(registered, notify_webhook_url="http://127.0.0.1:9/critical")
    stack.add_sender(SENDER, "Promotion Hospital")

    # -- catch-up: no production model when these arrive ------------------------------------
    early = [generate_study("chest-xr", i, seed=19, positive=False) for i in range(2)]
    early_uids = [study.study_instance_uid for study in early]
    for number, study in enumerate(early):
        push(stack, tmp_path / f"early{number}", study.datasets, sender=SENDER)
    without = poll(
        lambda: all(uid in _rows(stack) for uid in early_uids) and _rows(stack),
        timeout_s=_WAIT_S,
        what="results of the studies sent without a model",
    )
    for uid in early_uids:
        [(model, _, status, error)] = without[uid]
        assert (model, status) == ("(none)", "failed") and str(error).startswith("no_model")

    promoted = stack.cli("models", "promote", name, "1")
    assert "2 studies that arrived without a model queued" in promoted.stdout
    caught_up = poll(_succeeded(stack, early_uids), timeout_s=_WAIT_S, what="catch-up triage")
    assert set(caught_up.values()) == {"1"}
    catch_up = _events(stack, "study.catch_up")
    assert sorted(e.key for e in catch_up) == sorted(early_uids)
    assert all(e.processed_at is not None and e.attempts == 1 for e in catch_up)
    [api] = [c for c in json.loads(stack.cli("status", "--json").stdout) if c["name"] == "api"]
    assert api["details"] == {"catch-up backlog": "0 studies"}

    # -- a stream through a promotion (API) and a rollback (CLI) ----------------------------
    with _Stream(stack, tmp_path / "stream") as stream:
        first = stream.wait_for("1", 0, "a study of the stream on version 1")
        with stack.client("ml_engineer") as engineer:
            answer = engineer.post(f"/api/models/{name}/promote", json={"version": 2})
        assert answer.status_code == 200, answer.text
        assert answer.json() | {"overridden": []} == {
            "name": name,
            "version": 2,
            "previous": 1,
            "forced": False,
            "overridden": [],
            "caught_up": 0,
        }
        second = stream.wait_for("2", first, "a study of the stream on version 2")
        rolled = stack.cli("models", "rollback", name)
        assert "version 1 is production again" in rolled.stdout
        stream.wait_for("1", second, "a study of the stream on version 1 after the rollback")
    if stream.error is not None:
        raise stream.error
    sent = list(stream.uids)
    versions = poll(_succeeded(stack, sent), timeout_s=_WAIT_S, what="triage of the whole stream")
    rows = _rows(stack)
    for uid in sent:  # triaged once, by one version: no failure, no second result
        assert [(m, s) for m, _, s, _ in rows[uid]] == [(name, "succeeded")], rows[uid]
    ready = {e.key: e for e in _events(stack, "study.ready")}
    assert all(ready[uid].attempts == 1 for uid in sent)  # processed once, never retried
    in_order = [versions[uid] for uid in sorted(sent, key=lambda uid: ready[uid].id)]
    switches = [b for a, b in itertools.pairwise(in_order) if a != b]
    assert switches == ["2", "1"], in_order
    for uid in (sent[0], next(u for u in sent if versions[u] == "2")):
        (sr,) = orthanc_series(stack, uid)["SR"]
        assert sr.SoftwareVersions == versions[uid]
        assert {f["algorithm_version"] for f in read_findings(sr)} == {versions[uid]}

    _shadow_leaves_readers_and_archive_alone(stack, name, sent, tmp_path)

    # -- guard rails ------------------------------------------------------------------------
    refused = stack.cli("models", "promote", name, "3", check=False)
    assert refused.returncode == 1 and "auc 0.100 is below the floor" in refused.stderr
    with stack.client("admin") as admin:
        bare = admin.post(f"/api/models/{name}/promote", json={"version": 3, "force": True})
        assert bare.status_code == 409 and "written reason" in bare.json()["detail"]
        forced = admin.post(
            f"/api/models/{name}/promote",
            json={"version": 3, "force": True, "reason": "card figures from a smaller test set"},
        )
        assert forced.status_code == 200, forced.text
        assert forced.json()["forced"] is True and "auc" in forced.json()["overridden"][0]
        records = admin.get("/api/audit", params={"resource_id": name}).json()
    changes = [
        (r["detail"]["change"], r["detail"].get("version"), r["outcome"], r["user_name"])
        for r in reversed(records)
        if r["event_code"] == "110100"
    ]
    assert changes[-3:] == [
        ("promoted", 3, 4, changes[-3][3]),
        ("promoted", 3, 4, "test-admin"),
        ("promoted", 3, 0, "test-admin"),
    ]
    forced_record = next(r for r in records if r["outcome"] == 0)  # newest first
    assert forced_record["detail"]["force_reason"] == "card figures from a smaller test set"
    assert "auc" in forced_record["detail"]["overridden"][0]
    assert ("rolled back", 1, 0) in [c[:3] for c in changes]


def _reader_view(stack: Stack, uid: str) -> dict[str, object]:
    """What a study shows readers and the archive: its result rows, its worklist row, the
    critical notifications queued for it, its series in Orthanc (modality, instances)."""
    db = stack.database()
    try:
        with db.session() as session:
            study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()
            item = session.scalars(
                select(WorklistItem).where(WorklistItem.study_id == study.id)
            ).one()
            results = session.scalars(
                select(InferenceResult).where(InferenceResult.study_id == study.id)
            ).all()
            notified = [
                e
                for e in session.scalars(
                    select(OutboxEvent).where(OutboxEvent.topic == "notification.critical")
                )
                if e.payload.get("study_instance_uid") == uid
            ]
            view: dict[str, object] = {
                "results": sorted((r.model_version, r.status.value, r.critical) for r in results),
                # a critical call of the shadow would make it critical; its score is production's
                "worklist": (
                    item.priority_class == "critical",
                    item.ai_status,
                    item.status.value,
                    [item.ai_score] == [r.score for r in results],
                ),
                "notifications": len(notified),
            }
    finally:
        db.dispose()
    with stack.orthanc() as orthanc:
        ids = orthanc.post("/tools/lookup", content=uid).json()
        study_id = next(i["ID"] for i in ids if i["Type"] == "Study")
        series = orthanc.get(f"/studies/{study_id}/series").json()
        view["archive"] = sorted(
            (s["MainDicomTags"]["Modality"], len(s["Instances"])) for s in series
        )
    return view


def _shadow_rows(stack: Stack) -> dict[str, ShadowResult]:
    db = stack.database()
    try:
        with db.session() as session:
            return {
                uid: row
                for row, uid in session.execute(
                    select(ShadowResult, Study.study_instance_uid).join(
                        Study, Study.id == ShadowResult.study_id
                    )
                ).all()
            }
    finally:
        db.dispose()


def _shadow_leaves_readers_and_archive_alone(
    stack: Stack, name: str, unshadowed: list[str], tmp_path: Path
) -> None:
    """Version 4 in shadow (it calls every study critical) beside production version 1 (none):
    the studies it runs on show readers and the archive what a study without a shadow shows, one
    shadow row each; ``compare`` gives the figures a direct computation gives."""
    baseline = _reader_view(stack, unshadowed[0])
    assert baseline["results"] == [("1", "succeeded", False)]
    before = {uid: _reader_view(stack, uid) for uid in unshadowed[:3]}
    started = stack.cli("models", "shadow", name, "4")
    assert "version 4 runs in shadow" in started.stdout
    truth = {}
    for index, positive in enumerate((True, False, True, False)):
        study = generate_study("chest-xr", 200 + index, seed=21, positive=positive)
        push(stack, tmp_path / f"shadow{index}", study.datasets, sender=SENDER)
        truth[study.study_instance_uid] = positive
    rows = poll(
        lambda: (found := _shadow_rows(stack)).keys() >= truth.keys() and found,
        timeout_s=_WAIT_S,
        what="shadow results of the studies sent with a shadow",
    )
    assert rows.keys() == truth.keys()  # one row per study, none for studies before the shadow
    for uid, row in rows.items():
        assert (row.status, row.model_version, row.production_version) == ("succeeded", "4", "1")
        assert (row.positive, row.production_positive) == (True, False)
        view = _reader_view(stack, uid)
        assert view == baseline, uid  # production's result, worklist row and SR only
    assert {uid: _reader_view(stack, uid) for uid in unshadowed[:3]} == before

    labels = tmp_path / "labels.csv"
    labels.write_text(
        "study_instance_uid,label\n" + "".join(f"{u},{int(p)}\n" for u, p in truth.items())
    )
    report = json.loads(
        stack.cli("models", "compare", name, "--json", "--truth", str(labels)).stdout
    )
    with stack.client("ml_engineer") as engineer:
        answer = engineer.get(f"/api/models/{name}/compare")
    assert answer.status_code == 200, answer.text
    assert answer.json()["agreement"] == report["agreement"]
    assert (report["studies"], report["versions"], report["production_versions"]) == (
        4,
        ["4"],
        ["1"],
    )
    assert report["agreement"] == {
        "fraction": 0.0,
        "both_positive": 0,
        "both_negative": 0,
        "only_shadow": 4,
        "only_production": 0,
    }
    positives = [u for u, p in truth.items() if p]
    negatives = [u for u, p in truth.items() if not p]
    for arm, score, call in (
        ("shadow", lambda r: r.score, lambda r: r.positive),
        ("production", lambda r: r.production_score, lambda r: r.production_positive),
    ):
        wins = sum(
            1.0
            if score(rows[p]) > score(rows[n])
            else 0.5
            if score(rows[p]) == score(rows[n])
            else 0
            for p in positives
            for n in negatives
        )
        assert report["truths"]["synthetic"][arm] == pytest.approx(
            {
                "studies": 4,
                "positives": 2,
                "auc": wins / 4,
                "sensitivity": sum(bool(call(rows[u])) for u in positives) / 2,
                "specificity": sum(not call(rows[u]) for u in negatives) / 2,
            }
        )
    assert report["truths"]["radiologist"]["shadow"]["studies"] == 0  # no report signed yet
    latencies = sorted(float(r.latency_ms or 0.0) for r in rows.values())
    assert report["latency_ms"]["shadow"]["p50"] == pytest.approx((latencies[1] + latencies[2]) / 2)
    stopped = stack.cli("models", "shadow", name, "--stop")
    assert "shadow of version 4 stopped" in stopped.stdout
