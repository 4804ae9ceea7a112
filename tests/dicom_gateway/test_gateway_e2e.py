"""The gateway end to end: dcmtk's storescu → radcloud's DICOM edge → a real Orthanc, once
with each edge (README "The ingest edge"): the pynetdicom gateway process with its spool, and
Orthanc's own DICOM server with radcloud's plugin (the gateway process then follows Orthanc's
change log for study events).

Includes pydicom's bundled test files (malformed ones too) compared with Orthanc taking them
directly, and SIGKILL of Orthanc and of the gateway in the middle of a push. Where the Orthanc
edge answers otherwise by design, each edge's documented answer is asserted.
"""

from __future__ import annotations

import functools
import io
import json
import os
import signal
import subprocess
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pydicom.filereader
import pytest
from pydicom.data import get_testdata_files
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, generate_uid
from sqlalchemy import select

from core.archive import ArchiveId, ImageArchive
from core.config import GatewayEdge
from core.db.models import OutboxEvent
from core.secrets import load_secrets
from dicom_gateway.dcmtk import StoreReport, dcmtk_environment, storescu
from dicom_gateway.quarantine import Quarantine
from radcloud.services import DicomModality, Supervisor, orthanc_component
from tests.conftest import EDGES, Stack, edge_id, settings_from_env, stack_env, stack_with_edge
from tests.dicom_gateway.dicom_files import synthetic_ct
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

SENDER = "MODALITY1"


@pytest.fixture(scope="module", params=EDGES, ids=edge_id)
def gateway(request: pytest.FixtureRequest) -> Stack:
    """The session's stack of each DICOM edge with a registered sender."""
    stack = stack_with_edge(request, request.param)
    stack.add_sender(SENDER, "General Hospital")
    return stack


def send(stack: Stack, files: list[Path], **kwargs: Any) -> StoreReport:
    return storescu(
        files,
        host="127.0.0.1",
        port=stack.settings.gateway_port,
        calling_ae=kwargs.pop("calling_ae", SENDER),
        called_ae=stack.settings.gateway_ae_title,
        **kwargs,
    )


def write_study(directory: Path, instances: int, **kwargs: Any) -> tuple[str, list[Path]]:
    directory.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    files = []
    for number in range(1, instances + 1):
        path = directory / f"{study[-12:]}-{number:04d}.dcm"
        path.write_bytes(synthetic_ct(study, series, instance=number, **kwargs))
        files.append(path)
    return study, files


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID)


def in_orthanc(orthanc: ImageArchive, uid: str) -> ArchiveId | None:
    found = orthanc.search_for_instances({"SOPInstanceUID": uid})
    return found[0].archive_id if found else None


def _has(orthanc: ImageArchive, uid: str) -> bool:
    return in_orthanc(orthanc, uid) is not None


def _stored(orthanc: ImageArchive, uid: str) -> ArchiveId:
    archive_id = in_orthanc(orthanc, uid)
    assert archive_id is not None, uid
    return archive_id


def outbox(stack: Stack, study: str) -> list[OutboxEvent]:
    with stack.database().session() as session:
        return list(
            session.scalars(
                select(OutboxEvent).where(OutboxEvent.key == study).order_by(OutboxEvent.id)
            )
        )


def test_study_sent_with_storescu_reaches_orthanc_and_is_announced_once(
    gateway: Stack, tmp_path: Path
) -> None:
    study, files = write_study(tmp_path, 6)
    report = send(gateway, files)
    assert sorted(report.stored) == sorted(files), report.output
    orthanc = gateway.archive()
    try:
        wait_until(lambda: all(in_orthanc(orthanc, sop_uid(f)) for f in files), timeout_s=30)
        stored = orthanc.retrieve_instance(_stored(orthanc, sop_uid(files[0])))
        assert stored[:128] == bytes(128)
        assert pydicom.dcmread(io.BytesIO(stored)).PixelData == pydicom.dcmread(files[0]).PixelData
    finally:
        orthanc.close()
    wait_until(lambda: len(outbox(gateway, study)) == 1, timeout_s=30)
    event = outbox(gateway, study)[0]
    assert event.topic == "study.ready"
    assert event.payload["hospital"] == "General Hospital"
    assert event.payload["instance_count"] == 6
    health = gateway.cli(
        "status", "--json", check=False
    ).stdout  # exits 3 on pynetdicom_doors: no API
    assert '"spool"' in health
    metrics = httpx.get(gateway.settings.gateway_health_url.replace("/healthz", "/metrics")).text
    received = [
        line
        for line in metrics.splitlines()
        if line.startswith("radcloud_gateway_instances_received_total")
        and f'sender="{SENDER}"' in line
    ]
    assert received and float(received[0].split()[-1]) >= 6
    assert "radcloud_gateway_forward_seconds_bucket" in metrics
    assert 'radcloud_gateway_study_events_total{topic="study.ready"}' in metrics


