"""The worklist's priority policy, pipeline hooks, transitions and listing on a real SQLite DB."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import select, update
from sqlalchemy.orm import Session, object_session

from core.config import load_settings
from core.db import Database, upgrade
from core.db.models import Hospital, ReadingStatus, Report, Study, StudyState, WorklistItem
from core.exceptions import ConfigError, NotFoundError
from core.tenancy import HospitalScope
from serving.worklist import (
    NotClaimantError,
    PriorityClass,
    StudyNotOnWorklistError,
    Worklist,
    WorklistConflictError,
    WorklistPolicy,
    WorklistQuery,
    classify,
    ensure_worklist_item,
    list_worklist,
    priority_key,
    record_ai_outcome,
)

T0 = dt.datetime(2026, 11, 27, 8, 0, tzinfo=dt.UTC)
ALL = HospitalScope.platform()
POLICY = WorklistPolicy()


@pytest.fixture
def db(database_url: str) -> Database:
    database = Database(database_url)
    upgrade(database)
    return database


AddStudy = Callable[..., str]


@pytest.fixture
def add_study(db: Database) -> AddStudy:
    """Insert a ready study with a worklist item; optionally record an AI outcome."""
    counter = iter(range(1, 10_000))

    def add(
        *,
        ready_min: float = 0,
        score: float | None = None,
        critical: bool = False,
        failed: bool = False,
        pending: bool = False,
        **fields: object,
    ) -> str:
        uid = f"1.2.826.0.1.3680043.10.1.{next(counter)}"
        ready = T0 + dt.timedelta(minutes=ready_min)
        with db.session() as session:
            hospital_name = fields.pop("hospital", None)
            study = Study(
                study_instance_uid=uid,
                state=StudyState.READY,
                first_received_at=ready,
                last_received_at=ready,
                ready_at=ready,
                **fields,
            )
            if hospital_name:
                hospital = session.scalar(select(Hospital).where(Hospital.name == hospital_name))
                study.hospital = hospital or Hospital(name=hospital_name)
            session.add(study)
            session.flush()
            ensure_worklist_item(session, study, POLICY)
            if not pending:
                record_ai_outcome(
                    session, study, score=score, critical=critical, failed=failed, policy=POLICY
                )
        return uid

    return add


def _item(db: Database, uid: str) -> WorklistItem:
    with db.session() as session:
        item = session.scalar(
            select(WorklistItem).join(Study).where(Study.study_instance_uid == uid)
        )
        assert item is not None
        return item


def _order(db: Database, **query: object) -> list[str]:
    with db.session() as session:
        entries, _ = list_worklist(session, WorklistQuery(**query), now=T0, scope=ALL)  # type: ignore[arg-type]
    return [entry.study_instance_uid for entry in entries]


# -- policy ---------------------------------------------------------------------------------


def test_classes_follow_the_ai_outcome() -> None:
    policy = WorklistPolicy(threshold=0.6, urgent_score_fraction=0.5)  # urgent from 0.3
    assert classify(0.9, critical=True, failed=False, policy=policy) is PriorityClass.CRITICAL
    assert classify(0.35, critical=False, failed=False, policy=policy) is PriorityClass.URGENT
    assert classify(0.29, critical=False, failed=False, policy=policy) is PriorityClass.ROUTINE
    assert classify(None, critical=False, failed=False, policy=policy) is PriorityClass.ROUTINE
    assert classify(0.9, critical=True, failed=True, policy=policy) is PriorityClass.ROUTINE
    assert policy.for_threshold(0.2).urgent_min_score == pytest.approx(0.1)


def test_policy_comes_from_settings_and_refuses_inverted_waits() -> None:
    settings = load_settings(worklist_max_wait_critical_min=15, worklist_max_wait_urgent_min=60)
    policy = WorklistPolicy.from_settings(settings)
    assert policy.max_wait_minutes(PriorityClass.CRITICAL) == 15
    assert policy.max_wait_minutes("urgent") == 60
    assert policy.max_wait_minutes(PriorityClass.ROUTINE) == 480
    with pytest.raises(ConfigError, match="critical ≤ urgent ≤ routine"):
        WorklistPolicy.from_settings(load_settings(worklist_max_wait_critical_min=500))


def test_priority_key_is_earliest_due_then_highest_score_then_oldest() -> None:
    studies = {
        "routine-old": (480.0, 0.1, 0.0),
        "critical-late": (470.0 + 30, 0.9, 470.0),  # due 500: after the old routine one
        "critical-early": (40.0, 0.95, 10.0),
        "same-due-low": (480.0, 0.05, 0.0),
        "same-due-none": (480.0, None, 0.0),
    }
    ranked = sorted(studies, key=lambda name: priority_key(*studies[name]))
    assert ranked == [
        "critical-early",
        "routine-old",
        "same-due-low",
        "same-due-none",
        "critical-late",
    ]


# -- pipeline hooks -----------------------------------------------------------------------------


def test_ensure_is_idempotent_and_starts_routine_pending(db: Database, add_study: AddStudy) -> None:
    uid = add_study(pending=True)
    with db.session() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        assert study is not None
        again = ensure_worklist_item(session, study, POLICY)
        assert again.version == 1
    item = _item(db, uid)
    assert (item.priority_class, item.ai_status, item.ai_score) == ("routine", "pending", None)
    assert item.due_at == T0 + dt.timedelta(minutes=480)
    with db.session() as session:
        assert len(session.scalars(select(WorklistItem)).all()) == 1


def test_ai_outcome_sets_class_and_due_time(db: Database, add_study: AddStudy) -> None:
    critical = _item(db, add_study(score=0.9, critical=True))
    urgent = _item(db, add_study(score=0.4))
    failed = _item(db, add_study(score=0.9, failed=True))
    assert (critical.priority_class, critical.ai_status) == ("critical", "succeeded")
    assert critical.due_at == T0 + dt.timedelta(minutes=30)
    assert (urgent.priority_class, urgent.due_at) == ("urgent", T0 + dt.timedelta(minutes=120))
    assert (failed.priority_class, failed.ai_status, failed.ai_score) == ("routine", "failed", None)


def test_ai_outcome_keeps_the_threshold_and_calibration_beside_the_score(
    db: Database, add_study: AddStudy
) -> None:
    uid = add_study(pending=True)
    with db.session() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        assert study is not None
        record_ai_outcome(
            session,
            study,
            score=0.31,
            critical=True,
            failed=False,
            policy=POLICY.for_threshold(0.27),
            threshold=0.27,
            calibrated=True,
        )
    item = _item(db, uid)
    assert (item.ai_score, item.ai_threshold, item.ai_calibrated) == (0.31, 0.27, True)
    with db.session() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        assert study is not None
        record_ai_outcome(
            session, study, score=None, critical=False, failed=True, policy=POLICY, threshold=0.27
        )
    item = _item(db, uid)
    assert (item.ai_score, item.ai_threshold, item.ai_calibrated) == (None, None, None)


def test_ai_outcome_never_changes_the_reading_status(db: Database, add_study: AddStudy) -> None:
    uid = add_study(score=0.1)
    worklist = Worklist(db)
    state = worklist.claim(uid, user="alice", version=_item(db, uid).version)
    worklist.report(uid, user="alice", version=state.version, also=_signed_by("alice"))
    with db.session() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        assert study is not None
        record_ai_outcome(session, study, score=0.99, critical=True, failed=False, policy=POLICY)
    item = _item(db, uid)
    assert (item.status, item.claimed_by, item.priority_class) == (
        ReadingStatus.REPORTED,
        "alice",
        "critical",
    )


# -- transitions --------------------------------------------------------------------------------


def _signed_by(author: str) -> Callable[[Session, Study], None]:
    """What signing writes in the reporting transaction: the study's signed report row."""

    def record(session: Session, study: Study) -> None:
        session.add(
            Report(
                study_id=study.id,
                author=author,
                text="No acute intracranial abnormality.",
                sr_sop_instance_uid="1.2.826.0.1.3680043.8.498.11",
                sr_series_instance_uid="1.2.826.0.1.3680043.8.498.12",
            )
        )

    return record


