"""The image archive seam against a real Orthanc: store, search, retrieve, delete, changes,
and its errors (Orthanc down, unknown resources, invalid DICOM)."""

from __future__ import annotations

import datetime as dt
import io
import shutil
import socket
import zipfile
from collections.abc import Iterator

import pydicom
import pytest
from pydicom.uid import generate_uid

from core.archive import (
    ArchiveError,
    ArchiveId,
    ArchiveNotFoundError,
    ArchiveQueryTooBroadError,
    ArchiveRejectedError,
    ArchiveUnavailableError,
    OrthancArchive,
    ResourceLevel,
    StoredInstance,
    open_archive,
)
from core.config import Settings, load_settings
from core.events import study_payload, study_series
from core.secrets import Secrets, load_secrets
from radcloud.services import Supervisor, orthanc_component
from tests.dicom_gateway.dicom_files import synthetic_ct
from tests.helpers import free_port, free_ports

pytestmark = pytest.mark.integration

NOT_DICOM = bytes(128) + b"DICM" + b"\x02\x00" * 50


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Secrets]]:
    """Orthanc alone (no gateway, no serving), on free ports."""
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc is not installed: run `make install` (apt-get install orthanc)")
    http, dicom, api, gateway = free_ports(4)
    settings = load_settings(
        home=tmp_path_factory.mktemp("archive-home"),
        orthanc_http_port=http,
        orthanc_dicom_port=dicom,
        api_port=api,
        gateway_port=gateway,
    )
    secrets = load_secrets(settings)
    supervisor = Supervisor(settings, [orthanc_component(settings, secrets, as_edge=False)])
    supervisor.up()
    try:
        yield settings, secrets
    finally:
        supervisor.down()


@pytest.fixture
def archive(orthanc: tuple[Settings, Secrets]) -> Iterator[OrthancArchive]:
    with open_archive(*orthanc) as opened:
        yield opened


def _series(count: int) -> tuple[str, str, list[bytes]]:
    study, series = generate_uid(), generate_uid()
    return study, series, [synthetic_ct(study, series, instance=n) for n in range(1, count + 1)]


def _uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def test_store_search_and_retrieve_a_series(archive: OrthancArchive) -> None:
    study_uid, series_uid, files = _series(3)
    receipts = archive.store_instances(files)  # one ZIP
    assert all(isinstance(r, StoredInstance) and not r.already_stored for r in receipts)
    stored = [r for r in receipts if isinstance(r, StoredInstance)]
    assert len({r.study_archive_id for r in stored}) == 1
    again = archive.store_instance(files[0])
    assert again.already_stored and again.archive_id == stored[0].archive_id

    (study,) = archive.search_for_studies({"StudyInstanceUID": study_uid})
    assert study.level is ResourceLevel.STUDY
    assert study.archive_id == stored[0].study_archive_id
    assert study.study_instance_uid == study_uid and study.get("PatientID")
    (series,) = archive.search_for_series({"StudyInstanceUID": study_uid})
    assert (series.series_instance_uid, series.modality) == (series_uid, "CT")
    assert series.parent == study.archive_id and len(series.children) == 3
    assert archive.get_study_series(study.archive_id) == [series]
    assert archive.get_resource(ResourceLevel.STUDY, study.archive_id).children == (
        series.archive_id,
    )
    instances = archive.get_series_instances(series.archive_id)
    assert {i.sop_instance_uid for i in instances} == {_uid(f) for f in files}
    assert {i.archive_id for i in archive.get_study_instances(study.archive_id)} == {
        r.archive_id for r in stored
    }
    (found,) = archive.search_for_instances({"SOPInstanceUID": _uid(files[1])})
    assert found.archive_id == stored[1].archive_id

    assert archive.retrieve_instance(stored[1].archive_id) == files[1]
    with zipfile.ZipFile(io.BytesIO(archive.retrieve_series_archive(series.archive_id))) as zipped:
        assert len(zipped.namelist()) == 3
    with zipfile.ZipFile(io.BytesIO(archive.retrieve_study_archive(study.archive_id))) as zipped:
        assert len(zipped.namelist()) == 3
    assert archive.get_instance_metadata(found.archive_id)["SeriesInstanceUID"] == series_uid
    header = pydicom.dcmread(io.BytesIO(files[1]), stop_before_pixels=True)
    stored_format = archive.get_instance_format(found.archive_id)
    assert stored_format.sop_class_uid == header.SOPClassUID
    assert stored_format.transfer_syntax_uid == header.file_meta.TransferSyntaxUID
    counts = archive.get_statistics(ResourceLevel.STUDY, study.archive_id)
    assert (counts.series, counts.instances) == (1, 3)
    assert archive.get_statistics().instances >= 3


