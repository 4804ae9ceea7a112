"""STOW-RS with the Orthanc edge (``RADCLOUD_GATEWAY_EDGE=orthanc``) on a real radcloud started by
``radcloud up``: the API hands the parts to the gateway in batches, the gateway checks each one
and stores the accepted ones with Orthanc's own STOW-RS (no spool), and the answer merges its
refusals with Orthanc's (``dicom_gateway.stow.ArchiveStow``).

Checked as a PACS would notice: an instance is answered stored only once Orthanc has it (read
back at once, its preamble zeroed); refusals carry their Failure Reason and are quarantined
with their bytes; another hospital's or patient's study is 0xC409; many parts span several
batches in order; a deflate bomb is 0xA700, never inflated; a stored study gives its one
``study.ready``; Orthanc down is 503 with Retry-After and nothing reported stored.
"""

from __future__ import annotations

import io
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from core.archive import ArchiveNotFoundError
from core.config import GatewayEdge
from core.ingest import BATCH_MAX_PARTS
from dicom_gateway.quarantine import Quarantine
from tests.conftest import STOW_HOSPITAL, Stack, settings_from_env, stack_env
from tests.dicom_gateway.dicom_files import synthetic_ct
from tests.dicom_gateway.test_bombs import deflate_bomb
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

BOUNDARY = "radcloud-edge-stow-7d1e"
MULTIPART = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
CANNOT_UNDERSTAND, DOES_NOT_MATCH_SOP_CLASS, STUDY_MISMATCH = 0xC000, 0xA900, 0xC409
PROCESSING_FAILURE = 0x0110
OTHER_HOSPITAL = "Edge Other Hospital"
MAX_INSTANCE_MIB = 64
OUT_OF_RESOURCES = 0xA700


@pytest.fixture(scope="module")
def edge_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A radcloud whose DICOM edge is Orthanc (its STOW-RS goes straight into Orthanc)."""
    env = stack_env(
        tmp_path_factory.mktemp("radcloud-edge-stow"),
        gateway_edge="orthanc",
        gateway_max_instance_mib=MAX_INSTANCE_MIB,
    )
    running = Stack(env, settings_from_env(env))
    assert running.settings.gateway_edge is GatewayEdge.ORTHANC
    try:
        running.cli("up")
        yield running
    finally:
        running.cli("down", check=False)


def _multipart(*parts: bytes) -> bytes:
    delimiter = f"--{BOUNDARY}".encode()
    body = b"".join(
        delimiter + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
        for part in parts
    )
    return body + delimiter + b"--\r\n"


def _stow(stack: Stack, *parts: bytes, token: str | None = None, study: str | None = None) -> Any:
    path = f"/dicom-web/studies/{study}" if study else "/dicom-web/studies"
    headers = {"Content-Type": MULTIPART}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
        client = httpx.Client(base_url=stack.settings.api_url, timeout=60)
    else:
        client = stack.client("pacs")
    with client:
        return client.post(path, content=_multipart(*parts), headers=headers)


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    value: list[Any] = item.get(tag, {}).get("Value", [])
    return value


def _uids(data: bytes) -> tuple[str, str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def _in_orthanc(stack: Stack, data: bytes) -> bytes | None:
    """The file Orthanc holds for ``data``'s instance, ``None`` if it has none."""
    instance = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
    with stack.archive() as archive:
        try:
            [found] = archive.search_for_instances({"SOPInstanceUID": str(instance)})
        except ValueError:
            return None
        try:
            return archive.retrieve_instance(found.archive_id)
        except ArchiveNotFoundError:
            return None


def _quarantined(stack: Stack) -> Quarantine:
    return Quarantine(stack.settings.paths.quarantine_dir)


def test_stored_means_in_orthanc_with_the_preamble_zeroed(edge_stack: Stack) -> None:
    study = generate_uid()
    instances = [
        synthetic_ct(study, instance=number, preamble=b"MZ" + b"\xab" * 126)
        for number in range(1, 4)
    ]
    answer = _stow(edge_stack, *instances)
    assert answer.status_code == 200, answer.text
    stored = _values(answer.json(), "00081199")
    assert [_values(item, "00081155")[0] for item in stored] == [_uids(d)[2] for d in instances]
    assert "00081198" not in answer.json()
    for data in instances:  # no waiting: answered stored means Orthanc has it
        held = _in_orthanc(edge_stack, data)
        assert held is not None
        assert held[:128] == bytes(128)  # CVE-2019-11687: Orthanc keeps what STOW gives it
        assert held[128:] == data[128:]
    with edge_stack.client("radiologist") as reader:
        assert reader.get(f"/dicom-web/studies/{study}/series").status_code == 200  # owned


def test_a_stored_study_gives_one_ready_event_with_every_instance(edge_stack: Stack) -> None:
    study, series = generate_uid(), generate_uid()
    instances = [synthetic_ct(study, series, instance=number) for number in range(1, 21)]
    assert _stow(edge_stack, *instances).status_code == 200
    assert wait_until(lambda: bool(edge_stack.ready_events(study)), timeout_s=60, interval_s=0.5)
    [event] = edge_stack.ready_events(study)
    assert event.payload["hospital"] == STOW_HOSPITAL
    assert event.payload["series"][0]["instance_count"] == len(instances)


