"""Several archive nodes (``RADCLOUD_ORTHANC_NODES``, issue 18): two Orthanc processes, each
radcloud's DICOM edge, sharing the managed PostgreSQL index and one storage directory. Studies
pushed with storescu to both nodes at once, one node killed -9 mid-ingest: every acknowledged
instance is there through the other, the archive seam's reads go on, the completeness follower
still announces the studies, and the restarted node serves again. The seam's failover and its
resend after Orthanc's 503 are checked against small real HTTP peers."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from core.archive import (
    ArchiveUnavailableError,
    HttpEndpoint,
    OrthancArchive,
    ResourceLevel,
    dicomweb_client,
    local_endpoint,
    open_relay,
)
from core.audit import AuditTrail
from core.config import load_settings
from core.db.models import Role
from core.exceptions import ConfigError
from core.secrets import load_secrets
from core.security import Accounts, Actor
from dicom_gateway.dcmtk import StoreReport, storescu
from dicom_gateway.edge.peers import wait_until_admitted
from imaging.synthetic import generate_study
from radcloud.services.orthanc import orthanc_components, orthanc_config, orthanc_config_path
from tests.conftest import Stack
from tests.fixture_models import register_fixture_models
from tests.helpers import free_port, wait_until
from tests.serving.test_stow_edge import MULTIPART, _multipart
from tests.serving.test_triage_e2e import results

SENDER = "NODESENDER"
HOSPITAL = "Nodes Hospital"


# -- refusals ---------------------------------------------------------------------------------


def test_several_nodes_on_the_sqlite_index_are_refused_naming_the_settings(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="RADCLOUD_ORTHANC_NODES=2 needs RADCLOUD_ORTHANC_INDEX"):
        load_settings(home=tmp_path, orthanc_nodes=2)


def test_a_node_port_taken_by_another_setting_is_refused(tmp_path: Path) -> None:
    taken = r"RADCLOUD_ORTHANC_HTTP_PORT \+ 1 \* RADCLOUD_ORTHANC_NODE_PORT_STEP and RADCLOUD_API"
    with pytest.raises(ConfigError, match=taken):
        load_settings(
            home=tmp_path,
            orthanc_nodes=2,
            orthanc_index="postgresql",
            orthanc_postgresql_url="postgresql://u:p@127.0.0.1/orthanc",
            orthanc_http_port=9000,
            api_port=9010,
        )
    # the defaults leave room for node 1 (8052, 4252, 11122)
    load_settings(
        home=tmp_path,
        orthanc_nodes=2,
        orthanc_index="postgresql",
        orthanc_postgresql_url="postgresql://u:p@127.0.0.1/orthanc",
    )


def test_each_node_has_its_own_ports_file_and_identifier_and_shares_index_and_storage(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        home=tmp_path,
        orthanc_nodes=3,
        orthanc_index="postgresql",
        orthanc_postgresql_url="postgresql://u:p@127.0.0.1/orthanc",
    )
    secrets = load_secrets(settings)
    configs = [orthanc_config(settings, secrets, node=node) for node in range(3)]
    assert [c["HttpPort"] for c in configs] == [8042, 8052, 8062]
    assert [c["DicomPort"] for c in configs] == [11112, 11122, 11132]  # the Orthanc edge
    assert len({c["DatabaseServerIdentifier"] for c in configs}) == 3
    assert {c["StorageDirectory"] for c in configs} == {str(settings.paths.orthanc_storage)}
    assert all(c["PostgreSQL"]["Lock"] is False for c in configs)
    assert all(c["PostgreSQL"]["Database"] == "orthanc" for c in configs)
    components = orthanc_components(settings, secrets)
    assert [c.name for c in components] == ["orthanc", "orthanc-1", "orthanc-2"]
    assert components[2].argv[-1] == str(orthanc_config_path(settings, 2))
    assert components[2].env["RADCLOUD_ORTHANC_NODE"] == "2"
    assert settings.orthanc_node_urls[2] == "http://127.0.0.1:8062"
    # one node: the configuration as before (no identifier, the index locked to one process)
    single = load_settings(
        home=tmp_path,
        orthanc_index="postgresql",
        orthanc_postgresql_url=("postgresql://u:p@127.0.0.1/orthanc"),
    )
    config = orthanc_config(single, secrets)
    assert "DatabaseServerIdentifier" not in config and "Lock" not in config["PostgreSQL"]


# -- the seam against small real HTTP peers ----------------------------------------------------


class _Peer(ThreadingHTTPServer):
    """An HTTP peer that answers each request with the next of ``statuses`` (then 200)."""

    def __init__(self, statuses: list[int], port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.statuses = statuses
        self.requests: list[str] = []
        self.hosts: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _Peer

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.requests.append(f"{self.command} {self.path}")
        self.server.hosts.append(self.headers.get("Host", ""))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        body = b'{"Version": "1.10.1"}' if status == 200 else b'{"Message": "busy"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def peer() -> Iterator[Any]:
    """Start peers answering the given statuses; stopped afterwards."""
    started: list[_Peer] = []

    def start(statuses: list[int] | None = None, port: int = 0) -> _Peer:
        server = _Peer(list(statuses or []), port)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def _closed_port() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_requests_go_round_the_nodes_and_a_node_that_is_down_is_passed_over(peer: Any) -> None:
    one, two = peer(), peer()
    with OrthancArchive([one.url, _closed_port(), two.url], username="u", password="p") as archive:
        versions = [archive.server_version() for _ in range(6)]
    assert versions == ["Orthanc 1.10.1"] * 6
    # each request starts at the next node; the closed one's turns fall to the node after it
    assert (len(one.requests), len(two.requests)) == (2, 4)


def test_every_node_down_is_unavailable() -> None:
    nodes = [_closed_port(), _closed_port()]
    with (
        OrthancArchive(nodes, username="u", password="p") as archive,
        pytest.raises(ArchiveUnavailableError) as caught,
    ):
        archive.server_version()
    assert caught.value.status_code is None


def test_orthancs_503_is_sent_again_after_a_pause_and_an_answer_is_not_sent_elsewhere(
    peer: Any,
) -> None:
    busy = peer([503, 503])
    with OrthancArchive([busy.url], username="u", password="p") as archive:
        assert archive.server_version() == "Orthanc 1.10.1"
    assert busy.requests == ["GET /system"] * 3
    always_busy, other = peer([503] * 10), peer()
    with (
        OrthancArchive([always_busy.url, other.url], username="u", password="p") as archive,
        pytest.raises(ArchiveUnavailableError) as caught,
    ):
        archive.server_version()
    assert caught.value.status_code == 503
    assert len(always_busy.requests) == 4 and other.requests == []


def test_the_dicomweb_pass_through_client_passes_over_node_0_when_it_is_down(
    peer: Any, tmp_path: Path
) -> None:
    """The API's DICOMweb client (``dicomweb_client``) is addressed to node 0; node 0 down, the
    request goes to node 1 with node 0's Host header (so the answer's URLs are rewritten as
    before)."""
    base = _port_pair()
    settings = load_settings(
        home=tmp_path,
        orthanc_nodes=2,
        orthanc_index="postgresql",
        orthanc_postgresql_url="postgresql://u:p@127.0.0.1/orthanc",
        orthanc_http_port=base,
    )
    node_1 = peer(port=base + _STEP)
    with dicomweb_client(settings, load_secrets(settings)) as client:
        answer = client.get("/dicom-web/studies")
    assert answer.status_code == 200
    assert node_1.requests == ["GET /dicom-web/studies"]
    assert node_1.hosts == [f"127.0.0.1:{base}"]


# -- two nodes on the managed PostgreSQL -------------------------------------------------------


_STEP = 10  # RADCLOUD_ORTHANC_NODE_PORT_STEP's default


def _port_pair() -> int:
    """A port that is free, and node 1's too (the port + the step)."""
    while True:
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + _STEP))
            except OSError:
                continue
        return port


