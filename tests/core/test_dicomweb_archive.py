"""The DICOMweb archive (the seam's second implementation) against a real Orthanc with its
DICOMweb plugin and basic authentication: STOW-RS, QIDO-RS with filters and paging, WADO-RS,
streaming (blocking, and the event loop's relay), and the error contract (stopped node, silent
node, wrong password, unknown study)."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import socket
import threading
import time
import tracemalloc
import zipfile
from collections.abc import Iterator
from dataclasses import replace

import pydicom
import pytest
from pydicom.uid import generate_uid

from core.archive import (
    DICOM_PARTS,
    ArchiveError,
    ArchiveId,
    ArchiveNotFoundError,
    ArchiveQueryTooBroadError,
    ArchiveRejectedError,
    ArchiveTimeoutError,
    ArchiveUnavailableError,
    ArchiveUnsupportedError,
    DicomwebArchive,
    HttpEndpoint,
    NodeStatus,
    RemoteNode,
    ResourceLevel,
    StoredInstance,
    dicomweb_archive,
    dicomweb_client,
    local_endpoint,
    node_status,
    open_dicomweb_stream,
    open_local_dicomweb,
    open_node_archive,
    open_relay,
)
from core.archive.dicomweb_stream import CHUNK_BYTES
from core.config import Settings, load_settings
from core.secrets import Secrets, load_secrets
from radcloud.services import Supervisor, orthanc_component
from tests.dicom_gateway.dicom_files import synthetic_ct
from tests.helpers import free_port, free_ports

pytestmark = pytest.mark.integration

NOT_DICOM = bytes(128) + b"DICM" + b"\x02\x00" * 50


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Secrets]]:
    """A plain Orthanc with its DICOMweb plugin and basic auth, on free ports."""
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc is not installed: run `make install` (apt-get install orthanc)")
    http, dicom, api, gateway = free_ports(4)
    settings = load_settings(
        home=tmp_path_factory.mktemp("dicomweb-home"),
        orthanc_http_port=http,
        orthanc_dicom_port=dicom,
        api_port=api,
        gateway_port=gateway,
        archive_max_find_results=60,
    )
    secrets = load_secrets(settings)
    supervisor = Supervisor(settings, [orthanc_component(settings, secrets, as_edge=False)])
    supervisor.up()
    try:
        yield settings, secrets
    finally:
        supervisor.down()


@pytest.fixture
def archive(orthanc: tuple[Settings, Secrets]) -> Iterator[DicomwebArchive]:
    with open_local_dicomweb(*orthanc) as opened:
        yield opened


def _series(count: int, size: int = 16, **attributes: str) -> tuple[str, str, list[bytes]]:
    study, series = generate_uid(), generate_uid()
    files = [synthetic_ct(study, series, instance=n, size=size) for n in range(1, count + 1)]
    return study, series, [_with(data, **attributes) for data in files]


def _with(data: bytes, **attributes: str) -> bytes:
    if not attributes:
        return data
    dataset = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def test_store_search_and_retrieve_a_series(archive: DicomwebArchive) -> None:
    study_uid, series_uid, files = _series(3)
    receipts = archive.store_instances(files)  # one STOW-RS request
    assert all(isinstance(r, StoredInstance) for r in receipts), receipts
    stored = [r for r in receipts if isinstance(r, StoredInstance)]
    assert stored[0].study_archive_id == f"studies/{study_uid}"
    assert stored[0].series_archive_id == f"studies/{study_uid}/series/{series_uid}"
    assert stored[1].archive_id.endswith(f"/instances/{_uid(files[1])}")
    assert archive.store_instance(files[0]).archive_id == stored[0].archive_id  # harmless

    (study,) = archive.search_for_studies({"StudyInstanceUID": study_uid})
    assert study.level is ResourceLevel.STUDY and study.archive_id == stored[0].study_archive_id
    assert study.study_instance_uid == study_uid and study.get("PatientID")
    (series,) = archive.search_for_series({"StudyInstanceUID": study_uid})
    assert (series.series_instance_uid, series.modality) == (series_uid, "CT")
    assert series.parent == study.archive_id
    assert [s.archive_id for s in archive.get_study_series(study.archive_id)] == [series.archive_id]
    assert archive.get_resource(ResourceLevel.SERIES, series.archive_id).archive_id == (
        series.archive_id
    )
    instances = archive.get_series_instances(series.archive_id)
    assert {i.sop_instance_uid for i in instances} == {_uid(f) for f in files}
    assert {i.archive_id for i in archive.get_study_instances(study.archive_id)} == {
        r.archive_id for r in stored
    }
    (found,) = archive.search_for_instances({"SOPInstanceUID": _uid(files[1])})
    assert found.archive_id == stored[1].archive_id and found.parent == series.archive_id

    assert archive.retrieve_instance(stored[1].archive_id) == files[1]
    with zipfile.ZipFile(io.BytesIO(archive.retrieve_series_archive(series.archive_id))) as z:
        assert sorted(_uid(z.read(n)) for n in z.namelist()) == sorted(_uid(f) for f in files)
    with zipfile.ZipFile(io.BytesIO(archive.retrieve_study_archive(study.archive_id))) as z:
        assert len(z.namelist()) == 3
    metadata = archive.get_instance_metadata(found.archive_id)
    assert metadata["SeriesInstanceUID"] == series_uid
    assert metadata["SOPInstanceUID"] == _uid(files[1])
    header = pydicom.dcmread(io.BytesIO(files[1]), stop_before_pixels=True)
    stored_format = archive.get_instance_format(found.archive_id)
    assert stored_format.sop_class_uid == header.SOPClassUID
    assert stored_format.transfer_syntax_uid == header.file_meta.TransferSyntaxUID
    counts = archive.get_statistics(ResourceLevel.STUDY, study.archive_id)
    assert (counts.series, counts.instances) == (1, 3)
    patient = f"patients/{study.get('PatientID')}"
    assert study_uid in {s.study_instance_uid for s in archive.get_patient_studies(patient)}
    unknown = ArchiveId(f"studies/{generate_uid()}")
    assert [
        s.archive_id
        for s in archive.get_resources(ResourceLevel.STUDY, [study.archive_id, unknown])
    ] == [study.archive_id]


def test_search_filters_and_paging(archive: DicomwebArchive) -> None:
    patient = f"DW-{generate_uid()[-10:]}"
    uids = []
    for day in ("20250101", "20250201", "20250301"):
        study_uid, _, files = _series(1, PatientID=patient, StudyDate=day)
        assert isinstance(archive.store_instances(files)[0], StoredInstance)
        uids.append(study_uid)
    found = archive.search_for_studies({"PatientID": patient})
    assert {s.study_instance_uid for s in found} == set(uids)
    in_range = archive.search_for_studies({"PatientID": patient, "StudyDate": "20250115-20250315"})
    assert {s.study_instance_uid for s in in_range} == set(uids[1:])
    pages = [archive.search_for_studies({"PatientID": patient}, limit=2, offset=o) for o in (0, 2)]
    assert [len(p) for p in pages] == [2, 1]
    assert {s.study_instance_uid for p in pages for s in p} == set(uids)
    assert archive.search_for_studies({"PatientID": patient}, limit=0) == []
    (person,) = archive.search_for_patients({"PatientID": patient})
    assert person.archive_id == f"patients/{patient}" and person.get("PatientID") == patient
    assert archive.search_for_studies({"PatientID": "NOBODY-" + patient}) == []
    with pytest.raises(ArchiveError, match="not a DICOM keyword"):
        archive.search_for_studies({"PatientIdd": patient})


def test_a_search_broader_than_the_maximum_is_refused(archive: DicomwebArchive) -> None:
    _, _, files = _series(61)  # the fixture's maximum is 60
    assert all(isinstance(r, StoredInstance) for r in archive.store_instances(files))
    with pytest.raises(ArchiveQueryTooBroadError):
        archive.search_for_instances()
    assert len(archive.search_for_instances(limit=5)) == 5


def test_streaming_a_study_relays_chunks_without_buffering(
    archive: DicomwebArchive, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dicomweb_archive, "STOW_BATCH_BYTES", 2 * 1024 * 1024)  # several requests
    study_uid, _, files = _series(50, size=256)  # ~130 KB each, ~6.5 MB in all
    uids = sorted(_uid(f) for f in files)
    assert all(isinstance(r, StoredInstance) for r in archive.store_instances(files))
    total = sum(len(f) for f in files)
    del files
    chunks = 0
    received = 0
    tracemalloc.start()
    try:
        with archive.open_dicomweb_stream(
            f"studies/{study_uid}", headers={"Accept": DICOM_PARTS}, check=True
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("multipart/related")
            for chunk in stream.chunks:
                chunks += 1
                received += len(chunk)
        relayed_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        parts = 0
        seen = []
        for part in archive.iter_instances(ResourceLevel.STUDY, f"studies/{study_uid}"):
            parts += 1
            seen.append(_uid(part))
        parsed_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert chunks >= total // CHUNK_BYTES > 1 and received > total  # relayed as it arrives
    # never the whole study at once: a few chunks' worth (httpx's and the decoder's buffers)
    assert relayed_peak < min(total / 2, 8 * CHUNK_BYTES), (relayed_peak, total)
    assert parsed_peak < min(total / 2, 8 * CHUNK_BYTES), (parsed_peak, total)
    assert parts == 50 and sorted(seen) == uids
    # the shared function over any client: an unknown study's answer is relayed as it is
    with open_dicomweb_stream(archive.http_client, f"studies/{generate_uid()}") as missing:
        assert missing.status_code == 404


def test_errors_of_a_reachable_node(archive: DicomwebArchive) -> None:
    unknown = f"studies/{generate_uid()}"
    with pytest.raises(ArchiveNotFoundError) as caught:
        archive.retrieve_study_archive(unknown)
    assert caught.value.identifier == unknown
    with pytest.raises(ArchiveNotFoundError):
        archive.get_resource(ResourceLevel.STUDY, unknown)
    with pytest.raises(ArchiveNotFoundError):
        archive.get_instance_metadata(f"{unknown}/series/1.2/instances/1.3")
    with pytest.raises(ArchiveError, match="not a DICOMweb archive key"):
        archive.retrieve_instance(unknown)
    (refused,) = archive.store_instances([NOT_DICOM])
    assert isinstance(refused, ArchiveRejectedError)
    for operation in (
        lambda: archive.delete_study(unknown),
        archive.changes,
        archive.latest_change,
        archive.get_statistics,
    ):
        with pytest.raises(ArchiveUnsupportedError):
            operation()


def test_wrong_password_is_unavailable_and_refused(orthanc: tuple[Settings, Secrets]) -> None:
    settings, secrets = orthanc
    node = RemoteNode("wrong", f"{settings.orthanc_url}/dicom-web")

    class Wrong:
        username, password, token = secrets.orthanc_user, "not-the-password", None

    with (
        open_node_archive(node, Wrong(), settings) as archive,
        pytest.raises(ArchiveUnavailableError) as caught,
    ):
        archive.search_for_studies(limit=1)
    assert caught.value.status_code == 401
    assert node_status(caught.value) is NodeStatus.REFUSED
    assert "not-the-password" not in str(caught.value) + repr(archive)


def test_stopped_node_is_unreachable(orthanc: tuple[Settings, Secrets]) -> None:
    settings, _ = orthanc
    node = RemoteNode("stopped", f"http://127.0.0.1:{free_port()}/dicom-web")
    with (
        open_node_archive(node, None, settings) as archive,
        pytest.raises(ArchiveUnavailableError) as caught,
    ):
        archive.search_for_studies(limit=1)
    assert caught.value.status_code is None
    assert node_status(caught.value) is NodeStatus.UNREACHABLE


def test_silent_node_times_out_fast(orthanc: tuple[Settings, Secrets]) -> None:
    """A socket that accepts and never answers: the read timeout ends the request."""
    settings, _ = orthanc
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        accepted: list[socket.socket] = []
        thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]))
        thread.start()
        port = listener.getsockname()[1]
        node = RemoteNode("silent", f"http://127.0.0.1:{port}/dicom-web", timeout_s=0.5)
        started = time.monotonic()
        with (
            open_node_archive(node, None, settings) as archive,
            pytest.raises(ArchiveTimeoutError) as caught,
        ):
            archive.search_for_studies(limit=1)
        elapsed = time.monotonic() - started
        thread.join(5)
        for connection in accepted:
            connection.close()
    assert elapsed < 5
    assert isinstance(caught.value, ArchiveUnavailableError)
    assert node_status(caught.value) is NodeStatus.TIMEOUT


def test_the_local_pass_through_client_streams_too(
    orthanc: tuple[Settings, Secrets], archive: DicomwebArchive
) -> None:
    """:func:`open_dicomweb_stream` over the API's client of Orthanc (``dicomweb_client``,
    based at Orthanc's root), as the federated pass-through will use it for local studies."""
    study_uid, _, files = _series(2)
    assert all(isinstance(r, StoredInstance) for r in archive.store_instances(files))
    with (
        dicomweb_client(*orthanc) as client,
        open_dicomweb_stream(
            client,
            f"dicom-web/studies/{study_uid}/metadata",
            {"includefield": "all"},
            decoded=True,  # raw chunks keep the answer's Content-Encoding, for relaying
        ) as stream,
    ):
        assert stream.status_code == 200
        body = b"".join(stream.chunks)
    assert {item["00080018"]["Value"][0] for item in json.loads(body)} == {_uid(f) for f in files}


