"""Backup and restore (issue 18, item 4): the restore drill on a real radcloud (Orthanc and the
gateway, studies sent with dcmtk's storescu) with a backup taken while another push runs, and
the refusals: a home that holds data, a tampered file, the archive down, a full disk, no
secrets. The same drill runs on the managed PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from core.backup import BackupManifest, read_instances
from core.db.models import Report, Study, WorklistItem
from core.secrets import load_secrets
from imaging.synthetic import generate_study
from radcloud.services import Supervisor
from radcloud.services.components import gateway_component
from radcloud.services.orthanc import orthanc_component
from radcloud.services.postgresql import postgresql_component
from tests.conftest import Stack, settings_from_env, stack_env, start_dicom_doors
from tests.fixture_models import register_fixture_models
from tests.helpers import free_port, wait_until
from tests.serving.test_triage_e2e import push

pytestmark = pytest.mark.integration

SENDER = "BACKUPSENDER"
HOSPITAL = "Backup Hospital"
PASSPHRASE = "correct horse battery staple"
TABLES = ("studies", "worklist_items", "reports", "hospitals", "senders", "users")


@dataclass
class Drill:
    """The source radcloud and the backup taken of it during a push."""

    source: Stack
    backup: Path
    passphrase: Path
    before: list[str]  # studies stored before the backup started
    during: list[str]  # studies pushed while it ran
    root: Path


def _said(result: subprocess.CompletedProcess[str]) -> str:
    """What a command printed, its lines joined (the console wraps them at its width)."""
    return " ".join((result.stdout + result.stderr).split())


def _chest(index: int) -> Any:
    return generate_study("chest-xr", index, seed=1807)


def _reading_rows(source: Stack, study_instance_uid: str) -> None:
    """A worklist row and a signed report of one study, as triage and the reading app write."""
    db = source.database()
    try:
        with db.session() as session:
            study = session.scalars(
                select(Study).where(Study.study_instance_uid == study_instance_uid)
            ).one()
            session.add(WorklistItem(study_id=study.id, priority_class="urgent", ai_score=0.7))
            session.add(
                Report(
                    study_id=study.id,
                    author="dr-backup",
                    text="No acute finding.",
                    sr_sop_instance_uid="1.2.826.0.1.3680043.8.498.1807.1",
                    sr_series_instance_uid="1.2.826.0.1.3680043.8.498.1807.2",
                )
            )
    finally:
        db.dispose()


def _studies_counted(source: Stack, uids: list[str], instances: int) -> bool:
    db = source.database()
    try:
        with db.session() as session:
            rows = session.scalars(select(Study).where(Study.study_instance_uid.in_(uids))).all()
            return len(rows) == len(uids) and all(r.instance_count >= instances for r in rows)
    finally:
        db.dispose()


class _Ingest(threading.Thread):
    """Pushes ``studies`` with storescu, two at a time, until :meth:`stop`."""

    def __init__(self, source: Stack, directory: Path, studies: list[Any]) -> None:
        super().__init__(name="ingest", daemon=True)
        self.source, self.directory, self.studies = source, directory, studies
        self.batches = 0
        self.pushed: list[str] = []
        self._stop_pushing = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for start in range(0, len(self.studies), 2):
                if self._stop_pushing.is_set():
                    return
                batch = self.studies[start : start + 2]
                push(
                    self.source,
                    self.directory / str(start),
                    [s.datasets[0] for s in batch],
                    sender=SENDER,
                )
                self.pushed += [s.study_instance_uid for s in batch]
                self.batches += 1
        except Exception as exc:  # noqa: BLE001 - raised again by stop(), in the test
            self.error = exc

    def stop(self) -> None:
        """Stop after the batch in flight; raise what went wrong in the thread."""
        self._stop_pushing.set()
        self.join(timeout=120)
        if self.error is not None:
            raise self.error


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drill]:
    root = tmp_path_factory.mktemp("backup-drill")
    source = start_dicom_doors(root / "source")
    try:
        register_fixture_models(source.settings.paths.models_dir)
        source.add_sender(SENDER, HOSPITAL)
        source.cli("users", "add", "reader", "--role", "radiologist", "--hospital", HOSPITAL)
        first = [_chest(i) for i in range(3)]
        push(source, root / "first", [s.datasets[0] for s in first], sender=SENDER)
        before = [s.study_instance_uid for s in first]
        assert wait_until(lambda: _studies_counted(source, before, 1), timeout_s=30)
        _reading_rows(source, before[0])
        passphrase = root / "passphrase"
        passphrase.write_text(PASSPHRASE + "\n")
        ingest = _Ingest(source, root / "second", [_chest(i) for i in range(3, 63)])
        ingest.start()
        try:
            assert wait_until(lambda: ingest.batches >= 1, timeout_s=60), "no ingest"
            started_at = ingest.batches
            backup = root / "backups" / "one"
            backup.parent.mkdir()
            made = source.cli("backup", "--out", str(backup), "--passphrase-file", str(passphrase))
            ended_at = ingest.batches
        finally:
            ingest.stop()
        # ingest ran before the backup started and went on while it ran
        assert 1 <= started_at < ended_at
        during = ingest.pushed
        assert "backup" in made.stdout, made.stdout + made.stderr
        yield Drill(source, backup, passphrase, before, during, root)
    finally:
        source.down()


def _restore_env(home: Path) -> dict[str, str]:
    return stack_env(home)


def _restore(env: dict[str, str], *args: str) -> Any:
    return Stack(env, settings_from_env(env)).cli("restore", *args, check=False)


def _rows(database: Path, table: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database) as connection:
        return sorted(connection.execute(f"SELECT * FROM {table}").fetchall(), key=repr)  # noqa: S608


def _tree(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in directory.rglob("*")
        if p.is_file()
    }


def test_the_backup_is_consistent_and_says_what_it_holds(drill: Drill) -> None:
    manifest = BackupManifest.read(drill.backup)
    assert not drill.backup.with_name("one.partial").exists()
    assert manifest.database_engine == "sqlite"
    assert manifest.parts["secrets"] == "encrypted"
    assert manifest.parts["models"] == "included"
    assert manifest.migration_head
    instances = read_instances(drill.backup)
    assert manifest.counts["instances"] == len(instances)
    by_study: dict[str, int] = {}
    for record in instances:
        by_study[record.study_instance_uid] = by_study.get(record.study_instance_uid, 0) + 1
        path = drill.backup / record.path
        assert manifest.files[record.path] == record.sha256
        assert hashlib.sha256(path.read_bytes()).hexdigest() == record.sha256
    # every study the database snapshot names has all its counted instances in the archive copy
    snapshot = drill.backup / "database" / "core.db"
    with sqlite3.connect(snapshot) as connection:
        counted = connection.execute(
            "SELECT study_instance_uid, instance_count FROM studies"
        ).fetchall()
    assert {uid for uid, _ in counted} >= set(drill.before)
    assert set(drill.during) & set(by_study)  # studies that arrived while the backup ran
    for uid, count in counted:
        assert by_study.get(uid, 0) >= count, uid
    # no secret in clear anywhere in the backup
    keys = load_secrets(drill.source.settings)
    for path in drill.backup.rglob("*"):
        if path.is_file() and path.suffix != ".dcm":
            content = path.read_bytes()
            assert keys.audit_chain_key.encode() not in content, path
            assert keys.orthanc_password.encode() not in content, path


def test_restore_drill_brings_back_archive_database_models_and_audit_chain(
    drill: Drill, tmp_path: Path
) -> None:
    env = _restore_env(tmp_path / "restored")
    settings = settings_from_env(env)
    restored = Stack(env, settings)
    try:
        done = _restore(env, str(drill.backup), "--passphrase-file", str(drill.passphrase))
        assert done.returncode == 0, done.stdout + done.stderr
        manifest = BackupManifest.read(drill.backup)
        instances = read_instances(drill.backup)
        with restored.archive() as archive:
            assert archive.get_statistics().instances == len(instances)
            for record in instances:
                data = archive.retrieve_instance(record.orthanc_id)
                assert hashlib.sha256(data).hexdigest() == record.sha256
        snapshot = drill.backup / "database" / "core.db"
        for table in TABLES:
            assert _rows(settings.paths.database_file, table) == _rows(snapshot, table), table
        assert manifest.counts["worklist_items"] == manifest.counts["reports"] == 1
        assert _tree(settings.paths.models_dir) == _tree(drill.source.settings.paths.models_dir)
        verified = restored.cli("audit", "verify")
        assert "intact" in verified.stdout
        # the restored radcloud takes new studies, counted once (its change cursor was moved)
        restored.supervisor = Supervisor(
            settings,
            [orthanc_component(settings, load_secrets(settings)), gateway_component(settings)],
        )
        restored.supervisor.up()
        new = _chest(99)
        push(restored, tmp_path / "new", [new.datasets[0]], sender=SENDER)
        assert wait_until(
            lambda: _studies_counted(restored, [new.study_instance_uid], 1), timeout_s=30
        )
        assert _studies_counted(restored, drill.before, 1)
    finally:
        Supervisor(settings).down()


def test_an_incremental_backup_links_what_did_not_change(drill: Drill) -> None:
    again = drill.backup.with_name("two")
    made = drill.source.cli("backup", "--out", str(again))
    assert "linked from" in _said(made), made.stdout
    manifest = BackupManifest.read(again)
    assert manifest.incremental_from == str(drill.backup)
    first = {r.orthanc_id: r for r in read_instances(drill.backup)}
    second = read_instances(again)
    assert manifest.counts["instances_linked"] == len(first)
    assert manifest.counts["instances_fetched"] == len(second) - len(first)
    assert manifest.parts["secrets"] == "absent"
    for record in second:
        if record.orthanc_id in first:
            assert (again / record.path).stat().st_ino == (drill.backup / record.path).stat().st_ino


def test_restore_refuses_a_home_that_holds_data(drill: Drill) -> None:
    refused = _restore(
        drill.source.env, str(drill.backup), "--passphrase-file", str(drill.passphrase)
    )
    assert refused.returncode == 1
    assert "already holds data" in _said(refused) and "--force" in _said(refused)


def test_restore_refuses_a_tampered_file_naming_it(drill: Drill, tmp_path: Path) -> None:
    copy = tmp_path / "tampered"
    shutil.copytree(drill.backup, copy)
    victim = copy / read_instances(copy)[0].path
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    env = _restore_env(tmp_path / "home")
    refused = _restore(env, str(copy), "--passphrase-file", str(drill.passphrase))
    assert refused.returncode == 1
    assert str(victim.relative_to(copy)) in refused.stderr.replace("\n", "")
    assert not (tmp_path / "home" / "core.db").exists()


def test_a_backup_with_the_archive_down_fails_and_leaves_nothing_complete(
    drill: Drill, tmp_path: Path
) -> None:
    env = drill.source.env | {"RADCLOUD_ORTHANC_HTTP_PORT": str(free_port())}
    out = tmp_path / "down"
    failed = Stack(env, settings_from_env(env)).cli("backup", "--out", str(out), check=False)
    assert failed.returncode == 1
    assert "image archive" in _said(failed)
    assert not out.exists() and not out.with_name("down.partial").exists()
    db = drill.source.database()
    try:
        from core.db.models import AuditEvent

        with db.session() as session:
            last = session.scalars(
                select(AuditEvent)
                .where(AuditEvent.resource_type == "backup")
                .order_by(AuditEvent.seq.desc())
            ).first()
        assert last is not None and last.outcome == 8 and last.resource_id == str(out)
    finally:
        db.dispose()


def test_restore_without_the_secrets_fails_clearly(drill: Drill, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = _restore_env(home)
    refused = _restore(env, str(drill.backup))
    assert refused.returncode == 1
    assert "--passphrase-file" in _said(refused)
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase at all\n")
    refused = _restore(env, str(drill.backup), "--passphrase-file", str(wrong))
    assert refused.returncode == 1
    assert "passphrase does not open" in _said(refused)
    assert not (home / "core.db").exists()
    plain = tmp_path / "plain"  # no passphrase: the secrets are left out
    drill.source.cli("backup", "--out", str(plain), "--since", str(drill.backup))
    assert json.loads((plain / "manifest.json").read_text())["parts"]["secrets"] == "absent"
    refused = _restore(env, str(plain))
    assert refused.returncode == 1
    assert "holds no secrets" in _said(refused) and "--secrets" in _said(refused)
    assert not (home / "core.db").exists()
    other = tmp_path / "other"  # another radcloud's secrets: the audit chain does not verify
    load_secrets(settings_from_env(_restore_env(other)))
    refused = _restore(env, str(plain), "--secrets", str(other / "secrets.json"))
    assert refused.returncode == 1
    assert "not the backed-up radcloud's secrets.json" in _said(refused)
    assert "sealing" not in refused.stderr


def _postgresql_radcloud(home: Path, data: Path) -> Stack:
    """Settings of a radcloud on its managed PostgreSQL, Orthanc's index there too."""
    env = stack_env(
        home,
        postgresql_managed=True,
        postgresql_port=free_port(),
        postgresql_data_dir=data,
        orthanc_index="postgresql",
    )
    return Stack(env, settings_from_env(env))