def test_a_study_without_a_signed_report_cannot_be_reported(
    db: Database, add_study: AddStudy
) -> None:
    """Issue 14, item 7: reporting is signing; a bare report transition is a conflict (409)
    and changes nothing."""
    uid = add_study(score=0.2)
    worklist = Worklist(db)
    claimed = worklist.claim(uid, user="alice", version=_item(db, uid).version)
    with pytest.raises(WorklistConflictError, match="no signed report") as caught:
        worklist.report(uid, user="alice", version=claimed.version)
    assert caught.value.status is ReadingStatus.IN_PROGRESS
    item = _item(db, uid)
    assert (item.status, item.version, item.reported_at) == (
        ReadingStatus.IN_PROGRESS,
        claimed.version,
        None,
    )


def test_claim_release_report(db: Database, add_study: AddStudy) -> None:
    uid = add_study(score=0.2)
    worklist = Worklist(db)
    claimed = worklist.claim(uid, user="alice", version=_item(db, uid).version)
    assert (claimed.status, claimed.claimed_by) == (ReadingStatus.IN_PROGRESS, "alice")
    assert claimed.claimed_at is not None
    released = worklist.release(uid, user="alice", version=claimed.version)
    assert (released.status, released.claimed_by) == (ReadingStatus.UNREAD, None)
    again = worklist.claim(uid, user="bob", version=released.version)
    reported = worklist.report(uid, user="bob", version=again.version, also=_signed_by("bob"))
    assert reported.status is ReadingStatus.REPORTED
    assert reported.reported_at is not None
    with pytest.raises(WorklistConflictError, match="cannot claim a study that is reported"):
        worklist.claim(uid, user="carol", version=reported.version)


