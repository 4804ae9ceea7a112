"""The main job through real parts: dcmtk storescu → gateway → Orthanc → study.ready → Ray Serve
triage → SEG/SR in Orthanc, result rows, worklist; failures, idempotency, serving down."""

from __future__ import annotations

import base64
import os
import signal
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from sqlalchemy import func, select

from core.audit import AuditTrail
from core.db.models import InferenceResult, OutboxEvent, Study
from core.secrets import load_secrets
from dicom_gateway.dcmtk import storescu
from imaging.nifti import load_nifti, save_nifti
from imaging.seg import read_segmentation
from imaging.sr import read_findings
from imaging.synthetic import generate_study
from imaging.volume import load_series
from tests.conftest import Stack
from tests.dicom_gateway.dicom_files import synthetic_ct
from tests.fixture_models import register_fixture_models
from tests.helpers import wait_until
from tests.serving.test_notify import Receiver

pytestmark = pytest.mark.integration

SENDER = "TRIAGE1"


@pytest.fixture(scope="module")
def pacs(stack: Stack) -> Stack:
    """The session stack with a registered sender."""
    stack.add_sender(SENDER, "Triage Hospital")
    return stack


def push(
    stack: Stack, directory: Path, files: dict[str, bytes] | list[Any], *, sender: str = SENDER
) -> None:
    """Store ``files`` (datasets or bytes) through the gateway with storescu as ``sender``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, dataset in enumerate(files):
        path = directory / f"{number:04d}.dcm"
        if isinstance(dataset, bytes):
            path.write_bytes(dataset)
        else:
            dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    report = storescu(
        paths,
        host="127.0.0.1",
        port=stack.settings.gateway_port,
        calling_ae=sender,
        called_ae=stack.settings.gateway_ae_title,
    )
    assert len(report.stored) == len(paths), report.output[-2000:]


def poll(condition: Any, *, timeout_s: float, what: str, interval_s: float = 1.0) -> Any:
    """``condition()``'s first truthy value within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"no {what} within {timeout_s:g} s")
        time.sleep(interval_s)


def results(stack: Stack, uid: str, timeout_s: float = 240) -> list[dict[str, Any]]:
    """The study's results once every row is final."""
    with stack.client("radiologist") as client:

        def final() -> list[dict[str, Any]] | None:
            answer = client.get(f"/api/studies/{uid}/results")
            if answer.status_code == 404:
                return None
            rows: list[dict[str, Any]] = answer.json()["results"]
            return rows if rows and all(r["status"] != "pending" for r in rows) else None

        return poll(final, timeout_s=timeout_s, what=f"triage of {uid}")


def orthanc_series(stack: Stack, uid: str) -> dict[str, list[pydicom.Dataset]]:
    """Modality → first instance of each series of the study in Orthanc."""
    found: dict[str, list[pydicom.Dataset]] = {}
    with stack.orthanc() as orthanc:
        ids = orthanc.post("/tools/lookup", content=uid).json()
        study = next(i["ID"] for i in ids if i["Type"] == "Study")
        for series_id in orthanc.get(f"/studies/{study}").json()["Series"]:
            instance = orthanc.get(f"/series/{series_id}").json()["Instances"][0]
            data = orthanc.get(f"/instances/{instance}/file").content
            dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
            found.setdefault(str(dataset.Modality), []).append(dataset)
    return found