def _two_nodes_on_postgresql(root: Path) -> dict[str, Any]:
    """Settings of two archive nodes on the managed PostgreSQL (its data in ``root``), their
    ports in pairs a node step apart."""
    return {
        "postgresql_managed": True,
        "postgresql_port": free_port(),
        "postgresql_data_dir": root / "data",
        "orthanc_index": "postgresql",
        "orthanc_nodes": 2,
        "orthanc_http_port": _port_pair(),
        "orthanc_dicom_port": _port_pair(),
        "gateway_port": _port_pair(),
    }


@pytest.fixture
def two_nodes(make_stack: Any) -> Iterator[Stack]:
    """Two archive nodes, each the DICOM edge, the gateway process (completeness follower) and
    the managed PostgreSQL holding both databases (no API, no Ray)."""
    root = Path(tempfile.mkdtemp(prefix="radcloud-nodes-"))  # pytest's is private to root
    root.chmod(0o711)
    try:
        yield make_stack(doors_only=True, **_two_nodes_on_postgresql(root))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _write(directory: Path, datasets: list[Any]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, dataset in enumerate(datasets):
        path = directory / f"{number:04d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _send(stack: Stack, node: int, files: list[Path]) -> StoreReport:
    return storescu(
        files,
        host="127.0.0.1",
        port=stack.settings.gateway_port + stack.settings.orthanc_node_offset(node),
        calling_ae=SENDER,
        called_ae=stack.settings.gateway_ae_title,
        timeout_s=120,
    )


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _archived_uid(archive: OrthancArchive, sop_instance_uid: str) -> str | None:
    """The SOP Instance UID of the file the archive returns for ``sop_instance_uid``."""
    found = archive.search_for_instances({"SOPInstanceUID": sop_instance_uid}, limit=2)
    if len(found) != 1:
        return None
    data = archive.retrieve_instance(found[0].archive_id)
    return str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(data)).SOPInstanceUID)


