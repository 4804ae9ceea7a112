"""``radcloud patients backfill`` against a real Orthanc (alone) and a real SQLite database:
studies stored before the cross-reference existed get their identifiers as the gateway would
have registered them, a dry run registers nothing, a second run finds nothing new, unreadable
or mismatched studies are reported, and each run is audited once, as the OS user."""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Iterator, Sequence

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from core.archive import ImageArchive
from core.audit import AuditTrail
from core.db import Database, upgrade
from core.db.models import Study, StudyState
from core.identity import PatientIdentifier, PatientIdentity
from core.secrets import load_secrets
from core.tenancy import HospitalScope, hospital_row
from radcloud.services import Supervisor, orthanc_component
from tests.audit_records import assert_cli_actor, audit_records
from tests.conftest import Stack, settings_from_env, stack_env
from tests.dicom_gateway.dicom_files import synthetic_ct

pytestmark = pytest.mark.integration

NHS = "9434765919"


def _instance(patient_id: str, issuer: str, others: Sequence[tuple[str, str]]) -> tuple[str, bytes]:
    """A CT slice of a new study naming ``patient_id`` of ``issuer`` and ``others`` in
    OtherPatientIDsSequence."""
    ds = pydicom.dcmread(io.BytesIO(synthetic_ct(patient_id=patient_id)))
    ds.IssuerOfPatientID = issuer
    items = []
    for other_id, other_issuer in others:
        item = Dataset()
        item.PatientID, item.IssuerOfPatientID = other_id, other_issuer
        items.append(item)
    ds.OtherPatientIDsSequence = items
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return str(ds.StudyInstanceUID), out.getvalue()


def _study_row(
    db: Database, uid: str, hospital: str | None, patient_id: str, issuer: str | None
) -> None:
    """A ``studies`` row as the gateway wrote it before migration 0008 (no identifiers)."""
    with db.session() as session:
        session.add(
            Study(
                study_instance_uid=uid,
                hospital_id=hospital_row(session, hospital).id if hospital else None,
                patient_id=patient_id,
                issuer_of_patient_id=issuer,
                patient_name="SYNTHETIC^PHANTOM",
                state=StudyState.READY,
                instance_count=1,
            )
        )


def _stored(
    archive: ImageArchive,
    db: Database,
    hospital: str | None,
    patient_id: str,
    issuer: str,
    *,
    others: Sequence[tuple[str, str]] = (),
    recorded_patient_id: str | None = None,
    records_issuer: bool = True,
) -> str:
    """A study stored in the archive, with the row the gateway wrote for it (its Patient ID
    as ``recorded_patient_id`` when given; no issuer unless ``records_issuer``)."""
    uid, data = _instance(patient_id, issuer, others)
    archive.store_instance(data)
    _study_row(
        db, uid, hospital, recorded_patient_id or patient_id, issuer if records_issuer else None
    )
    return uid


@pytest.fixture(scope="module")
def radcloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, str]]]:
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc is not installed: run `make install` (apt-get install orthanc)")
    # rich tables at 250 columns: a UID on one line
    env = stack_env(tmp_path_factory.mktemp("patients-backfill")) | {"COLUMNS": "250"}
    running = Stack(env, settings_from_env(env))
    secrets = load_secrets(running.settings)
    supervisor = Supervisor(
        running.settings, [orthanc_component(running.settings, secrets, as_edge=False)]
    )
    supervisor.up()
    try:
        db = running.database()
        upgrade(db)
        with running.archive() as archive:
            uids = {
                # A's study names the NHS number too: A's assertion, to be linked
                "a": _stored(archive, db, "A", "A-0001", "HOSP_A", others=[(NHS, "NHS")]),
                # B's row is older than migration 0007: it recorded no issuer
                "b": _stored(archive, db, "B", "B-77", "HOSP_B", records_issuer=False),
                # the row and its instance disagree on the patient: reported, not registered
                "mismatch": _stored(
                    archive, db, "A", "A-0006", "HOSP_A", recorded_patient_id="A-0005"
                ),
                # stored before ownership was recorded: left out
                "ownerless": _stored(archive, db, None, "X-1", "X"),
            }
        uids["gone"] = generate_uid()  # a row whose images the archive does not hold
        _study_row(db, uids["gone"], "A", "A-0002", "HOSP_A")
        # a study claimed after migration 0008: registered already, never read
        PatientIdentity(db, AuditTrail.from_secrets(db, secrets)).register("A", "A-0003", "HOSP_A")
        _study_row(db, generate_uid(), "A", "A-0003", "HOSP_A")
        db.dispose()
        yield running, uids
    finally:
        supervisor.down()


def _text(output: str) -> str:
    """The command's output on one line (rich wraps it to the terminal's width)."""
    return " ".join(output.split())


def _counts(output: str) -> tuple[int, int, int, int]:
    found = re.search(
        r"(\d+) studies without identifiers: (?:would register|registered) (\d+) \((\d+) new "
        r"identifiers.*?(\d+) skipped",
        output,
    )
    assert found, output
    pending, registered, identifiers, skipped = map(int, found.groups())
    return pending, registered, identifiers, skipped


def test_backfill_registers_old_studies_once_and_reports_the_rest(
    radcloud: tuple[Stack, dict[str, str]],
) -> None:
    stack, uids = radcloud
    db = stack.database()
    identity = PatientIdentity(db, AuditTrail.from_secrets(db, load_secrets(stack.settings)))
    last = audit_records(stack.settings.home)[-1]["seq"]

    dry = _text(stack.cli("patients", "backfill", "--dry-run").stdout)
    assert _counts(dry) == (4, 2, 3, 2)  # a: A-0001 and its NHS number; b: B-77
    assert identity.key_for("A", "A-0001", "HOSP_A") is None  # nothing registered

    done = _text(stack.cli("patients", "backfill").stdout)
    assert _counts(done) == (4, 2, 3, 2)
    assert "1 studies without an owner" in done and "0 without a Patient ID" in done
    assert uids["gone"] in done and "no instance" in done
    assert uids["mismatch"] in done and "(0010,0020) PatientID" in done
    assert "A-0005" not in done and "A-0006" not in done  # reasons name attributes, not values
    key_a = identity.key_for("A", "A-0001", "HOSP_A")
    assert key_a is not None and identity.key_for("A", NHS, "NHS") == key_a
    assert [link.kind for link in identity.links(HospitalScope.platform(), patient_key=key_a)] == [
        "asserted"
    ]
    assert identity.identifiers(identity.key_for("B", "B-77", "HOSP_B") or "") == [
        PatientIdentifier("B", "B-77", "HOSP_B")
    ]
    assert identity.key_for("A", "A-0005", "HOSP_A") is None
    assert identity.key_for("A", "A-0006", "HOSP_A") is None

    again = _text(stack.cli("patients", "backfill").stdout)
    assert _counts(again) == (2, 0, 0, 2)  # only the two it cannot read are still pending
    db.dispose()

    records = [
        r
        for r in audit_records(stack.settings.home, after=last)
        if r["detail"].get("change") == "identifiers back-filled"
    ]
    assert [(r["action"], r["outcome"]) for r in records] == [("R", 0), ("C", 0), ("C", 0)]
    assert [r["detail"]["identifiers"] for r in records] == [3, 3, 0]
    assert records[1]["detail"]["without_owner"] == 1
    assert {s["study_instance_uid"] for s in records[1]["detail"]["skipped_studies"]} == {
        uids["gone"],
        uids["mismatch"],
    }
    for record in records:
        assert_cli_actor(record)
        assert "A-0001" not in str(record["detail"]) and NHS not in str(record["detail"])