def test_refusals_carry_their_reason_and_are_quarantined(edge_stack: Stack) -> None:
    good = synthetic_ct()
    garbage = f"not DICOM at all {uuid.uuid4()}".encode()
    no_study = synthetic_ct(drop=("StudyInstanceUID",))
    unsafe = synthetic_ct(generate_uid()[:-3] + "abc")
    short_pixels = synthetic_ct(size=16)[:-64]  # cut inside the pixel data
    answer = _stow(edge_stack, good, garbage, no_study, unsafe, short_pixels)
    assert answer.status_code == 202, answer.text
    [stored] = _values(answer.json(), "00081199")
    assert _values(stored, "00081155") == [_uids(good)[2]]
    failed = _values(answer.json(), "00081198")
    reasons = [_values(item, "00081197")[0] for item in failed]
    assert reasons == [
        CANNOT_UNDERSTAND,
        DOES_NOT_MATCH_SOP_CLASS,
        DOES_NOT_MATCH_SOP_CLASS,
        CANNOT_UNDERSTAND,
    ]
    assert "DICM" in _values(failed[0], "00000902")[0]
    assert "StudyInstanceUID" in _values(failed[1], "00000902")[0]
    assert "truncated" in _values(failed[3], "00000902")[0]
    quarantine = _quarantined(edge_stack)
    kept = {quarantine.data(entry.entry_id) for entry in quarantine.list()}
    assert {garbage, no_study, unsafe, short_pixels} <= kept
    for refused in (no_study, short_pixels):
        assert _in_orthanc(edge_stack, refused) is None
    assert _in_orthanc(edge_stack, good) is not None


def test_a_deflate_bomb_is_refused_without_being_stored(edge_stack: Stack) -> None:
    study = generate_uid()
    answer = _stow(edge_stack, deflate_bomb(study, pixel_mib=MAX_INSTANCE_MIB + 16))
    assert answer.status_code == 409, answer.text
    [failed] = _values(answer.json(), "00081198")
    assert _values(failed, "00081197") == [OUT_OF_RESOURCES]
    with edge_stack.archive() as archive:
        assert archive.search_for_studies({"StudyInstanceUID": study}) == []


def test_another_hospitals_study_or_patient_is_refused(edge_stack: Stack) -> None:
    edge_stack.cli(
        "users", "add", "edge-other-pacs", "--role", "pacs", "--hospital", OTHER_HOSPITAL
    )
    other_token = edge_stack.cli("token", "edge-other-pacs").stdout.strip()
    study = generate_uid()
    first = synthetic_ct(study, instance=1)
    assert _stow(edge_stack, first).status_code == 200
    theirs = synthetic_ct(study, instance=2)
    misfiled = synthetic_ct(study, instance=3, patient_id="SOMEONE-ELSE")
    by_other = _stow(edge_stack, theirs, token=other_token)
    wrong_patient = _stow(edge_stack, misfiled)
    for answer in (by_other, wrong_patient):
        assert answer.status_code == 409, answer.text
        [failed] = _values(answer.json(), "00081198")
        assert _values(failed, "00081197") == [STUDY_MISMATCH]
    quarantine = _quarantined(edge_stack)
    kept = {quarantine.data(entry.entry_id) for entry in quarantine.list()}
    assert {theirs, misfiled} <= kept
    assert _in_orthanc(edge_stack, theirs) is None
    assert _in_orthanc(edge_stack, misfiled) is None


def test_an_instance_of_another_study_than_the_url_names(edge_stack: Stack) -> None:
    target, other = synthetic_ct(), synthetic_ct()
    answer = _stow(edge_stack, other, study=_uids(target)[0])
    assert answer.status_code == 409
    [failed] = _values(answer.json(), "00081198")
    assert _values(failed, "00081197") == [STUDY_MISMATCH]
    assert _in_orthanc(edge_stack, other) is None
    assert _stow(edge_stack, target, study=_uids(target)[0]).status_code == 200


def test_many_parts_span_batches_in_order(edge_stack: Stack) -> None:
    study, series = generate_uid(), generate_uid()
    instances = [
        synthetic_ct(study, series, instance=number) for number in range(1, BATCH_MAX_PARTS * 2 + 6)
    ]
    instances[BATCH_MAX_PARTS + 1] = b"\x00" * 300  # a refusal inside the second batch
    answer = _stow(edge_stack, *instances)
    assert answer.status_code == 202, answer.text
    stored = [_values(item, "00081155")[0] for item in _values(answer.json(), "00081199")]
    expected = [_uids(d)[2] for i, d in enumerate(instances) if i != BATCH_MAX_PARTS + 1]
    assert stored == expected
    with edge_stack.archive() as archive:
        assert len(archive.search_for_instances({"StudyInstanceUID": study})) == len(expected)


def test_the_gateway_counts_and_the_api_audits(edge_stack: Stack) -> None:
    data = synthetic_ct()
    assert _stow(edge_stack, data).status_code == 200
    metrics = httpx.get(f"http://127.0.0.1:{edge_stack.settings.gateway_metrics_port}/metrics")
    assert 'source="stow"' in metrics.text
    with edge_stack.client("admin") as admin:
        params = {"event_code": "110104", "resource_id": _uids(data)[0]}
        [record] = admin.get("/api/audit", params=params).json()
    assert record["detail"]["stored"] == 1
    assert record["detail"]["source"] == "stow"


def test_orthanc_down_is_503_and_nothing_is_reported_stored(edge_stack: Stack) -> None:
    """Last in this module: it kills Orthanc (``radcloud up`` starts it again after)."""
    os.kill(edge_stack.pid("orthanc"), signal.SIGKILL)
    data = synthetic_ct()
    try:
        answer = _stow(edge_stack, data)
        assert answer.status_code == 503, answer.text
        assert int(answer.headers["retry-after"]) > 0
        [failed] = _values(answer.json(), "00081198")
        assert _values(failed, "00081197") == [PROCESSING_FAILURE]
        assert "00081199" not in answer.json()
    finally:
        edge_stack.cli("up")
    assert wait_until(lambda: _stow(edge_stack, data).status_code == 200, timeout_s=60)
    assert _in_orthanc(edge_stack, data) is not None
