"""Validation, the durable spool and quarantine (one module each, real files on disk); the
tests of quarantine releases, which claim studies, on each database engine (``database_url``)."""

from __future__ import annotations

import errno
import io
import os
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from core.audit import AuditTrail
from core.db import Database, upgrade
from core.db.models import Study
from core.exceptions import RadcloudError
from core.security import Actor
from dicom_gateway.exceptions import (
    GatewayError,
    InstanceTooLargeError,
    NonConformantInstanceError,
    QuarantineEntryError,
    SpoolError,
    SpoolFullError,
    UnreadableInstanceError,
)
from dicom_gateway.intake import Intake
from dicom_gateway.quarantine import Quarantine
from dicom_gateway.spool import Spool
from dicom_gateway.validation import inspect_instance
from tests.dicom_gateway.dicom_files import pydicom_file, study_ownership, synthetic_ct


def test_valid_instance_is_described_and_its_preamble_zeroed() -> None:
    polyglot = b"MZ" + bytes(range(126))  # an executable header hiding in the preamble
    data = synthetic_ct(preamble=polyglot)
    info, stored = inspect_instance(data)
    assert stored[:128] == bytes(128)
    assert stored[128:] == data[128:]
    assert info.modality == "CT"
    assert info.patient_id == "SYNTH-001"
    assert info.study_instance_uid == pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID


@pytest.mark.parametrize(
    ("data", "error", "reason"),
    [
        (b"not dicom at all", UnreadableInstanceError, "not a DICOM Part 10 file"),
        (synthetic_ct(drop=("StudyInstanceUID",)), NonConformantInstanceError, "(0020,000D)"),
        (synthetic_ct(drop=("SOPInstanceUID",)), NonConformantInstanceError, "(0008,0018)"),
        (pydicom_file("MR_truncated.dcm"), UnreadableInstanceError, "declares 8192 bytes"),
        (synthetic_ct()[:700], UnreadableInstanceError, "truncated"),
        (synthetic_ct()[:1300], UnreadableInstanceError, "truncated: element (7FE0,0010)"),
    ],
)
def test_unstorable_data_is_refused_with_a_reason(
    data: bytes, error: type[Exception], reason: str
) -> None:
    with pytest.raises(error, match=reason.replace("(", r"\(").replace(")", r"\)")):
        inspect_instance(data)