def test_stale_version_is_a_conflict_and_changes_nothing(db: Database, add_study: AddStudy) -> None:
    uid = add_study(pending=True)
    seen = _item(db, uid).version
    with db.session() as session:  # the AI result arrives after the radiologist looked
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        assert study is not None
        record_ai_outcome(session, study, score=0.2, critical=False, failed=False, policy=POLICY)
    with pytest.raises(WorklistConflictError, match="stale") as caught:
        Worklist(db).claim(uid, user="alice", version=seen)
    assert caught.value.version == seen + 1
    assert _item(db, uid).status is ReadingStatus.UNREAD


def test_only_the_claimant_reports_and_an_admin_may_release(
    db: Database, add_study: AddStudy
) -> None:
    uid = add_study(score=0.2)
    worklist = Worklist(db)
    claimed = worklist.claim(uid, user="alice", version=_item(db, uid).version)
    with pytest.raises(NotClaimantError, match="claimed by alice, not by bob"):
        worklist.report(uid, user="bob", version=claimed.version)
    with pytest.raises(NotClaimantError):
        worklist.release(uid, user="bob", version=claimed.version)
    released = worklist.release(uid, user="root", version=claimed.version, is_admin=True)
    assert released.status is ReadingStatus.UNREAD


def test_unknown_study_is_not_found(db: Database) -> None:
    with pytest.raises(StudyNotOnWorklistError) as caught:
        Worklist(db).claim("1.2.3.999", user="alice", version=1)
    assert isinstance(caught.value, NotFoundError)