def test_head_ct_and_radiograph_are_triaged_into_orthanc_and_the_worklist(
    pacs: Stack, tmp_path: Path
) -> None:
    head = generate_study("head-ct", 0, seed=41, positive=True)
    chest = generate_study("chest-xr", 1, seed=41, positive=False)
    push(pacs, tmp_path / "head", head.datasets)
    push(pacs, tmp_path / "chest", chest.datasets)

    head_rows = results(pacs, head.study_instance_uid)
    chest_rows = results(pacs, chest.study_instance_uid)

    (head_result,) = head_rows
    assert head_result["model_name"] == "head-ct-haemorrhage"
    assert head_result["status"] == "succeeded" and head_result["critical"] is True
    assert 0.0 <= head_result["score"] <= 1.0
    assert head_result["findings"]["lesion_volume_ml"] > 0
    for stage in ("fetch_s", "preprocess_s", "inference_s", "postprocess_s", "writeback_s"):
        assert head_result["timings"][stage] >= 0
    assert head_result["timings"]["time_to_triage_s"] > 0
    (chest_result,) = chest_rows
    assert chest_result["model_name"] == "chest-xr-finding"
    assert chest_result["status"] == "succeeded" and chest_result["critical"] is False

    series = orthanc_series(pacs, head.study_instance_uid)
    (seg,) = series["SEG"]
    (sr,) = series["SR"]
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == head.study_instance_uid
    assert str(seg.SOPInstanceUID) == head_result["findings"]["seg_sop_instance_uid"]
    assert sr.VerificationFlag == "UNVERIFIED"
    segmentation = hd.seg.Segmentation.from_dataset(seg)
    assert segmentation.number_of_segments == 1
    (referenced,) = segmentation.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == head.series_instance_uid
    source = load_series(head.datasets)
    on_source = read_segmentation(seg, source)
    assert on_source.shape == (1, *source.shape)  # every frame lies on a source slice
    assert seg.Rows == source.shape[1] and seg.Columns == source.shape[2]
    position = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    slice_positions = {
        tuple(round(float(v), 3) for v in ds.ImagePositionPatient) for ds in head.datasets
    }
    assert tuple(round(float(v), 3) for v in position.ImagePositionPatient) in slice_positions
    reported = read_findings(sr)
    assert any(f.get("algorithm_name") == "head-ct-haemorrhage" for f in reported), reported
    assert "SEG" not in orthanc_series(pacs, chest.study_instance_uid)

    with pacs.client("radiologist") as client:
        items = client.get("/api/worklist", params={"limit": 500}).json()
    items = items.get("items", items) if isinstance(items, dict) else items
    order = [item["study_instance_uid"] for item in items]
    assert order.index(head.study_instance_uid) < order.index(chest.study_instance_uid)
    head_item = next(i for i in items if i["study_instance_uid"] == head.study_instance_uid)
    assert head_item["priority_class"] == "critical" and head_item["ai_status"] == "succeeded"
    # the score is shown with its model's threshold and whether it is a calibrated probability
    assert head_item["ai_threshold"] == pytest.approx(head_result["findings"]["threshold"])
    assert head_item["ai_calibrated"] is head_result["findings"]["calibrated"]


def test_poison_studies_fail_with_the_reason_and_the_next_study_succeeds(
    pacs: Stack, tmp_path: Path
) -> None:
    uid = pydicom.uid.generate_uid()
    series = pydicom.uid.generate_uid()
    push(pacs, tmp_path / "odd", [synthetic_ct(uid, series, instance=n) for n in (1, 2, 3)])
    gap = generate_study("head-ct", 6, seed=41, positive=True)
    push(pacs, tmp_path / "gap", gap.datasets[:10] + gap.datasets[11:])  # a slice is missing
    head = generate_study("head-ct", 2, seed=41, positive=False)
    push(pacs, tmp_path / "head", head.datasets)

    (failed,) = results(pacs, uid)
    assert failed["status"] == "failed"
    assert failed["error"].startswith("unsupported:"), failed["error"]
    (inconsistent,) = results(pacs, gap.study_instance_uid)
    assert inconsistent["status"] == "failed"
    assert inconsistent["error"].startswith("inconsistent_series:"), inconsistent["error"]
    assert results(pacs, head.study_instance_uid)[0]["status"] == "succeeded"
    with pacs.client("radiologist") as client:
        items = client.get("/api/worklist", params={"limit": 500}).json()
    items = items.get("items", items) if isinstance(items, dict) else items
    odd = next(i for i in items if i["study_instance_uid"] == uid)
    assert odd["ai_status"] == "failed"


