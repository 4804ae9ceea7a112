"""The reading app's API against a real stack: a SYNTHETIC head CT through the gateway and the
slim fixture models (every head CT critical, with a SEG), then the viewer manifest, the mask,
refusals, and signing (SR in Orthanc, labels, reported, audit)."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from core.audit import AuditTrail
from core.db.models import AuditEvent, Label, Report, Study
from core.secrets import load_secrets
from imaging.synthetic import generate_study
from tests.conftest import Stack
from tests.serving.test_triage_e2e import SENDER, push, results
from training._labels import TASK_FINDINGS, study_label
from training.tasks import Task

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def head_ct(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A SYNTHETIC head CT sent through the gateway and triaged (critical, with a SEG)."""
    stack.add_sender(SENDER, "Triage Hospital")
    study = generate_study("head-ct", 0, seed=77, positive=True)
    push(stack, tmp_path_factory.mktemp("reading"), study.datasets)
    (row,) = results(stack, study.study_instance_uid)
    assert row["critical"] and row["findings"].get("seg_series_instance_uid")
    return study


def test_viewer_config_has_the_presets(stack: Stack) -> None:
    with stack.client("radiologist") as client:
        config = client.get("/api/viewer/config").json()
    names = [p["name"] for p in config["presets"]]
    assert names[:2] == ["CT brain", "Subdural"] and config["refresh_seconds"] >= 2
    assert {"name": "Lung", "window": 1500.0, "level": -600.0} in config["presets"]


def test_manifest_lists_series_in_slice_order_and_the_ai_finding(
    stack: Stack, head_ct: Any
) -> None:
    uid = head_ct.study_instance_uid
    with stack.client("radiologist") as client:
        manifest = client.get(f"/api/studies/{uid}/viewer").json()
    assert manifest["can_sign"] is True and manifest["reading"]["status"] == "unread"
    (series,) = manifest["series"]  # SEG and SR are not image series
    by_uid = {str(d.SOPInstanceUID): d for d in head_ct.datasets}
    assert {i["sop_instance_uid"] for i in series["instances"]} == set(by_uid)
    z = [float(by_uid[i["sop_instance_uid"]].ImagePositionPatient[2]) for i in series["instances"]]
    assert z == sorted(z)  # axial: along the normal is along z
    (finding,) = manifest["findings"]
    assert finding["label"] == "Hemorrhage" and finding["critical"] is True
    assert finding["verified"] is False and finding["model_name"] == "head-ct-haemorrhage"
    assert finding["series_instance_uid"] == series["series_instance_uid"]
    assert finding["slices"] and max(finding["slices"]) < len(series["instances"])
    assert manifest["report"] is None


def test_mask_frames_are_on_the_finding_slices(stack: Stack, head_ct: Any) -> None:
    uid = head_ct.study_instance_uid
    with stack.client("radiologist") as client:
        (finding,) = client.get(f"/api/studies/{uid}/viewer").json()["findings"]
        mask = client.get(f"/api/studies/{uid}/findings/{finding['result_id']}/mask").json()
        missing = client.get(f"/api/studies/{uid}/findings/999999/mask")
    with stack.client("admin") as admin:
        records = admin.get("/api/audit", params={"resource_id": uid, "event_code": "110110"})
    [read] = [r for r in records.json() if r["detail"]["what"] == "AI segmentation"][:1]
    db = stack.database()
    try:
        trail = AuditTrail.from_secrets(db, load_secrets(stack.settings))
        patient_id = str(head_ct.datasets[0].PatientID)
        assert read["patient_id_hash"] == trail.patient_id_hash(patient_id)  # never the ID
    finally:
        db.dispose()
    assert [f["index"] for f in mask["frames"]] == finding["slices"]
    rows, columns = mask["rows"], mask["columns"]
    for frame in mask["frames"]:
        bits = np.unpackbits(np.frombuffer(base64.b64decode(frame["bits"]), np.uint8))
        assert bits[: rows * columns].reshape(rows, columns).any()
    assert missing.status_code == 404


def test_other_roles_see_nothing_of_the_study(stack: Stack, head_ct: Any) -> None:
    uid = head_ct.study_instance_uid
    for role in ("ml_engineer", "peer_hospital", "pacs"):
        with stack.client(role) as client:
            answer = client.get(f"/api/studies/{uid}/viewer")
            assert answer.status_code == 403, role
            assert head_ct.datasets[0].PatientName.family_name not in answer.text
    with stack.client() as anonymous:
        assert anonymous.get(f"/api/studies/{uid}/viewer").status_code == 401
    with stack.client("admin") as admin:
        manifest = admin.get(f"/api/studies/{uid}/viewer").json()
        assert manifest["can_sign"] is False
        refused = admin.post(f"/api/studies/{uid}/sign", json={"version": 1, "text": "x"})
        assert refused.status_code == 403