def test_one_invalid_instance_of_several_is_refused_alone(archive: OrthancArchive) -> None:
    _, _, files = _series(3)
    outcomes = archive.store_instances([files[0], NOT_DICOM, *files[1:]])
    assert [type(o) for o in outcomes] == [
        StoredInstance,
        ArchiveRejectedError,
        StoredInstance,
        StoredInstance,
    ]
    refused = outcomes[1]
    assert isinstance(refused, ArchiveRejectedError) and refused.status_code == 400


def test_invalid_dicom_is_rejected(archive: OrthancArchive) -> None:
    with pytest.raises(ArchiveRejectedError) as caught:
        archive.store_instance(NOT_DICOM)
    assert caught.value.status_code == 400
    assert "HTTP 400" in str(caught.value)


def test_unknown_resources_are_not_found(archive: OrthancArchive) -> None:
    unknown = ArchiveId("00000000-00000000-00000000-00000000-00000000")
    with pytest.raises(ArchiveNotFoundError) as caught:
        archive.get_study_series(unknown)
    assert (caught.value.resource, caught.value.identifier) == ("study", unknown)
    with pytest.raises(ArchiveNotFoundError, match="instance"):
        archive.retrieve_instance(unknown)
    assert archive.search_for_studies({"StudyInstanceUID": generate_uid()}) == []


def test_delete_a_study(archive: OrthancArchive) -> None:
    study_uid, _, files = _series(2)
    receipt = archive.store_instance(files[0])
    archive.delete_study(receipt.study_archive_id)
    assert archive.search_for_studies({"StudyInstanceUID": study_uid}) == []
    with pytest.raises(ArchiveNotFoundError):
        archive.get_resource(ResourceLevel.STUDY, receipt.study_archive_id)
    with pytest.raises(ArchiveNotFoundError):
        archive.delete_study(receipt.study_archive_id)


def test_the_change_feed_lists_new_instances(archive: OrthancArchive) -> None:
    start = archive.changes(since=0, limit=100_000).last
    receipt = archive.store_instance(_series(1)[2][0])
    feed = archive.changes(since=start)
    assert feed.last > start
    assert any(
        c.change_type == "NewInstance" and c.archive_id == receipt.archive_id for c in feed.changes
    )
    assert all(c.seq > start for c in feed.changes)


def test_the_newest_change_is_where_a_follower_starts(archive: OrthancArchive) -> None:
    before = archive.latest_change()
    receipt = archive.store_instance(_series(1)[2][0])
    after = archive.latest_change()
    assert after > before
    assert archive.changes(since=after).changes == ()
    feed = archive.changes(since=before, limit=100)
    assert feed.last == after
    assert receipt.archive_id in {c.archive_id for c in feed.changes}


def test_many_resources_are_read_in_one_call(archive: OrthancArchive) -> None:
    study_uid, series_uid, files = _series(3)
    receipts = [r for r in archive.store_instances(files) if isinstance(r, StoredInstance)]
    gone = archive.store_instance(_series(1)[2][0])
    archive.delete_instance(gone.archive_id)
    instances = archive.get_resources(
        ResourceLevel.INSTANCE, [*(r.archive_id for r in receipts), gone.archive_id]
    )
    assert {i.archive_id for i in instances} == {r.archive_id for r in receipts}  # gone left out
    assert {i.parent for i in instances} == {receipts[0].series_archive_id}
    assert {i.sop_instance_uid for i in instances} == {_uid(f) for f in files}
    [series] = archive.get_resources(ResourceLevel.SERIES, [receipts[0].series_archive_id] * 2)
    assert (series.series_instance_uid, series.modality) == (series_uid, "CT")
    assert series.parent == receipts[0].study_archive_id
    assert set(series.children) == {r.archive_id for r in receipts}
    [study] = archive.get_resources(ResourceLevel.STUDY, [receipts[0].study_archive_id])
    assert study.study_instance_uid == study_uid
    assert archive.get_resources(ResourceLevel.STUDY, []) == []