def _with_study_uid(data: bytes, uid: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom warns of the invalid UID
        ds.StudyInstanceUID = uid
        buffer = io.BytesIO()
        ds.save_as(buffer)
    return buffer.getvalue()


def _refused_non_conformant(status: str) -> bool:
    return "A900" in status or "DataSetDoesNotMatch" in status


def test_quarantine_commands(gateway: Stack, tmp_path: Path) -> None:
    bad = tmp_path / "unsafe-study-uid.dcm"
    bad.write_bytes(_with_study_uid(synthetic_ct(), "1.2.abc"))
    report = send(gateway, [bad])
    assert _refused_non_conformant(report.statuses[bad]), report.statuses
    listed = [
        json.loads(line) for line in gateway.cli("quarantine", "list", "--json").stdout.splitlines()
    ]
    entry = next(e for e in listed if e["sop_instance_uid"] == sop_uid(bad))
    assert entry["sender_ae_title"] == SENDER
    assert "StudyInstanceUID" in entry["reason"]
    copy = tmp_path / "copy.dcm"
    shown = gateway.cli("quarantine", "show", entry["entry_id"], "--out", str(copy))
    assert json.loads(shown.stdout)["reason"] == entry["reason"]
    kept, sent = pydicom.dcmread(copy), pydicom.dcmread(bad)  # the data set as received
    assert (kept.SOPInstanceUID, kept.PixelData) == (sent.SOPInstanceUID, sent.PixelData)
    refused = gateway.cli("quarantine", "release", entry["entry_id"], check=False)
    assert refused.returncode == 1
    assert "cannot release" in refused.stderr
    gateway.cli("quarantine", "delete", entry["entry_id"])
    assert entry["entry_id"] not in gateway.cli("quarantine", "list").stdout
    missing = gateway.cli("quarantine", "show", entry["entry_id"], check=False)
    assert missing.returncode == 1
    assert "no such entry" in missing.stderr


def test_a_released_instance_of_a_new_study_claims_it_and_announces_it(
    gateway: Stack, tmp_path: Path
) -> None:
    """A study whose only instance was quarantined was never claimed: released by an operator,
    it is claimed for the hospital that sent it, stored, and announced once complete."""
    study, [path] = write_study(tmp_path, 1, size=64)
    ds = pydicom.dcmread(path)
    # pixel data far too short (the Orthanc edge sees the file's size, not the element's):
    # non-conformant, quarantined by both edges
    ds.PixelData = ds.PixelData[:512]
    ds.save_as(path)
    report = send(gateway, [path])
    assert _refused_non_conformant(report.statuses[path]), report.statuses
    listed = gateway.cli("quarantine", "list", "--json").stdout.splitlines()
    [entry] = [e for e in map(json.loads, listed) if e["sop_instance_uid"] == sop_uid(path)]
    assert outbox(gateway, study) == []
    gateway.cli("quarantine", "release", entry["entry_id"])
    assert wait_until(lambda: len(outbox(gateway, study)) == 1, timeout_s=60)
    [event] = outbox(gateway, study)
    assert (event.topic, event.payload["hospital"]) == ("study.ready", "General Hospital")
    assert event.payload["instance_count"] == 1


def test_an_instance_without_a_study_uid_is_refused(gateway: Stack, tmp_path: Path) -> None:
    """The pynetdicom edge refuses it with 0xA900 and quarantines it; Orthanc cannot index it
    and refuses it itself, before the plugin sees it: 0xA700, nothing kept (README "The
    ingest edge")."""
    bad = tmp_path / "no-study-uid.dcm"
    bad.write_bytes(synthetic_ct(drop=("StudyInstanceUID",)))
    kept = {e.entry_id for e in Quarantine(gateway.settings.paths.quarantine_dir).list()}
    report = send(gateway, [bad])
    new = [
        e
        for e in Quarantine(gateway.settings.paths.quarantine_dir).list()
        if e.entry_id not in kept
    ]
    if gateway.edge is GatewayEdge.PYNETDICOM:
        assert _refused_non_conformant(report.statuses[bad]), report.statuses
        assert [e.sop_instance_uid for e in new] == [sop_uid(bad)]
    else:
        assert "A700" in report.statuses[bad] or "OutOfResources" in report.statuses[bad]
        assert new == []
    with gateway.archive() as orthanc:
        assert in_orthanc(orthanc, sop_uid(bad)) is None


def test_unknown_calling_ae_is_rejected(gateway: Stack, tmp_path: Path) -> None:
    _, files = write_study(tmp_path, 1)
    report = send(gateway, files, calling_ae="STRANGER")
    assert report.stored == []
    assert "Association Rejected" in report.output
    assert "Calling AE Title Not Recognized" in report.output or "0x03" in report.output


@pytest.fixture(scope="module")
def direct_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A separate plain Orthanc that accepts storescu directly (the comparison baseline)."""
    env = stack_env(tmp_path_factory.mktemp("direct"))
    settings = settings_from_env(env)
    secrets = load_secrets(settings)
    modality = DicomModality("DIRECT", "127.0.0.1", 104)
    direct = orthanc_component(settings, secrets, {"direct": modality}, as_edge=False)
    supervisor = Supervisor(settings, [direct])
    supervisor.up()
    yield Stack(env, settings)
    supervisor.down()


def corpus() -> list[Path]:
    return sorted(Path(p) for p in get_testdata_files() if Path(p).is_file())


def test_pydicom_corpus_gateway_accepts_exactly_what_orthanc_accepts(
    gateway: Stack, direct_orthanc: Stack
) -> None:
    files = corpus()
    assert len(files) > 60
    direct = storescu(
        files,
        host="127.0.0.1",
        port=direct_orthanc.settings.orthanc_dicom_port,
        calling_ae="DIRECT",
        called_ae=direct_orthanc.settings.orthanc_ae_title,
        as_encoded=True,
    )
    quarantined_before = len(Quarantine(gateway.settings.paths.quarantine_dir).list())
    through = send(gateway, files, as_encoded=True)
    assert set(direct.statuses) == set(through.statuses), "storescu sent different files"
    accepted = set(direct.stored)
    assert len(accepted) > 40
    assert set(through.stored) == accepted, {
        "refused by the gateway only": {
            p.name: through.statuses[p] for p in accepted - set(through.stored)
        },
        "accepted by the gateway only": sorted(p.name for p in set(through.stored) - accepted),
    }
    assert set(direct.refused) == set(through.refused)
    quarantine = Quarantine(gateway.settings.paths.quarantine_dir).list()
    if gateway.edge is GatewayEdge.PYNETDICOM:  # refused by the gateway's own checks: kept
        non_conformant = [p for p, status in through.refused.items() if "A700" not in status]
        assert len(quarantine) - quarantined_before == len(non_conformant)
    else:  # Orthanc refuses them itself, before the plugin sees them, as Orthanc-direct does
        assert through.refused == direct.refused
        assert len(quarantine) == quarantined_before

    # pydicom's corpus reuses some SOP Instance UIDs for different files; Orthanc keeps the first
    # to arrive, and the forwarder's workers need not keep arrival order: compare those by UID.
    uids = [sop_uid(path) for path in accepted]
    shared = {uid for uid in uids if uids.count(uid) > 1}
    theirs, ours = direct_orthanc.archive(), gateway.archive()
    compressed = 0
    try:
        for path in sorted(accepted):
            uid = sop_uid(path)
            wait_until(functools.partial(_has, ours, uid), timeout_s=60)
            if uid in shared:
                continue
            mine = pydicom.dcmread(io.BytesIO(ours.retrieve_instance(_stored(ours, uid))))
            baseline = pydicom.dcmread(io.BytesIO(theirs.retrieve_instance(_stored(theirs, uid))))
            assert mine.SOPInstanceUID == baseline.SOPInstanceUID == uid
            assert mine.get("PixelData") == baseline.get("PixelData"), path.name
            syntax = _transfer_syntax(path)
            if (
                syntax is not None and syntax.is_compressed
            ):  # travelled as it was encoded, nothing transcoded
                assert mine.file_meta.TransferSyntaxUID == syntax, path.name
                compressed += 1
    finally:
        theirs.close()
        ours.close()
    assert compressed >= 10, "compressed files should have travelled as they are"
    echo = subprocess.run(
        [
            "echoscu",
            "-aet",
            SENDER,
            "-aec",
            gateway.settings.gateway_ae_title,
            "127.0.0.1",
            str(gateway.settings.gateway_port),
        ],
        env=dcmtk_environment(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert echo.returncode == 0, echo.stderr


def _transfer_syntax(path: Path) -> UID | None:
    try:
        return UID(pydicom.filereader.read_file_meta_info(path).TransferSyntaxUID)
    except (InvalidDicomError, AttributeError):
        return None  # a dataset without file meta: storescu sent it uncompressed


def _push_and_kill(
    stack: Stack, files: list[Path], victim: str, after: Callable[[], bool]
) -> StoreReport:
    """Send ``files``; once ``after()`` holds, SIGKILL the component ``victim``."""
    killed = threading.Event()

    def killer() -> None:
        wait_until(after, timeout_s=120, interval_s=0.05)
        os.kill(stack.pid(victim), signal.SIGKILL)
        killed.set()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    report = send(stack, files)
    thread.join(130)
    assert killed.is_set(), f"{victim} was not killed during the push"
    return report


def _all_arrive(stack: Stack, files: list[Path]) -> None:
    orthanc = stack.archive()
    try:
        uids = [sop_uid(path) for path in files]
        wait_until(
            lambda: all(in_orthanc(orthanc, uid) for uid in uids), timeout_s=180, interval_s=0.5
        )
    finally:
        orthanc.close()


@pytest.mark.slow
@pytest.mark.parametrize("edge", EDGES, ids=edge_id)
def test_orthanc_killed_mid_push_loses_no_acknowledged_instance(
    make_stack: Callable[..., Stack], tmp_path: Path, edge: GatewayEdge
) -> None:
    """The pynetdicom edge keeps accepting into its spool while Orthanc is down and drains it
    when Orthanc is back; the Orthanc edge is Orthanc, so the push stops (the sender's queue
    retries: README "The ingest edge"). On both, every acknowledged instance is in Orthanc
    after its restart."""
    stack = make_stack(doors_only=True, gateway_edge=edge)
    stack.add_sender(SENDER, "General Hospital")
    _, files = write_study(tmp_path, 300)
    spool = stack.settings.paths.spool_dir
    orthanc_count = stack.archive()

    def some_forwarded() -> bool:
        return orthanc_count.get_statistics().instances >= 40

    try:
        report = _push_and_kill(stack, files, "orthanc", some_forwarded)
    finally:
        orthanc_count.close()
    if edge is GatewayEdge.PYNETDICOM:
        assert len(report.stored) == len(files), report.failed  # the gateway kept accepting
        assert any(spool.iterdir()), "nothing waited in the spool while Orthanc was down"
    else:
        assert 0 < len(report.stored) < len(files), report.output[-2000:]
    stack.up()  # restarts Orthanc; the pynetdicom edge's spool drains by itself
    _all_arrive(stack, report.stored)


@pytest.mark.slow
@pytest.mark.parametrize("edge", EDGES, ids=edge_id)
def test_gateway_killed_mid_push_loses_no_acknowledged_instance(
    make_stack: Callable[..., Stack], tmp_path: Path, edge: GatewayEdge
) -> None:
    """With the pynetdicom edge the kill interrupts the push; the Orthanc edge does not need
    the gateway process to store, so the push completes. On both, after the restart the study
    is announced once, counting every acknowledged instance."""
    stack = make_stack(doors_only=True, gateway_edge=edge)
    stack.add_sender(SENDER, "General Hospital")
    study, files = write_study(tmp_path, 300)
    spool = stack.settings.paths.spool_dir

    def some_received() -> bool:
        return sum(1 for _ in spool.iterdir()) >= 20 or _orthanc_has_some(stack)

    report = _push_and_kill(stack, files, "gateway", some_received)
    if edge is GatewayEdge.PYNETDICOM:
        assert 0 < len(report.stored) < len(files), "the kill should interrupt the push"
    else:
        assert len(report.stored) == len(files), report.failed
    stack.up()  # restarts the gateway, which forwards what it had acknowledged
    _all_arrive(stack, report.stored)
    # the completeness state survived the kill: the study is announced once, counting all
    wait_until(lambda: len(outbox(stack, study)) == 1, timeout_s=60)
    assert outbox(stack, study)[0].payload["instance_count"] >= len(report.stored)


@pytest.mark.slow
@pytest.mark.parametrize("edge", EDGES, ids=edge_id)
def test_gateway_killed_between_storing_and_the_event_announces_once_after_restart(
    make_stack: Callable[..., Stack], tmp_path: Path, edge: GatewayEdge
) -> None:
    stack = make_stack(doors_only=True, gateway_edge=edge, gateway_stable_seconds=8)
    stack.add_sender(SENDER, "General Hospital")
    study, files = write_study(tmp_path, 5)
    assert sorted(send(stack, files).stored) == sorted(files)
    _all_arrive(stack, files)  # in Orthanc and in its change feed; the study not yet quiet
    assert outbox(stack, study) == []
    os.kill(stack.pid("gateway"), signal.SIGKILL)
    stack.up()  # the tracker reads on from its committed position
    assert wait_until(lambda: len(outbox(stack, study)) == 1, timeout_s=60)
    assert not wait_until(lambda: len(outbox(stack, study)) > 1, timeout_s=12)
    [event] = outbox(stack, study)
    assert (event.topic, event.payload["instance_count"]) == ("study.ready", 5)


def _orthanc_has_some(stack: Stack) -> bool:
    orthanc = stack.archive()
    try:
        return orthanc.get_statistics().instances >= 20
    finally:
        orthanc.close()