def _node_changes(stack: Stack, node: int) -> list[tuple[int, str]]:
    secrets = load_secrets(stack.settings)
    answer = httpx.get(
        f"{stack.settings.orthanc_node_url(node)}/changes",
        params={"since": 0, "limit": 10000},
        auth=(secrets.orthanc_user, secrets.orthanc_password),
        timeout=10,
    ).json()
    return [(int(c["Seq"]), str(c["ID"])) for c in answer["Changes"]]


@pytest.mark.slow
def test_a_node_killed_mid_ingest_loses_nothing_acknowledged(
    two_nodes: Stack, tmp_path: Path
) -> None:
    stack = two_nodes
    assert [s.name for s in stack.supervisor.status()] == [  # type: ignore[union-attr]
        "postgresql",
        "orthanc",
        "orthanc-1",
        "gateway",
    ]
    stack.add_sender(SENDER, HOSPITAL)
    assert wait_until_admitted(stack.settings, [SENDER], timeout_s=15)  # both nodes' tables
    studies = [generate_study("head-ct", index, seed=18) for index in range(4)]
    files = [_write(tmp_path / f"s{i}", list(s.datasets)) for i, s in enumerate(studies)]
    # node 0 gets studies 0 and 1, node 1 studies 2 and 3: concurrently, node 1 killed once
    # its first instances are in the shared index
    with ThreadPoolExecutor(2) as pool:
        to_zero = pool.submit(_send, stack, 0, files[0] + files[1])
        to_one = pool.submit(_send, stack, 1, files[2] + files[3])
        first = {"StudyInstanceUID": studies[2].study_instance_uid}
        with stack.archive() as archive:
            assert wait_until(
                lambda: len(archive.search_for_instances(first, limit=3)) >= 3,
                timeout_s=60,
                interval_s=0.02,
            )
        os.kill(stack.pid("orthanc-1"), signal.SIGKILL)
        zero, one = to_zero.result(), to_one.result()
    assert len(zero.stored) == len(files[0] + files[1]), zero.output[-2000:]
    assert 0 < len(one.stored) < len(files[2] + files[3]), one.output[-2000:]
    acknowledged = [_sop_uid(path) for path in zero.stored + one.stored]
    assert not stack.supervisor.status()[2].running  # type: ignore[union-attr]

    # every acknowledged instance, through the seam (half its requests start at the dead node)
    with stack.archive() as archive:
        assert [_archived_uid(archive, uid) for uid in acknowledged] == acknowledged
        assert archive.get_statistics().instances >= len(acknowledged)
    # the completeness follower (the gateway) announces the studies from the shared feed
    for index, study in enumerate(studies):
        stored = zero.stored if index < 2 else one.stored
        expected = sum(1 for path in stored if path.parent == files[index][0].parent)
        if expected == 0:
            continue
        assert wait_until(
            lambda uid=study.study_instance_uid: bool(stack.ready_events(uid)), timeout_s=60
        ), f"no study.ready for study {index}"
        [event] = stack.ready_events(study.study_instance_uid)
        assert event.payload["instance_count"] >= expected

    # node 1 restarted serves again: its change feed is the shared one, and it takes a study
    stack.up()
    assert all(s.healthy for s in stack.supervisor.status())  # type: ignore[union-attr]
    assert _node_changes(stack, 1) == _node_changes(stack, 0)
    assert wait_until_admitted(stack.settings, [SENDER], timeout_s=15)
    later = generate_study("head-ct", 9, seed=18)
    report = _send(stack, 1, _write(tmp_path / "later", list(later.datasets)))
    assert len(report.stored) == len(later.datasets), report.output[-2000:]
    with stack.archive() as archive:
        [found] = archive.search_for_studies(
            {"StudyInstanceUID": later.study_instance_uid}, limit=2
        )
        assert archive.get_statistics(ResourceLevel.STUDY, found.archive_id).instances == len(
            later.datasets
        )
    assert wait_until(lambda: bool(stack.ready_events(later.study_instance_uid)), timeout_s=60)

    # node 0 killed: the gateway's STOW-RS door (the Orthanc edge: straight into Orthanc's
    # DICOMweb) sends to node 1; the same request again is answered stored (a re-store is
    # harmless, what the door's failover after a lost answer relies on)
    os.kill(stack.pid("orthanc"), signal.SIGKILL)
    db = stack.database()
    try:
        accounts = Accounts(db, AuditTrail.from_secrets(db, load_secrets(stack.settings)))
        key = accounts.create_api_key("nodes-pacs", Role.PACS, hospital=HOSPITAL, actor=Actor.cli())
    finally:
        db.dispose()
    stowed = generate_study("head-ct", 11, seed=18)
    parts = [_part(dataset) for dataset in stowed.datasets]
    for _ in range(2):
        answer = httpx.post(
            f"{stack.settings.gateway_stow_url}/studies",
            content=_multipart(*parts),
            headers={"Content-Type": MULTIPART, "Authorization": f"Bearer {key.key}"},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text[:2000]
        assert len(answer.json()["00081199"]["Value"]) == len(parts)
    with stack.archive() as archive:
        [found] = archive.search_for_studies({"StudyInstanceUID": stowed.study_instance_uid})
        assert archive.get_statistics(ResourceLevel.STUDY, found.archive_id).instances == len(parts)
    # the federated relay (its local endpoint) passes over node 0 too
    endpoint = local_endpoint(stack.settings, load_secrets(stack.settings))
    assert asyncio.run(_relayed_status(endpoint, stowed.study_instance_uid)) == 200


async def _relayed_status(endpoint: HttpEndpoint, study_instance_uid: str) -> int:
    path = f"dicom-web/studies/{study_instance_uid}/metadata"
    async with open_relay(endpoint, path, headers={"Accept": "application/dicom+json"}) as answer:
        await answer.read()
        return answer.status_code


def _part(dataset: Any) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.slow
def test_radcloud_up_with_two_nodes_triages_and_serves_the_viewer_with_node_0_down(
    make_stack: Any, tmp_path: Path
) -> None:
    """The whole radcloud (``radcloud up``: PostgreSQL, both nodes, the gateway, Ray Serve with
    the API): a study sent to node 1 is triaged (the triage reads and writes through the
    seam), and with node 0 killed the API's DICOMweb pass-through still serves it."""
    root = Path(tempfile.mkdtemp(prefix="radcloud-nodes-up-"))  # pytest's is private to root
    root.chmod(0o711)
    try:
        stack: Stack = make_stack(
            before_up=lambda s: register_fixture_models(s.settings.paths.models_dir),
            **_two_nodes_on_postgresql(root),
        )
        stack.add_sender(SENDER, HOSPITAL)
        assert wait_until_admitted(stack.settings, [SENDER], timeout_s=15)
        head = generate_study("head-ct", 21, seed=18, positive=True)
        report = _send(stack, 1, _write(tmp_path / "head", list(head.datasets)))
        assert len(report.stored) == len(head.datasets), report.output[-2000:]
        (result,) = results(stack, head.study_instance_uid)
        assert result["status"] == "succeeded"
        os.kill(stack.pid("orthanc"), signal.SIGKILL)
        with stack.client("radiologist") as client:
            answer = client.get(f"/dicom-web/studies/{head.study_instance_uid}/metadata")
        assert answer.status_code == 200, answer.text[:500]
        assert len(answer.json()) >= len(head.datasets)
    finally:
        shutil.rmtree(root, ignore_errors=True)