def test_a_study_sent_twice_gets_one_result_per_model_version_unless_forced(
    pacs: Stack, tmp_path: Path
) -> None:
    head = generate_study("head-ct", 3, seed=41, positive=True)
    push(pacs, tmp_path / "first", head.datasets)
    (first,) = results(pacs, head.study_instance_uid)
    db = pacs.database()

    def events() -> list[tuple[str, bool]]:
        with db.session() as session:
            rows = session.scalars(
                select(OutboxEvent)
                .where(OutboxEvent.key == head.study_instance_uid)
                .order_by(OutboxEvent.id)
            )
            return [(row.topic, row.processed_at is not None) for row in rows]

    push(pacs, tmp_path / "again", head.datasets)  # the gateway announces nothing new
    time.sleep(3 * pacs.settings.gateway_stable_seconds)
    with db.session() as session:  # and a redelivered event is skipped by triage
        ready = session.scalars(
            select(OutboxEvent).where(OutboxEvent.key == head.study_instance_uid)
        ).one()
        session.add(OutboxEvent(topic="study.updated", key=ready.key, payload=ready.payload))
    poll(
        lambda: events() == [("study.ready", True), ("study.updated", True)],
        timeout_s=120,
        what="the redelivered event, processed",
    )
    with db.session() as session:
        study_id = session.scalars(
            select(Study.id).where(Study.study_instance_uid == head.study_instance_uid)
        ).one()
        rows = session.scalar(
            select(func.count())
            .select_from(InferenceResult)
            .where(InferenceResult.study_id == study_id)
        )
    assert rows == 1
    assert results(pacs, head.study_instance_uid)[0]["created_at"] == first["created_at"]

    with pacs.client("admin") as client:
        answer = client.post(f"/api/studies/{head.study_instance_uid}/reprocess")
    assert answer.status_code == 202, answer.text
    poll(
        lambda: results(pacs, head.study_instance_uid)[0]["created_at"] != first["created_at"],
        timeout_s=120,
        what="the forced reprocessing",
    )
    db.dispose()


@pytest.mark.slow
def test_studies_arriving_while_serving_is_down_wait_for_it_and_critical_ones_notify(
    make_stack: Any, tmp_path: Path
) -> None:
    key = "webhook-signing-key-for-this-test-0123456789"
    receiver = Receiver(key=key.encode()).start()
    own = make_stack(
        before_up=lambda s: register_fixture_models(s.settings.paths.models_dir),
        notify_webhook_url=receiver.url,
        notify_signing_key=key,
    )
    own.cli("senders", "add", SENDER, "--hospital", "Downtime Hospital", "--host", "127.0.0.1")
    os.kill(own.pid("api"), signal.SIGTERM)
    poll(lambda: not _answers(own.settings.api_url), timeout_s=60, what="serving to stop")

    head = generate_study("head-ct", 4, seed=41, positive=True)
    push(own, tmp_path / "head", head.datasets)
    db = own.database()

    def ready_event() -> OutboxEvent | None:
        with db.session() as session:
            event = session.scalars(
                select(OutboxEvent).where(OutboxEvent.key == head.study_instance_uid)
            ).first()
            if event is not None:
                session.expunge(event)
            return event

    event = poll(ready_event, timeout_s=60, what="study.ready")
    # nobody consumes it: serving is down
    assert not wait_until(lambda: ready_event().processed_at is not None, timeout_s=2)

    own.cli("up")
    (result,) = results(own, head.study_instance_uid)
    assert result["status"] == "succeeded"
    assert ready_event().processed_at is not None
    assert event.id == ready_event().id
    db.dispose()
    # the head CT is critical (the fixture flags every one): a signed webhook went out
    delivery = poll(lambda: receiver.accepted, timeout_s=60, what="the critical-finding webhook")
    assert delivery[0].body["study_instance_uid"] == head.study_instance_uid
    assert receiver.bad_signatures == 0
    receiver.stop()