def test_signing_stores_an_sr_labels_and_reports_the_study(
    stack: Stack, head_ct: Any, tmp_path: Path
) -> None:
    uid = head_ct.study_instance_uid
    with stack.client("radiologist") as client:
        manifest = client.get(f"/api/studies/{uid}/viewer").json()
        (finding,) = manifest["findings"]
        series = manifest["series"][0]
        added = {
            "label": "Skull fracture",
            "series_instance_uid": series["series_instance_uid"],
            "sop_instance_uid": series["instances"][3]["sop_instance_uid"],
            "region": {"x": 10, "y": 12, "width": 20, "height": 8},
        }
        decision = {"result_id": finding["result_id"], "decision": "confirmed"}
        version = manifest["reading"]["version"]
        body = {"version": version, "text": "Acute haemorrhage.", "decisions": [decision]}

        unclaimed = client.post(f"/api/studies/{uid}/sign", json=body)
        assert unclaimed.status_code == 409 and unclaimed.json()["status"] == "unread"
        claimed = client.post(f"/api/worklist/{uid}/claim", json={"version": version}).json()
        body["version"] = claimed["version"]
        no_decision = client.post(f"/api/studies/{uid}/sign", json=body | {"decisions": []})
        assert no_decision.status_code == 422 and "decision" in no_decision.json()["detail"]
        no_text = client.post(f"/api/studies/{uid}/sign", json=body | {"text": "  "})
        assert no_text.status_code == 422
        stale = client.post(f"/api/studies/{uid}/sign", json=body | {"version": 1})
        assert stale.status_code == 409

        signed = client.post(f"/api/studies/{uid}/sign", json=body | {"added": [added]})
        assert signed.status_code == 200, signed.text
        outcome = signed.json()
        assert outcome["status"] == "reported" and outcome["labels"] == 2
        again = client.get(f"/api/studies/{uid}/viewer").json()
    assert again["reading"]["status"] == "reported"
    assert again["report"]["signed_by"] == "test-radiologist"
    assert again["findings"][0]["verified"] is True

    with stack.orthanc() as orthanc:
        found = orthanc.post("/tools/lookup", content=outcome["sr_sop_instance_uid"]).json()
        (instance,) = [f["ID"] for f in found if f["Type"] == "Instance"]
        sr = pydicom.dcmread(
            pydicom.filebase.DicomBytesIO(orthanc.get(f"/instances/{instance}/file").content)
        )
    assert sr.StudyInstanceUID == uid and sr.VerificationFlag == "VERIFIED"
    assert (
        sr.CompletionFlag == "COMPLETE"
        and sr.VerifyingObserverSequence[0].VerifyingObserverName == "test-radiologist^"
    )
    text = " | ".join(_texts(sr))
    assert "Acute haemorrhage." in text and "Skull fracture" in text
    assert "confirmed by the radiologist" in text
    # dcmtk's SR reader, independent of highdicom, accepts and renders the document
    path = tmp_path / "report.dcm"
    sr.save_as(path)
    dumped = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, check=False)
    assert dumped.returncode == 0, dumped.stderr
    assert "Acute haemorrhage." in dumped.stdout and "Verifying Observer" in dumped.stdout

    with stack.database().session() as session:
        study_id = session.scalar(select(Study.id).where(Study.study_instance_uid == uid))
        labels = session.scalars(select(Label).where(Label.study_id == study_id)).all()
        reports = session.scalars(select(Report).where(Report.study_id == study_id)).all()
        events = session.scalars(select(AuditEvent).where(AuditEvent.resource_id == uid)).all()
        by_finding = {label.finding: label for label in labels}
        assert by_finding["Hemorrhage"].present is True
        assert by_finding["Hemorrhage"].region == {
            "seg_series_instance_uid": finding["seg_series_instance_uid"]
        }
        assert by_finding["Skull fracture"].region["width"] == 20
        assert all(label.author == "test-radiologist" for label in labels)
        assert (
            len(reports) == 1 and reports[0].sr_sop_instance_uid == outcome["sr_sop_instance_uid"]
        )
        whats = [e.detail.get("what") for e in events]
    assert "study opened for reading" in whats and "report signed" in whats
    assert "report signing refused" in whats


def _texts(item: Any) -> list[str]:
    """Every TEXT value of an SR's content tree."""
    found = [str(item.TextValue)] if "TextValue" in item else []
    for child in item.get("ContentSequence") or []:
        found += _texts(child)
    return found