def test_the_study_event_payload_lists_the_series(archive: OrthancArchive) -> None:
    study_uid, series_uid, files = _series(2)
    receipts = archive.store_instances(files)
    study = receipts[0].study_archive_id if isinstance(receipts[0], StoredInstance) else None
    assert study is not None
    (series,) = study_series(archive, study)
    assert series["series_instance_uid"] == series_uid
    assert (series["modality"], series["instance_count"]) == ("CT", 2)
    now = dt.datetime.now(dt.UTC)
    payload = study_payload(
        study_instance_uid=study_uid,
        hospital="General",
        study_archive_id=study,
        series=[series],
        first_received_at=now,
        last_received_at=now,
        ready_at=now,
    )
    assert payload["orthanc_study_id"] == study and payload["instance_count"] == 2
    assert "force" not in payload
    again = study_payload(
        study_instance_uid=study_uid,
        hospital=None,
        study_archive_id=study,
        series=[series],
        first_received_at=now,
        last_received_at=now,
        ready_at=now,
        requested_by="eng",
    )
    assert (again["force"], again["requested_by"]) == (True, "eng")


def test_anonymize_an_instance(archive: OrthancArchive) -> None:
    receipt = archive.store_instance(_series(1)[2][0])
    data = archive.anonymize_instance(
        receipt.archive_id, dicom_version="2021b", replace={"PatientID": "ANON-1"}
    )
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    assert (ds.PatientID, ds.PatientIdentityRemoved) == ("ANON-1", "YES")
    assert archive.server_version().startswith("Orthanc ")


def test_orthanc_down_is_unavailable_not_a_hang(orthanc: tuple[Settings, Secrets]) -> None:
    settings, secrets = orthanc
    down = settings.model_copy(update={"orthanc_http_port": free_port()})
    with open_archive(down, secrets, timeout_s=2) as dead:
        with pytest.raises(ArchiveUnavailableError) as caught:
            dead.search_for_studies()
        assert caught.value.status_code is None
        assert str(down.orthanc_http_port) in caught.value.url
        outcomes = dead.store_instances(_series(2)[2])
        assert [type(o) for o in outcomes] == [ArchiveUnavailableError] * 2
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        mute = settings.model_copy(update={"orthanc_http_port": port})
        with (
            open_archive(mute, secrets, timeout_s=1) as hung,
            pytest.raises(ArchiveUnavailableError),
        ):
            hung.retrieve_instance(ArchiveId("any"))


def test_wrong_credentials_are_unavailable(orthanc: tuple[Settings, Secrets]) -> None:
    settings, _ = orthanc
    with (
        OrthancArchive(settings.orthanc_url, username="x", password="y") as stranger,
        pytest.raises(ArchiveUnavailableError) as caught,
    ):
        stranger.get_statistics()
    assert caught.value.status_code == 401
    assert isinstance(caught.value, ArchiveError)


def test_statistics_need_both_level_and_id(archive: OrthancArchive) -> None:
    with pytest.raises(ValueError, match="give both"):
        archive.get_statistics(ResourceLevel.STUDY)


def test_searches_are_paged_and_a_broader_one_is_refused(
    orthanc: tuple[Settings, Secrets], archive: OrthancArchive
) -> None:
    """Orthanc is never asked without a Limit: a page is ``limit`` from ``offset``, and a
    search without one that matches more than the maximum is refused, not cut short."""
    for _ in range(3):
        archive.store_instances(_series(1)[2])
    first = archive.search_for_studies(limit=1)
    second = archive.search_for_studies(limit=1, offset=1)
    assert len(first) == len(second) == 1
    assert first[0].archive_id != second[0].archive_id
    settings, secrets = orthanc
    with OrthancArchive(
        settings.orthanc_url,
        username=secrets.orthanc_user,
        password=secrets.orthanc_password,
        max_find_results=2,
    ) as narrow:
        with pytest.raises(ArchiveQueryTooBroadError, match="more than 2 Study"):
            narrow.search_for_studies()
        assert len(narrow.search_for_studies(limit=2)) == 2  # a page is fine
        (study,) = narrow.search_for_studies({"StudyInstanceUID": first[0].study_instance_uid})
        assert study.archive_id == first[0].archive_id