async def _relayed(endpoint: HttpEndpoint, path: str, **headers: str) -> tuple[int, int, int]:
    """Status, chunks and bytes of an answer relayed by :func:`open_relay`."""
    chunks = received = 0
    async with open_relay(endpoint, path, headers=headers) as answer:
        async for chunk in answer.chunks():
            chunks += 1
            received += len(chunk)
        return answer.status_code, chunks, received


def test_the_relay_streams_a_study_as_it_arrives(
    orthanc: tuple[Settings, Secrets], archive: DicomwebArchive
) -> None:
    """:func:`open_relay` (the federated WADO-RS relay's transport) over a remote node's
    endpoint and over the local Orthanc's: chunks as they arrive, never the whole study."""
    study_uid, _, files = _series(80, size=256)  # ~130 KB each, ~10 MB in all
    assert all(isinstance(r, StoredInstance) for r in archive.store_instances(files))
    total = sum(len(f) for f in files)
    del files
    tracemalloc.start()
    try:
        status, chunks, received = asyncio.run(
            _relayed(archive.endpoint, f"studies/{study_uid}", Accept=DICOM_PARTS)
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status == 200 and received > total and chunks > 1
    assert peak < total / 2, (peak, total)  # its read buffer (4 MiB at most), not the study
    # the local Orthanc's endpoint (its root): the DICOMweb service below dicom-web/
    local = local_endpoint(*orthanc)
    assert asyncio.run(_relayed(local, f"dicom-web/studies/{study_uid}/metadata"))[0] == 200
    # an error status is the node's answer, relayed as it is, not raised
    assert asyncio.run(_relayed(archive.endpoint, f"studies/{generate_uid()}"))[0] == 404
    wrong = HttpEndpoint(archive.endpoint.base_url, ("orthanc", "not-the-password"))
    assert asyncio.run(_relayed(wrong, f"studies/{study_uid}"))[0] == 401


def test_the_relay_maps_a_stopped_and_a_silent_node_to_the_seams_errors() -> None:
    stopped = HttpEndpoint(f"http://127.0.0.1:{free_port()}/dicom-web/", connect_timeout_s=1)
    with pytest.raises(ArchiveUnavailableError) as caught:
        asyncio.run(_relayed(stopped, "studies"))
    assert node_status(caught.value) is NodeStatus.UNREACHABLE
    with socket.socket() as listener:  # accepts and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        silent = HttpEndpoint(f"http://127.0.0.1:{port}/", read_timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(ArchiveTimeoutError) as timed_out:
            asyncio.run(_relayed(silent, "studies"))
        elapsed = time.monotonic() - started
    assert elapsed < 5
    assert node_status(timed_out.value) is NodeStatus.TIMEOUT


def test_the_relay_passes_over_a_root_it_cannot_reach(
    archive: DicomwebArchive, orthanc: tuple[Settings, Secrets]
) -> None:
    """Several archive nodes: a node that refuses connections is passed over for the next root
    (``fallback_urls``, as ``local_endpoint`` gives them), and with every root down the error
    is the last root's."""
    study_uid, _, files = _series(2)
    archive.store_instances(files)
    local = local_endpoint(*orthanc)
    assert local.fallback_urls == ()  # one node: nothing to fall back to
    down = f"http://127.0.0.1:{free_port()}/"
    failing_over = replace(local, base_url=down, fallback_urls=(local.base_url,))
    path = f"dicom-web/studies/{study_uid}/metadata"
    assert asyncio.run(_relayed(failing_over, path))[0] == 200
    other_down = f"http://127.0.0.1:{free_port()}/"
    all_down = replace(local, base_url=down, fallback_urls=(other_down,), connect_timeout_s=1)
    with pytest.raises(ArchiveUnavailableError) as caught:
        asyncio.run(_relayed(all_down, path))
    assert node_status(caught.value) is NodeStatus.UNREACHABLE
    assert str(other_down.split("//")[1].rstrip("/")) in str(caught.value)
    # the settings of three nodes give node 0 with nodes 1 and 2 behind it
    settings, secrets = orthanc
    three = settings.model_copy(update={"orthanc_nodes": 3})
    endpoint = local_endpoint(three, secrets)
    assert (endpoint.base_url, *endpoint.fallback_urls) == tuple(
        f"{url}/" for url in three.orthanc_node_urls
    )