def test_two_radiologists_claiming_at_once_exactly_one_wins(
    db: Database, add_study: AddStudy
) -> None:
    uid = add_study(score=0.9, critical=True)
    version = _item(db, uid).version
    start = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def claim(user: str) -> None:
        worklist = Worklist(db)  # each thread its own session and connection
        start.wait()
        try:
            outcomes[user] = worklist.claim(uid, user=user, version=version)
        except WorklistConflictError as exc:
            outcomes[user] = exc

    threads = [threading.Thread(target=claim, args=(user,)) for user in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    conflicts = [o for o in outcomes.values() if isinstance(o, WorklistConflictError)]
    assert len(outcomes) == 2 and len(conflicts) == 1
    winner = _item(db, uid).claimed_by
    assert winner in ("alice", "bob")
    assert conflicts[0].claimed_by == winner
    assert conflicts[0].status is ReadingStatus.IN_PROGRESS


# -- listing ------------------------------------------------------------------------------------


def test_listing_is_in_priority_order(db: Database, add_study: AddStudy) -> None:
    routine_old = add_study(ready_min=0, score=0.1)
    critical_new = add_study(ready_min=300, score=0.9, critical=True)  # due 330 < 480
    urgent = add_study(ready_min=10, score=0.4)  # due 130
    pending = add_study(ready_min=0, pending=True)  # due 480, no score: after routine_old
    critical_late = add_study(ready_min=460, score=0.8, critical=True)  # due 490
    expected = [urgent, critical_new, routine_old, pending, critical_late]
    assert _order(db) == expected
    with db.session() as session:
        entries, total = list_worklist(session, WorklistQuery(limit=2, offset=1), now=T0, scope=ALL)
        items = {}
        for item, study in session.execute(select(WorklistItem, Study).join(Study)):
            assert item.due_at is not None and study.ready_at is not None
            items[study.study_instance_uid] = priority_key(
                item.due_at, item.ai_score, study.ready_at
            )
    assert sorted(items, key=items.__getitem__) == expected  # SQL order == priority_key
    assert total == 5
    assert [e.study_instance_uid for e in entries] == expected[1:3]
    assert entries[0].critical and entries[0].priority_class == "critical"


def test_listing_filters(db: Database, add_study: AddStudy) -> None:
    ct = add_study(
        modalities="CT\\SR",
        hospital="General",
        patient_name="DOE^JANE",
        accession_number="ACC100",
        study_date="20261120",
    )
    cr = add_study(
        modalities="CR",
        hospital="St Mary",
        patient_name="ROE^RICHARD",
        study_description="Chest PA",
        study_date="20261127",
    )
    no_date = add_study(modalities="MR")  # ready on 2026-11-27
    assert set(_order(db, modality="ct")) == {ct}
    assert set(_order(db, modality="SR")) == {ct}
    assert _order(db, modality="C") == []
    assert _order(db, hospital="St Mary") == [cr]
    assert set(_order(db, date_from=dt.date(2026, 11, 27))) == {cr, no_date}
    assert _order(db, date_to=dt.date(2026, 11, 21)) == [ct]
    assert _order(db, q="jane doe") == [ct]
    assert _order(db, q="chest") == [cr]
    assert _order(db, q="acc1") == [ct]
    assert _order(db, q="100%") == []
    Worklist(db).claim(cr, user="alice", version=_item(db, cr).version)
    assert _order(db, statuses=[ReadingStatus.IN_PROGRESS]) == [cr]
    assert _order(db, statuses=[ReadingStatus.REPORTED]) == []


def test_waiting_minutes_count_until_claimed(db: Database, add_study: AddStudy) -> None:
    add_study(ready_min=-45, score=0.1)
    with db.session() as session:
        (entry,), _ = list_worklist(session, WorklistQuery(), now=T0, scope=ALL)
    assert entry.waiting_minutes == 45.0
    assert entry.hospital is None and entry.ai_status == "succeeded"


def test_row_changed_by_another_writer_is_a_conflict(
    db: Database, add_study: AddStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the pipeline may update the row between our read and our write."""
    import serving.worklist.state as module

    uid = add_study(score=0.2)
    apply = module._apply
    table = sqlalchemy.table(
        "worklist_items", sqlalchemy.column("id"), sqlalchemy.column("version")
    )

    def concurrent_write_then_apply(uid: str, item: WorklistItem, *args: Any, **kw: Any) -> None:
        session = object_session(item)
        assert session is not None
        session.execute(update(table).where(table.c.id == item.id).values(version=item.version + 1))
        apply(uid, item, *args, **kw)

    monkeypatch.setattr(module, "_apply", concurrent_write_then_apply)
    with pytest.raises(WorklistConflictError, match="changed meanwhile") as caught:
        Worklist(db).claim(uid, user="alice", version=_item(db, uid).version)
    assert caught.value.version == 2  # the current row, read after the failed write
    assert _item(db, uid).status is ReadingStatus.UNREAD


def test_default_policy_matches_the_default_settings() -> None:
    assert WorklistPolicy.from_settings(load_settings()) == WorklistPolicy()