@pytest.mark.slow
def test_a_study_stored_through_the_pynetdicom_edge_is_triaged_onto_the_worklist(
    make_stack: Any, tmp_path: Path
) -> None:
    """``radcloud up`` of the whole radcloud with ``RADCLOUD_GATEWAY_EDGE=pynetdicom`` (the
    session's ``stack`` has the default, Orthanc): storescu to the gateway's own DICOM service,
    its spool and forwarder into Orthanc, its completeness tracker for ``study.ready``, Ray
    Serve triaging: the head CT's SEG and SR are in Orthanc and it is a critical item on the
    worklist, its instances counted."""
    own = make_stack(
        before_up=lambda s: register_fixture_models(s.settings.paths.models_dir),
        gateway_edge="pynetdicom",
    )
    own.add_sender(SENDER, "Edge Triage Hospital")
    head = generate_study("head-ct", 6, seed=43, positive=True)
    push(own, tmp_path / "head", head.datasets)
    (result,) = results(own, head.study_instance_uid)
    assert result["status"] == "succeeded" and result["critical"] is True
    series = orthanc_series(own, head.study_instance_uid)
    (seg,) = series["SEG"]
    assert str(seg.SOPInstanceUID) == result["findings"]["seg_sop_instance_uid"]
    assert len(series["SR"]) == 1
    with own.client("radiologist") as client:
        items = client.get("/api/worklist", params={"limit": 500}).json()["items"]
    [item] = [i for i in items if i["study_instance_uid"] == head.study_instance_uid]
    assert item["hospital"] == "Edge Triage Hospital"
    assert (item["priority_class"], item["ai_status"]) == ("critical", "succeeded")
    with own.database().session() as session:
        [event] = session.scalars(
            select(OutboxEvent).where(OutboxEvent.key == head.study_instance_uid)
        ).all()
        assert event.payload["instance_count"] == len(head.datasets)


def _answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=2)
    except httpx.HTTPError:
        return False
    return True


def test_ad_hoc_inference_on_dicom_and_nifti_uploads(pacs: Stack, tmp_path: Path) -> None:
    head = generate_study("head-ct", 5, seed=41, positive=True)
    files = []
    for number, dataset in enumerate(head.datasets):
        buffer = pydicom.filebase.DicomBytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        files.append(("file", (f"{number}.dcm", buffer.getvalue(), "application/dicom")))
    volume = load_series(head.datasets)
    nifti = save_nifti(volume, tmp_path / "head.nii.gz").read_bytes()

    with pacs.client("ml_engineer") as client:
        from_dicom = client.post("/api/infer/head-ct-haemorrhage", files=files)
        from_nifti = client.post(
            "/api/infer/head-ct-haemorrhage", files=[("file", ("head.nii.gz", nifti))]
        )
        garbage = client.post("/api/infer/head-ct-haemorrhage", files=[("file", ("x.dcm", b"no"))])
        unknown = client.post("/api/infer/nope", files=[("file", ("head.nii.gz", nifti))])
    with pacs.client("pacs") as client:
        refused = client.post("/api/infer/head-ct-haemorrhage", files=files[:1])

    assert from_dicom.status_code == 200, from_dicom.text
    answer = from_dicom.json()
    assert answer["critical"] is True and answer["note"].startswith("AI result")
    mask_file = tmp_path / "mask.nii.gz"
    mask_file.write_bytes(base64.b64decode(answer["mask_nifti_gz_base64"]))
    mask = load_nifti(mask_file, label_map=True)
    assert mask.shape == volume.shape
    np.testing.assert_allclose(mask.affine_lps(), volume.affine_lps(), atol=1e-4)
    assert from_nifti.status_code == 200, from_nifti.text
    assert abs(from_nifti.json()["score"] - answer["score"]) < 1e-3
    assert garbage.status_code == 422 and garbage.json()["error"] == "unreadable_image"
    assert unknown.status_code == 404
    assert refused.status_code == 403

    with pacs.client("admin") as client:
        exposition = client.get("/metrics").text
        inferred = client.get(
            "/api/audit", params={"event_code": "110100", "user_name": "test-ml_engineer"}
        ).json()
    assert 'radcloud_model_requests_total{model="head-ct-haemorrhage"' in exposition
    # each inference names its patient by the keyed hash (a NIfTI names none), never the ID
    by_hash = AuditTrail.from_secrets(pacs.database(), load_secrets(pacs.settings))
    patient_id = str(head.datasets[0].PatientID)
    assert [record["patient_id_hash"] for record in inferred[:2]] == [
        None,
        by_hash.patient_id_hash(patient_id),
    ]
    assert patient_id not in str(inferred)