def _with_values(data: bytes, **values: str) -> bytes:
    """``data`` with the attributes set to ``values`` (invalid ones deliberately)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom warns of the invalid values
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        buffer = io.BytesIO()
        ds.save_as(buffer)
    return buffer.getvalue()


def test_odd_but_storable_data_is_accepted_with_warnings() -> None:
    # A leading zero in a UID component breaks PS3.5 9.1 and is a known bug of some modality
    # software; the UID is still only digits and dots, safe as a key, query value and path
    # part, so it is stored with a warning rather than losing the study. (This test used
    # "1.2.03.abc" until issue 14: letters are not safe, and such a UID is now quarantined.)
    data = _with_values(synthetic_ct(), SeriesInstanceUID="1.2.03.4")
    info, _ = inspect_instance(data)
    assert info.series_instance_uid == "1.2.03.4"
    assert any("not a valid UID" in warning for warning in info.warnings)


UNSAFE_UIDS = [
    "../../x",  # a path out of any directory it is joined to
    "1.2.3/../../../etc/passwd",
    "1.2.abc",  # not digits
    "1.2.3*",  # a wildcard in a query
    "1.2.3?x=1",
    "1..2",  # an empty component
    "..",
    "1." + "2" * 63,  # 65 characters
]


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
@pytest.mark.parametrize("uid", UNSAFE_UIDS)
def test_instance_with_an_unsafe_uid_is_quarantined_with_the_reason(
    tmp_path: Path, keyword: str, uid: str
) -> None:
    spool = Spool(tmp_path / "spool", limit_bytes=10_000_000)
    quarantine = Quarantine(tmp_path / "quarantine")
    intake = Intake(spool, quarantine, 10_000_000, study_ownership(tmp_path / "db"))
    data = _with_values(synthetic_ct(), **{keyword: uid})
    with pytest.raises(NonConformantInstanceError, match=f"{keyword} .* is not a valid UID"):
        intake.accept(data, sender_ae_title="CT1", hospital="General", source="dimse")
    [entry] = quarantine.list()
    assert keyword in entry.reason
    assert "PS3.5 9.1" in entry.reason
    assert quarantine.data(entry.entry_id) == data
    assert spool.usage().files == 0
    # nothing on disk is named after the UID: the entry's name is the gateway's own
    assert [p.name for p in (tmp_path / "quarantine").iterdir()] == [entry.entry_id]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "quarantine", "spool"]


def test_spool_round_trip_is_durable_and_ordered(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", limit_bytes=10_000_000)
    datas = [synthetic_ct(instance=n) for n in range(1, 4)]
    for data in datas:
        info, stored = inspect_instance(data)
        spool.put(stored, info, sender_ae_title="MODALITY1", hospital="General")
    entries = list(Spool(tmp_path / "spool", limit_bytes=10_000_000).entries())  # a new process
    assert [e.read_dicom() for e in entries] == datas
    assert entries[0].sender_ae_title == "MODALITY1"
    assert entries[0].hospital == "General"
    assert all(not p.name.endswith(".tmp") for p in (tmp_path / "spool").iterdir())
    assert all(e.path.stat().st_mode & 0o077 == 0 for e in entries)
    assert spool.usage().files == 3
    spool.remove(entries[0])
    assert spool.usage().files == 2


def test_spool_refuses_past_its_limit_and_keeps_nothing(tmp_path: Path) -> None:
    info, stored = inspect_instance(synthetic_ct())
    spool = Spool(tmp_path / "spool", limit_bytes=len(stored) * 2)
    spool.put(stored, info, sender_ae_title=None, hospital=None)
    with pytest.raises(SpoolFullError, match="RADCLOUD_GATEWAY_SPOOL_LIMIT_MIB") as caught:
        for _ in range(3):
            spool.put(stored, info, sender_ae_title=None, hospital=None)
    assert caught.value.limit_bytes == len(stored) * 2
    assert spool.usage().files == 1


def test_full_disk_is_reported_as_spool_full_and_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool", limit_bytes=10_000_000)
    info, stored = inspect_instance(synthetic_ct())

    def disk_full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(SpoolFullError, match="disk full"):
        spool.put(stored, info, sender_ae_title=None, hospital=None)
    monkeypatch.undo()
    assert list((tmp_path / "spool").iterdir()) == []


def test_reserve_of_free_disk_is_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", limit_bytes=10**15, min_free_bytes=10**18)
    info, stored = inspect_instance(synthetic_ct())
    with pytest.raises(SpoolFullError, match="RADCLOUD_GATEWAY_MIN_FREE_DISK_MIB"):
        spool.put(stored, info, sender_ae_title=None, hospital=None)


def test_incomplete_writes_from_a_crash_are_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", limit_bytes=10_000_000)
    stale = tmp_path / "spool" / "00000000000000000001-dead.tmp"
    stale.write_bytes(b"half an instance")
    os.utime(stale, (1, 1))
    fresh = tmp_path / "spool" / "99999999999999999999-live.tmp"
    fresh.write_bytes(b"being written by another process")
    assert spool.recover() == 1
    assert not stale.exists()
    assert fresh.exists()


def test_corrupt_spool_file_is_named(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", limit_bytes=10_000_000)
    bad = tmp_path / "spool" / "1-x.spool"
    bad.write_bytes(b"garbage")
    with pytest.raises(SpoolError, match="not a radcloud spool file") as caught:
        spool.read(bad)
    assert caught.value.path == bad
    assert isinstance(caught.value, GatewayError)
    assert isinstance(caught.value, RadcloudError)  # the CLI reports it cleanly


def test_intake_quarantines_refusals_and_limits_size(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", limit_bytes=10_000_000)
    quarantine = Quarantine(tmp_path / "quarantine")
    intake = Intake(spool, quarantine, 5000, study_ownership(tmp_path))
    bad = synthetic_ct(drop=("StudyInstanceUID",))
    with pytest.raises(NonConformantInstanceError):
        intake.accept(bad, sender_ae_title="CT1", hospital="General", source="dimse")
    with pytest.raises(InstanceTooLargeError, match="exceeds the limit of 5000 bytes"):
        intake.accept(bytes(6000), sender_ae_title="CT1", hospital="General", source="dimse")
    entries = quarantine.list()
    assert len(entries) == 1
    assert entries[0].sender_ae_title == "CT1"
    assert "StudyInstanceUID" in entries[0].reason
    assert quarantine.data(entries[0].entry_id) == bad
    assert spool.usage().files == 0
    good = intake.accept(synthetic_ct(), sender_ae_title="CT1", hospital="General", source="dimse")
    assert good.info.modality == "CT"


def test_quarantine_release_and_delete(tmp_path: Path, database_url: str) -> None:
    spool = Spool(tmp_path / "spool", limit_bytes=10_000_000)
    db = Database(database_url)
    upgrade(db)
    quarantine = Quarantine(tmp_path / "quarantine", AuditTrail(db, "k" * 48, "c" * 48))
    actor = Actor.cli()
    odd = quarantine.add(
        pydicom_file("MR_truncated.dcm"),
        reason="truncated",
        error="X",
        source="dimse",
        sender_ae_title="MR1",
        hospital="General",
    )
    junk = quarantine.add(
        b"junk", reason="not DICOM", error="X", source="stow", sender_ae_title=None, hospital=None
    )
    study = "1.2.826.0.1.3680043.8.498.778"
    anonymous = quarantine.add(  # cut short, and without a Patient ID
        synthetic_ct(study, drop=("PatientID",))[:-100],
        reason="truncated",
        error="X",
        source="dimse",
        sender_ae_title="CT1",
        hospital="General",
    )
    ownership = study_ownership(tmp_path, db)
    released = quarantine.release(spool, odd.entry_id, actor=actor, ownership=ownership)
    assert released.info.sop_instance_uid == odd.sop_instance_uid
    assert "released from quarantine" in released.info.warnings[0]
    # no patient identity: it cannot claim its study, only join one its hospital holds
    with pytest.raises(QuarantineEntryError, match="is not held here"):
        quarantine.release(spool, anonymous.entry_id, actor=actor, ownership=ownership)
    Intake(spool, quarantine, 10_000_000, ownership).accept(
        synthetic_ct(study, instance=2), sender_ae_title="CT1", hospital="General", source="dimse"
    )
    quarantine.release(spool, anonymous.entry_id, actor=actor, ownership=ownership)
    assert spool.usage().files == 3
    with pytest.raises(QuarantineEntryError, match="UIDs are unknown"):
        quarantine.release(spool, junk.entry_id, actor=actor, ownership=ownership)
    quarantine.delete(junk.entry_id, actor=actor)
    assert quarantine.list() == []
    with pytest.raises(QuarantineEntryError, match="no such entry"):
        quarantine.show("../../etc")


def test_instance_quarantined_for_an_unsafe_uid_is_never_released(
    tmp_path: Path, database_url: str
) -> None:
    spool = Spool(tmp_path / "spool", limit_bytes=10_000_000)
    db = Database(database_url)
    upgrade(db)
    quarantine = Quarantine(tmp_path / "quarantine", AuditTrail(db, "k" * 48, "c" * 48))
    intake = Intake(spool, quarantine, 10_000_000, study_ownership(tmp_path, db))
    data = _with_values(synthetic_ct(), StudyInstanceUID="../../x", SOPInstanceUID="../../y")
    with pytest.raises(NonConformantInstanceError):
        intake.accept(data, sender_ae_title=None, hospital=None, source="stow")
    [entry] = quarantine.list()
    assert entry.study_instance_uid == "../../x"  # shown to the operator, used for nothing
    with pytest.raises(QuarantineEntryError, match="cannot be used as keys"):
        quarantine.release(
            spool, entry.entry_id, actor=Actor.cli(), ownership=study_ownership(tmp_path, db)
        )
    assert spool.usage().files == 0
    assert quarantine.count() == 1


def test_a_release_claims_its_study_for_its_hospital_and_joins_no_one_elses(
    tmp_path: Path, database_url: str
) -> None:
    """The tenancy rules hold for an operator's release as for a sender: the first instance of
    a study claims it (so the study gets its row and, once complete, its event); an instance of
    another hospital's study, or from a sender without a hospital, stays in quarantine."""
    spool = Spool(tmp_path / "spool", limit_bytes=10_000_000)
    db = Database(database_url)
    upgrade(db)
    quarantine = Quarantine(tmp_path / "quarantine", AuditTrail(db, "k" * 48, "c" * 48))
    ownership = study_ownership(tmp_path, db)
    study = "1.2.826.0.1.3680043.8.498.777"

    def kept(hospital: str | None, instance: int, **values: Any) -> str:
        data = synthetic_ct(study, instance=instance, patient_id="MRN1", **values)
        entry = quarantine.add(
            data,
            reason="test",
            error="NonConformantInstanceError",
            source="dimse",
            sender_ae_title="CT1",
            hospital=hospital,
        )
        return entry.entry_id

    first, other, orphan = kept("General", 1), kept("Other", 2), kept(None, 3)
    released = quarantine.release(spool, first, actor=Actor.cli(), ownership=ownership)
    assert released.info.study_instance_uid == study
    with db.session() as session:
        row = session.scalars(select(Study).where(Study.study_instance_uid == study)).one()
        assert (row.hospital.name, row.patient_id) == ("General", "MRN1")
    with pytest.raises(QuarantineEntryError, match="another hospital"):
        quarantine.release(spool, other, actor=Actor.cli(), ownership=ownership)
    with pytest.raises(QuarantineEntryError, match="no hospital"):
        quarantine.release(spool, orphan, actor=Actor.cli(), ownership=ownership)
    assert {e.entry_id for e in quarantine.list()} == {other, orphan}
    assert spool.usage().files == 1
