"""Study completeness from Orthanc's change feed, whatever stored the instances: storescu
straight into a real Orthanc (as the Orthanc DICOM edge receives), REST, the forwarder. One
``study.ready`` per complete study, ``study.updated`` after later instances, nothing for
studies no hospital claimed or for radcloud's own series; the cursor survives a new tracker, a
failed commit and Orthanc's restart; a study with instances still in the spool is not ready."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from core.archive import ChangeFeed, OrthancArchive, ResourceLevel, open_archive
from core.config import Settings, load_settings
from core.db import Database, upgrade
from core.db.models import ChangeCursor, OutboxEvent, Study, StudyState
from core.events import DERIVED_MANUFACTURER
from core.secrets import Secrets, load_secrets
from dicom_gateway.completeness import CURSOR_NAME, STUDY_READY, STUDY_UPDATED, StudyTracker
from dicom_gateway.dcmtk import storescu
from dicom_gateway.ownership import StudyOwnership
from dicom_gateway.stow import orthanc_keys
from dicom_gateway.validation import inspect_instance
from radcloud.services import DicomModality, Supervisor, orthanc_component
from tests.dicom_gateway.dicom_files import study_ownership, synthetic_ct
from tests.helpers import free_ports

pytestmark = pytest.mark.integration

MODALITY = "CT1"
HOSPITAL = "General"


@dataclass
class Orthanc:
    settings: Settings
    secrets: Secrets
    supervisor: Supervisor

    def archive(self) -> OrthancArchive:
        return open_archive(self.settings, self.secrets)

    def kill(self) -> None:
        pid_file = self.settings.paths.run_dir / "orthanc.pid"
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """Orthanc alone, taking C-STORE from ``MODALITY`` on 127.0.0.1 (as the Orthanc edge does)."""
    http, dicom, api, gateway = free_ports(4)
    settings = load_settings(
        home=tmp_path_factory.mktemp("completeness"),
        orthanc_http_port=http,
        orthanc_dicom_port=dicom,
        api_port=api,
        gateway_port=gateway,
    )
    secrets = load_secrets(settings)
    modality = DicomModality(MODALITY, "127.0.0.1", 104)
    supervisor = Supervisor(
        settings, [orthanc_component(settings, secrets, {"ct1": modality}, as_edge=False)]
    )
    supervisor.up()
    try:
        yield Orthanc(settings, secrets, supervisor)
    finally:
        supervisor.down()


class Tracking:
    """A tracker over its own database, claiming studies as the intake (or the edge) would."""

    def __init__(
        self,
        directory: Path,
        orthanc: Orthanc,
        pending: set[str] | None = None,
        database_url: str | None = None,
    ) -> None:
        self.directory = directory
        self.db = Database(database_url or f"sqlite:///{directory / 'app.db'}")
        upgrade(self.db)
        self.ownership: StudyOwnership = study_ownership(directory, self.db)
        self.orthanc = orthanc
        self.archive = orthanc.archive()
        self.pending: set[str] = pending if pending is not None else set()
        self.tracker = self.new_tracker()

    def new_tracker(self) -> StudyTracker:
        """A tracker as a restarted gateway makes it (same database, fresh memory)."""
        return StudyTracker(self.db, self.archive, 0.3, lambda: set(self.pending))

    def claim(self, data: bytes) -> None:
        info, _ = inspect_instance(data)
        self.ownership.admit(info, HOSPITAL, sender=MODALITY, source="dimse")

    def send(self, files: list[bytes]) -> None:
        """storescu straight into Orthanc (its own DICOM server)."""
        paths = []
        for number, data in enumerate(files):
            path = self.directory / f"{generate_uid()[-16:]}-{number}.dcm"
            path.write_bytes(data)
            paths.append(path)
        report = storescu(
            paths,
            host="127.0.0.1",
            port=self.orthanc.settings.orthanc_dicom_port,
            calling_ae=MODALITY,
            called_ae=self.orthanc.settings.orthanc_ae_title,
        )
        assert sorted(report.stored) == sorted(paths), report.output

    def events(self, study: str | None = None) -> list[OutboxEvent]:
        query = select(OutboxEvent).order_by(OutboxEvent.id)
        if study is not None:
            query = query.where(OutboxEvent.key == study)
        with self.db.session() as session:
            return list(session.scalars(query))

    def study(self, uid: str) -> Study | None:
        with self.db.session() as session:
            return session.scalar(select(Study).where(Study.study_instance_uid == uid))

    def settle(self, seconds: float = 1.5) -> list[str]:
        """Check as the tracker's loop does, for ``seconds`` (five times the quiet time);
        returns what was announced meanwhile."""
        announced: list[str] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            announced += self.tracker.check()
            time.sleep(0.1)
        return announced

    def close(self) -> None:
        self.archive.close()
        self.db.dispose()


@pytest.fixture
def tracking(tmp_path: Path, orthanc: Orthanc, database_url: str) -> Iterator[Tracking]:
    """A tracker over a database of each engine (its cursor's compare-and-set included)."""
    running = Tracking(tmp_path, orthanc, database_url=database_url)
    running.tracker.follow()  # takes its first position: the feed's end
    yield running
    running.close()


def _rewritten(data: bytes, **attributes: str) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _study(count: int) -> tuple[str, str, list[bytes]]:
    """CT slices with radcloud's Manufacturer, as its synthetic demo studies carry it."""
    study, series = generate_uid(), generate_uid()
    return (
        study,
        series,
        [
            _rewritten(synthetic_ct(study, series, instance=n), Manufacturer=DERIVED_MANUFACTURER)
            for n in range(1, count + 1)
        ],
    )


def _derived(study: str) -> bytes:
    """An instance as radcloud's write-back stores it: a new SEG series of the study."""
    return _rewritten(synthetic_ct(study), Manufacturer=DERIVED_MANUFACTURER, Modality="SEG")


def test_a_study_sent_by_storescu_into_orthanc_is_announced_once_then_updated(
    tracking: Tracking,
) -> None:
    study, series, files = _study(5)
    tracking.claim(files[0])
    tracking.send(files)
    assert tracking.settle() == [study]
    [ready] = tracking.events(study)
    assert (ready.topic, ready.payload["hospital"], ready.payload["instance_count"]) == (
        STUDY_READY,
        HOSPITAL,
        5,
    )
    assert ready.payload["series"][0]["series_instance_uid"] == series
    row = tracking.study(study)
    assert row is not None
    assert (row.state, row.instance_count, row.modalities) == (StudyState.READY, 5, "CT")
    assert row.orthanc_id == ready.payload["orthanc_study_id"]
    assert tracking.tracker.check() == []  # quiet and announced: nothing more

    tracking.send([synthetic_ct(study, series, instance=n) for n in (6, 7)])
    assert tracking.settle() == [study]
    updated = tracking.events(study)[-1]
    assert (updated.topic, updated.payload["instance_count"]) == (STUDY_UPDATED, 7)
    assert len(tracking.events(study)) == 2

    # the same instances again (a PACS retry), and radcloud's own result series: no arrival
    tracking.send(files[:2])
    tracking.archive.store_instance(_derived(study))
    assert tracking.settle() == []
    assert len(tracking.events(study)) == 2
    row = tracking.study(study)
    assert row is not None
    assert (row.state, row.instance_count) == (StudyState.READY, 7)


def test_a_study_no_hospital_claimed_gets_no_row_and_no_event(tracking: Tracking) -> None:
    study, _, files = _study(2)
    tracking.archive.store_instances(files)  # e.g. an operator's upload to Orthanc
    assert tracking.settle() == []
    assert tracking.study(study) is None
    assert tracking.events(study) == []


def test_a_study_still_in_the_spool_is_not_ready(tracking: Tracking) -> None:
    study, _, files = _study(3)
    tracking.claim(files[0])
    tracking.archive.store_instances(files[:2])  # the third still waits in the spool
    tracking.pending.add(study)
    assert tracking.settle() == []
    assert tracking.events(study) == []
    tracking.archive.store_instance(files[2])
    tracking.pending.clear()
    assert tracking.settle() == [study]
    [ready] = tracking.events(study)
    assert ready.payload["instance_count"] == 3


def test_the_cursor_survives_a_restart_and_a_failed_commit_replays_once(
    tracking: Tracking, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, _, files = _study(4)
    tracking.claim(files[0])
    tracking.send(files[:2])
    assert tracking.tracker.follow() > 0
    with tracking.db.session() as session:
        cursor = session.get(ChangeCursor, CURSOR_NAME)
        assert cursor is not None
        position = cursor.position
    assert position == tracking.archive.latest_change()

    # a restarted gateway reads on from the committed position: nothing counted twice
    restarted = tracking.new_tracker()
    assert restarted.follow() == 0
    tracking.send(files[2:])

    # the gateway dies while recording: the transaction with the cursor is not committed
    def crash(*_: object) -> None:
        raise RuntimeError("killed while recording")

    monkeypatch.setattr(StudyTracker, "_record", crash)
    with pytest.raises(RuntimeError):
        restarted.follow()
    monkeypatch.undo()
    row = tracking.study(study)
    assert row is not None and row.instance_count == 2
    tracking.tracker = tracking.new_tracker()  # and is started again: the feed is replayed
    assert tracking.settle() == [study]
    [ready] = tracking.events(study)
    assert ready.payload["instance_count"] == 4
    row = tracking.study(study)
    assert row is not None and row.instance_count == 4


def test_orthanc_killed_mid_study_and_restarted(tracking: Tracking, orthanc: Orthanc) -> None:
    study, _, files = _study(6)
    tracking.claim(files[0])
    tracking.send(files[:3])
    assert tracking.tracker.follow() > 0
    orthanc.kill()
    assert tracking.settle() == []  # the feed cannot be read: nothing is declared complete
    orthanc.supervisor.up()
    tracking.send(files[3:])
    assert tracking.settle() == [study]
    [ready] = tracking.events(study)
    assert ready.payload["instance_count"] == 6
    assert tracking.settle() == []
    assert len(tracking.events(study)) == 1


class _LateCommit:
    """The archive as a follower sees it while another node's transaction is still open: one
    change (numbered lower than changes already committed) is left out of the feed until
    ``until``, as PostgreSQL shows a row only once its transaction commits."""

    def __init__(self, archive: OrthancArchive, hidden: int, until: float) -> None:
        self._archive = archive
        self._hidden = hidden
        self._until = until

    def __getattr__(self, name: str) -> object:
        return getattr(self._archive, name)

    def changes(self, since: int = 0, limit: int = 100) -> ChangeFeed:
        feed = self._archive.changes(since=since, limit=limit)
        if time.monotonic() >= self._until:
            return feed
        shown = tuple(c for c in feed.changes if c.seq != self._hidden)
        return ChangeFeed(shown, last=feed.last, done=feed.done)


@pytest.mark.parametrize("settle_s", [0.0, 3.0])
def test_a_change_committed_after_a_higher_one_is_counted_when_the_tracker_settles(
    tmp_path: Path, orthanc: Orthanc, settle_s: float
) -> None:
    """Several archive nodes: without ``settle_s`` the late change is passed over (the study's
    count short: what several writers would do to the follower), with it counted."""
    running = Tracking(tmp_path, orthanc)
    try:
        running.tracker.follow()
        study, _, files = _study(3)
        running.claim(files[0])
        start = running.archive.latest_change()
        running.send(files)
        feed = running.archive.changes(since=start, limit=100)
        [_, hidden, _] = [c.seq for c in feed.changes if c.change_type == "NewInstance"]
        late = _LateCommit(running.archive, hidden, time.monotonic() + 1.0)
        archive: Any = late  # an ImageArchive but for the hidden change
        tracker = StudyTracker(running.db, archive, 0.3, set, settle_s=settle_s)
        tracker.follow()  # the late change is not in the feed yet
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            tracker.follow()
            time.sleep(0.1)
        row = running.study(study)
        assert row is not None
        assert row.instance_count == (3 if settle_s else 2)
    finally:
        running.close()


def test_instances_the_door_announced_are_resolved_without_reading_them_back(
    tracking: Tracking, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The STOW-RS door tells the tracker the Orthanc keys of what it stored (hashes of the
    UIDs): the feed's mention of them is resolved without a bulk read of the instances, and the
    study is counted as when they are read back. The keys must be Orthanc's own for that."""
    study, _, files = _study(4)
    tracking.claim(files[0])
    infos = [inspect_instance(data)[0] for data in files]
    tracking.tracker.expect([orthanc_keys(info) for info in infos[:3]])
    read: list[tuple[ResourceLevel, int]] = []
    bulk = tracking.archive.get_resources

    def counted(level: ResourceLevel, ids: Any) -> Any:
        read.append((level, len(list(ids))))
        return bulk(level, ids)

    monkeypatch.setattr(tracking.archive, "get_resources", counted)
    tracking.archive.store_instances(files)
    assert tracking.settle() == [study]
    [ready] = tracking.events(study)
    assert ready.payload["instance_count"] == 4
    instance_reads = [count for level, count in read if level is ResourceLevel.INSTANCE]
    assert instance_reads == [1], read  # only the one the door did not announce
