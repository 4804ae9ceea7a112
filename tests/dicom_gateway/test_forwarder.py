"""The forwarder drains the spool into a real Orthanc; the tracker, following Orthanc's change
feed, announces complete studies. The application database is each engine in turn (SQLite, and
a database on the session's PostgreSQL: ``database_url``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from core.archive import ImageArchive, OrthancArchive, open_archive, orthanc_instance_id
from core.config import load_settings
from core.db import Database, upgrade
from core.db.models import OutboxEvent, Study, StudyState
from core.secrets import load_secrets
from dicom_gateway.completeness import STUDY_READY, STUDY_UPDATED, StudyTracker
from dicom_gateway.forwarder import Forwarder
from dicom_gateway.quarantine import Quarantine
from dicom_gateway.spool import Spool
from dicom_gateway.validation import InstanceInfo, inspect_instance
from tests.conftest import Stack
from tests.dicom_gateway.dicom_files import study_ownership, synthetic_ct
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.integration


class Pipeline:
    """A spool, forwarder and tracker over a test database and a given Orthanc client; ``put``
    claims the study as the intake would."""

    def __init__(
        self,
        tmp_path: Path,
        database_url: str,
        orthanc: ImageArchive,
        stable_seconds: float = 0.5,
    ) -> None:
        self.db = Database(database_url)
        upgrade(self.db)
        self.ownership = study_ownership(tmp_path, self.db)
        self.spool = Spool(tmp_path / "spool", limit_bytes=100_000_000)
        self.quarantine = Quarantine(tmp_path / "quarantine")
        self.tracker = StudyTracker(
            self.db,
            orthanc,
            stable_seconds,
            lambda: self.forwarder.pending_studies(),  # noqa: PLW0108 - forwarder made below
        )
        self.forwarder = Forwarder(self.spool, self.quarantine, orthanc, workers=3)

    def put(self, data: bytes, sender: str = "CT1", hospital: str = "General") -> InstanceInfo:
        info, stored = inspect_instance(data)
        self.ownership.admit(info, hospital, sender=sender, source="dimse")
        self.spool.put(stored, info, sender_ae_title=sender, hospital=hospital)
        self.forwarder.notify()
        return info

    def events(self) -> list[OutboxEvent]:
        with self.db.session() as session:
            return list(session.scalars(select(OutboxEvent).order_by(OutboxEvent.id)))

    def study(self, uid: str) -> Study:
        with self.db.session() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
            assert study is not None
            return study


@pytest.fixture
def orthanc(stack: Stack) -> Iterator[OrthancArchive]:
    with stack.archive() as archive:
        yield archive


@pytest.fixture
def pipeline(tmp_path: Path, database_url: str, orthanc: OrthancArchive) -> Iterator[Pipeline]:
    running = Pipeline(tmp_path, database_url, orthanc)
    running.tracker.start()
    running.forwarder.start()
    yield running
    running.tracker.stop()
    running.forwarder.stop()


def test_instances_reach_orthanc_and_one_ready_event_per_study(
    pipeline: Pipeline, orthanc: OrthancArchive
) -> None:
    study_a, series_a = generate_uid(), generate_uid()
    infos = [pipeline.put(synthetic_ct(study_a, series_a, instance=n)) for n in range(1, 4)]
    other = pipeline.put(synthetic_ct(patient_id="SYNTH-002"), sender="CT2", hospital="North")
    wait_until(lambda: pipeline.spool.usage().files == 0, timeout_s=30)
    for info in [*infos, other]:
        assert len(orthanc.search_for_instances({"SOPInstanceUID": info.sop_instance_uid})) == 1
    wait_until(lambda: len(pipeline.events()) == 2, timeout_s=30)
    events = {event.key: event for event in pipeline.events()}
    ready = events[study_a]
    assert ready.topic == STUDY_READY
    assert ready.payload["hospital"] == "General"
    assert ready.payload["instance_count"] == 3
    assert ready.payload["series"][0]["series_instance_uid"] == series_a
    assert ready.payload["series"][0]["modality"] == "CT"
    assert "patient" not in str(ready.payload).lower()
    assert events[other.study_instance_uid].payload["hospital"] == "North"
    study = pipeline.study(study_a)
    assert (study.state, study.instance_count, study.modalities) == (StudyState.READY, 3, "CT")

    # a late instance reopens the study and gives exactly one study.updated
    pipeline.put(synthetic_ct(study_a, series_a, instance=4))
    wait_until(lambda: len(pipeline.events()) == 3, timeout_s=30)
    updated = pipeline.events()[-1]
    assert (updated.topic, updated.key, updated.payload["instance_count"]) == (
        STUDY_UPDATED,
        study_a,
        4,
    )


def test_duplicate_resend_of_a_ready_study_adds_no_event(pipeline: Pipeline) -> None:
    data = synthetic_ct()
    info = pipeline.put(data)
    wait_until(lambda: len(pipeline.events()) == 1, timeout_s=30)
    pipeline.put(data)  # the same instance again, e.g. a PACS retry
    wait_until(lambda: pipeline.spool.usage().files == 0, timeout_s=30)
    assert pipeline.tracker.check() == []
    assert pipeline.study(info.study_instance_uid).instance_count == 1
    assert len(pipeline.events()) == 1


def test_instance_orthanc_refuses_goes_to_quarantine(pipeline: Pipeline) -> None:
    info = InstanceInfo(
        sop_class_uid="",
        sop_instance_uid=generate_uid(),
        study_instance_uid=generate_uid(),
        series_instance_uid="",
        transfer_syntax_uid="",
    )
    pipeline.spool.put(
        bytes(128) + b"DICM" + b"\x02\x00" * 50, info, sender_ae_title="CT1", hospital=None
    )
    pipeline.forwarder.notify()
    wait_until(lambda: len(pipeline.quarantine.list()) == 1, timeout_s=30)
    entry = pipeline.quarantine.list()[0]
    assert entry.source == "forward"
    assert "Orthanc refused the instance" in entry.reason
    assert pipeline.spool.usage().files == 0


def test_orthanc_unreachable_keeps_everything_in_the_spool(
    tmp_path: Path, database_url: str
) -> None:
    settings = load_settings(home=tmp_path, orthanc_http_port=free_port())
    dead = open_archive(settings, load_secrets(settings), timeout_s=2)
    running = Pipeline(tmp_path, database_url, dead)
    running.forwarder.start()
    try:
        infos = [running.put(synthetic_ct()) for _ in range(3)]
        wait_until(lambda: not running.forwarder.orthanc_available, timeout_s=30)
        assert running.spool.usage().files == 3
        assert running.forwarder.pending_studies() == {i.study_instance_uid for i in infos}
        assert running.tracker.check() == []
    finally:
        running.forwarder.stop()
        dead.close()
    assert Spool(tmp_path / "spool", limit_bytes=10**9).usage().files == 3


def test_a_refused_instance_in_a_batch_is_quarantined_alone(
    tmp_path: Path, database_url: str, orthanc: OrthancArchive
) -> None:
    """A ZIP batch with one instance Orthanc refuses is re-sent one by one."""
    running = Pipeline(tmp_path, database_url, orthanc)
    study, series = generate_uid(), generate_uid()
    good = [running.put(synthetic_ct(study, series, instance=n)) for n in range(1, 6)]
    bad = InstanceInfo(
        sop_class_uid="",
        sop_instance_uid=generate_uid(),
        study_instance_uid=study,
        series_instance_uid=series,
        transfer_syntax_uid="",
    )
    running.spool.put(
        bytes(128) + b"DICM" + b"\x02\x00" * 50, bad, sender_ae_title="CT1", hospital=None
    )
    running.tracker.start()
    entries = list(running.spool.entries())
    assert running.forwarder._forward_batch(entries) == []  # one ZIP, refused, then one by one
    running.forwarder.start()
    try:
        wait_until(lambda: running.spool.usage().files == 0, timeout_s=30)
        [refused] = running.quarantine.list()
        assert refused.sop_instance_uid is None or refused.sop_instance_uid == bad.sop_instance_uid
        assert "Orthanc refused" in refused.reason
        for info in good:
            found = orthanc.search_for_instances({"SOPInstanceUID": info.sop_instance_uid})
            assert [item.archive_id for item in found] == [
                orthanc_instance_id(
                    info.patient_id,
                    info.study_instance_uid,
                    info.series_instance_uid,
                    info.sop_instance_uid,
                )
            ]
        wait_until(lambda: len(running.events()) == 1, timeout_s=30)
        assert running.events()[0].payload["instance_count"] == 5
    finally:
        running.tracker.stop()
        running.forwarder.stop()