def _doors(stack: Stack) -> Supervisor:
    settings, secrets = stack.settings, load_secrets(stack.settings)
    return Supervisor(
        settings,
        [
            postgresql_component(settings, secrets),
            orthanc_component(settings, secrets),
            gateway_component(settings),
        ],
    )


@pytest.mark.slow
def test_restore_drill_on_postgresql(tmp_path: Path) -> None:
    """The drill with the application database and Orthanc's index on the managed PostgreSQL:
    ``pg_dump`` in the snapshot the counts were read in, ``pg_restore`` into the restored
    radcloud's own server."""
    root = Path(tempfile.mkdtemp(prefix="radcloud-pg-backup-"))  # pytest's is private to root
    root.chmod(0o711)
    source = _postgresql_radcloud(tmp_path / "source", root / "source")
    target = _postgresql_radcloud(tmp_path / "target", root / "target")
    try:
        source.supervisor = _doors(source)
        source.supervisor.up()
        source.add_sender(SENDER, HOSPITAL)
        first = [_chest(i) for i in range(200, 203)]
        push(source, tmp_path / "first", [s.datasets[0] for s in first], sender=SENDER)
        before = [s.study_instance_uid for s in first]
        assert wait_until(lambda: _studies_counted(source, before, 1), timeout_s=30)
        _reading_rows(source, before[0])
        passphrase = tmp_path / "passphrase"
        passphrase.write_text(PASSPHRASE)
        ingest = _Ingest(source, tmp_path / "second", [_chest(i) for i in range(203, 233)])
        ingest.start()
        try:
            assert wait_until(lambda: ingest.batches >= 1, timeout_s=60), "no ingest"
            backup = tmp_path / "backup"
            source.cli("backup", "--out", str(backup), "--passphrase-file", str(passphrase))
        finally:
            ingest.stop()
        manifest = BackupManifest.read(backup)
        assert manifest.database_engine == "postgresql"
        assert "database/radcloud.dump" in manifest.files
        assert manifest.counts["worklist_items"] == manifest.counts["reports"] == 1
        done = target.cli("restore", str(backup), "--passphrase-file", str(passphrase))
        assert "restored" in done.stdout
        with target.archive() as archive:
            instances = read_instances(backup)
            assert archive.get_statistics().instances == len(instances)
            for record in instances:
                data = archive.retrieve_instance(record.orthanc_id)
                assert hashlib.sha256(data).hexdigest() == record.sha256
        db = target.database()
        try:
            assert db.engine.dialect.name == "postgresql"
            with db.session() as session:
                uids = set(session.scalars(select(Study.study_instance_uid)))
                assert len(uids) == manifest.counts["studies"]
                assert set(before) <= uids
                [report] = session.scalars(select(Report)).all()
                assert report.author == "dr-backup"
        finally:
            db.dispose()
        assert "intact" in target.cli("audit", "verify").stdout
    finally:
        for stack in (target, source):
            _doors(stack).down()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB file system (tmpfs), where a backup runs out of space; skipped where this
    process cannot mount one (not root, or no mount in the container)."""
    point = tmp_path / "small"
    point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False)


def test_a_full_disk_fails_the_backup_clearly_and_leaves_nothing(
    drill: Drill, small_disk: Path
) -> None:
    out = small_disk / "backup"
    failed = drill.source.cli("backup", "--out", str(out), check=False)
    assert failed.returncode == 1
    assert "no space left on the device" in _said(failed)
    assert list(small_disk.iterdir()) == []