def test_training_reads_the_signed_labels(stack: Stack, head_ct: Any) -> None:
    """The confirmed finding is a positive with its SEG as the mask for the head-CT task."""
    uid = head_ct.study_instance_uid
    with stack.database().session() as session:
        study_id = session.scalar(select(Study.id).where(Study.study_instance_uid == uid))
        labels = session.scalars(select(Label).where(Label.study_id == study_id)).all()
        label = study_label(labels, TASK_FINDINGS[Task.HEAD_CT])
    assert label.label == 1 and label.regions


def _referenced(items: Any) -> list[str]:
    """Every ReferencedSOPInstanceUID under a sequence's items."""
    found = []
    for item in items or []:
        if "ReferencedSOPInstanceUID" in item:
            found.append(str(item.ReferencedSOPInstanceUID))
        for element in item:
            if element.VR == "SQ":
                found += _referenced(element.value)
    return found


def test_a_signed_report_is_amended_never_altered(stack: Stack, head_ct: Any) -> None:
    """Issue 14, item 7: once signed, neither signing again nor a bare report transition can
    change the report (409); an amendment is a new verified SR whose Predecessor Documents
    Sequence references the signed one, recorded as a new report row and audited, while the
    signed SR and its row stay as they were."""
    uid = head_ct.study_instance_uid
    with stack.client("radiologist") as client:
        viewer = client.get(f"/api/studies/{uid}/viewer").json()
        assert viewer["reading"]["status"] == "reported"
        signed = viewer["report"]
        version = viewer["reading"]["version"]
        decisions = [
            {"result_id": f["result_id"], "decision": "rejected"} for f in viewer["findings"]
        ]
        resign = client.post(
            f"/api/studies/{uid}/sign",
            json={"version": version, "text": "No haemorrhage.", "decisions": decisions},
        )
        assert resign.status_code == 409, resign.text
        bare = client.post(f"/api/worklist/{uid}/report", json={"version": version})
        assert bare.status_code == 409, bare.text
        assert client.post(f"/api/studies/{uid}/amend", json={"text": "  "}).status_code == 422
        text = "Acute haemorrhage. Addendum: also a small left subdural collection."
        amended = client.post(f"/api/studies/{uid}/amend", json={"text": text})
        assert amended.status_code == 200, amended.text
        outcome = amended.json()
        assert outcome["amends_sr_sop_instance_uid"] == signed["sr_sop_instance_uid"]
        after = client.get(f"/api/studies/{uid}/viewer").json()
    assert after["report"]["text"] == text
    assert after["report"]["sr_sop_instance_uid"] == outcome["sr_sop_instance_uid"]
    assert after["report"]["decisions"] == signed["decisions"]  # carried over
    assert after["reading"]["status"] == "reported"

    with stack.orthanc() as orthanc:

        def sr(sop_instance_uid: str) -> pydicom.Dataset:
            found = orthanc.post("/tools/lookup", content=sop_instance_uid).json()
            (instance,) = [f["ID"] for f in found if f["Type"] == "Instance"]
            data = orthanc.get(f"/instances/{instance}/file").content
            return pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))

        new, old = sr(outcome["sr_sop_instance_uid"]), sr(signed["sr_sop_instance_uid"])
    assert new.VerificationFlag == "VERIFIED" and new.StudyInstanceUID == uid
    assert _referenced(new.PredecessorDocumentsSequence) == [signed["sr_sop_instance_uid"]]
    assert text in " | ".join(_texts(new))
    assert "Acute haemorrhage." in " | ".join(_texts(old))  # the signed SR is unchanged
    assert "PredecessorDocumentsSequence" not in old

    database = stack.database()
    try:
        with database.session() as session:
            study_id = session.scalar(select(Study.id).where(Study.study_instance_uid == uid))
            rows = session.scalars(
                select(Report).where(Report.study_id == study_id).order_by(Report.id)
            ).all()
            assert [r.sr_sop_instance_uid for r in rows] == [
                signed["sr_sop_instance_uid"],
                outcome["sr_sop_instance_uid"],
            ]
            assert rows[0].text == "Acute haemorrhage." and rows[1].text == text
            events = session.scalars(select(AuditEvent).where(AuditEvent.resource_id == uid)).all()
            amendments = [e.detail for e in events if e.detail.get("what") == "report amended"]
        assert amendments[0]["amends_sr_sop_instance_uid"] == signed["sr_sop_instance_uid"]
        with pytest.raises(ValueError, match="cannot be altered"), database.session() as session:
            first = session.get(Report, rows[0].id)
            assert first is not None
            first.text = "rewritten"
        with database.session() as session:
            assert session.get(Report, rows[0].id).text == "Acute haemorrhage."  # type: ignore[union-attr]
    finally:
        database.dispose()
