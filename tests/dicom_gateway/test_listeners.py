"""What the DICOM side listens on, and who gets through (issue 14, hardening item 3).

The gateway runs in-process (:class:`GatewayService`) bound beyond loopback, in prod mode with
TLS (prod refuses plain text there), and is reached through this machine's own non-loopback
address as well as through loopback, so the peer addresses are real ones: its DIMSE port
answers on both, a sender bound to a host is admitted from that host only, and its HTTP port
(health, metrics labelled with sender AE titles, the internal STOW endpoint) is not reachable
beyond loopback at all. Orthanc answers DICOM only as the edge, on the gateway's port.
"""

from __future__ import annotations

import json
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from pydicom.uid import generate_uid

from core.config import GatewayEdge, load_settings
from core.db.models import Role
from core.security import Accounts, Actor
from dicom_gateway.dcmtk import dcmtk_environment
from dicom_gateway.service import GatewayService
from tests.conftest import EDGES, edge_id, stack_with_edge
from tests.dicom_gateway.dicom_files import synthetic_ct
from tests.helpers import free_ports, wait_until
from tests.pki import CertificateAuthority, KeyPair, non_loopback_address
from tests.serving.test_stow_edge import MULTIPART, _multipart

pytestmark = pytest.mark.integration

AE_TITLE = "RADCLOUD"
HOSPITAL = "Listener Hospital"


def _listening(pid: int) -> set[tuple[str, int]]:
    """``(address, port)`` of every TCP socket process ``pid`` listens on."""
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


class _Peer:
    """echoscu over TLS with a client certificate of the test CA."""

    def __init__(self, ca: Path, client: KeyPair) -> None:
        self._tls = ("+tls", str(client.key), str(client.certificate), "+cf", str(ca))

    def echo(self, calling_ae: str, host: str, port: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["echoscu", *self._tls, "-aet", calling_ae, "-aec", AE_TITLE, host, str(port)],
            env=dcmtk_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="module")
def outside() -> str:
    """This machine's non-loopback address: what a peer on the network connects to."""
    return non_loopback_address()


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("listeners-pki"))


@pytest.fixture(scope="module")
def exposed_gateway(
    tmp_path_factory: pytest.TempPathFactory, authority: CertificateAuthority, outside: str
) -> Iterator[GatewayService]:
    """A prod-mode gateway on 0.0.0.0 with DICOM TLS, its senders bound to hosts only
    (the client certificates name no sender: O is not a hospital)."""
    dicom, http, stow, orthanc_http, orthanc_dicom = free_ports(5)
    server = authority.server("gateway")
    settings = load_settings(
        home=tmp_path_factory.mktemp("exposed-gateway"),
        mode="prod",
        gateway_edge="pynetdicom",  # the gateway process's own DIMSE service, in process
        bind_host="0.0.0.0",  # noqa: S104 - the point of the test
        gateway_port=dicom,
        gateway_metrics_port=http,
        gateway_stow_port=stow,
        orthanc_http_port=orthanc_http,  # nothing listens: the forwarder just waits
        orthanc_dicom_port=orthanc_dicom,
        gateway_ae_title=AE_TITLE,
        gateway_tls_certificate=server.certificate,
        gateway_tls_private_key=server.key,
        api_tls_certificate=server.certificate,
        api_tls_private_key=server.key,
    )
    service = GatewayService(settings)
    service.senders.add_sender("ON_LOOPBACK", HOSPITAL, "127.0.0.1", actor=Actor.cli())
    service.senders.add_sender("ON_NETWORK", HOSPITAL, f"{outside}/32", actor=Actor.cli())
    service.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def peer(authority: CertificateAuthority) -> _Peer:
    return _Peer(authority.certificate, authority.client("peer", "ANY", None))


def test_gateway_http_answers_on_loopback_only(
    exposed_gateway: GatewayService, outside: str
) -> None:
    port = exposed_gateway.settings.gateway_metrics_port
    assert _listening(psutil.Process().pid) >= {("127.0.0.1", port)}
    assert not {a for a, p in _listening(psutil.Process().pid) if p == port} - {"127.0.0.1"}
    health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["ae_title"] == AE_TITLE
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert _refused(outside, port)  # a stranger learns nothing, not even that it is there


def test_dimse_beyond_loopback_admits_a_sender_from_its_host_only(
    exposed_gateway: GatewayService, peer: _Peer, outside: str
) -> None:
    port = exposed_gateway.settings.gateway_port
    assert ("0.0.0.0", port) in _listening(psutil.Process().pid)  # noqa: S104
    assert peer.echo("ON_LOOPBACK", "127.0.0.1", port).returncode == 0
    assert peer.echo("ON_NETWORK", outside, port).returncode == 0

    wrong_host = peer.echo("ON_LOOPBACK", outside, port)  # the peer address is `outside`
    assert wrong_host.returncode != 0
    assert "Calling AE Title Not Recognized" in wrong_host.stdout
    assert peer.echo("ON_NETWORK", "127.0.0.1", port).returncode != 0
    alerts = exposed_gateway.audit.search(actor=Actor.cli(), event_code="110113", limit=100)
    reasons = {
        (a["user_name"], a["source_address"]): a["detail"]["reason"]
        for a in alerts
        if a["detail"].get("via") != "cli"
    }
    assert 'registered for host "127.0.0.1"' in reasons[("ON_LOOPBACK", outside)]
    assert f'registered for host "{outside}/32"' in reasons[("ON_NETWORK", "127.0.0.1")]


def test_the_stow_door_beyond_loopback_speaks_https_only(
    exposed_gateway: GatewayService, authority: CertificateAuthority, outside: str
) -> None:
    port = exposed_gateway.settings.gateway_stow_port
    assert ("0.0.0.0", port) in _listening(psutil.Process().pid)  # noqa: S104
    accounts = Accounts(exposed_gateway.db, exposed_gateway.audit)
    name = f"door-tls-{uuid.uuid4().hex[:8]}"
    key = accounts.create_api_key(name, Role.PACS, hospital=HOSPITAL, actor=Actor.cli()).key
    data = synthetic_ct(generate_uid())
    headers = {"Content-Type": MULTIPART, "Authorization": f"Bearer {key}"}
    path = f"{outside}:{port}/dicom-web/studies"
    answer = httpx.post(
        f"https://{path}",
        content=_multipart(data),
        headers=headers,
        verify=str(authority.certificate),  # the API's certificate, made by tests/pki.py
        timeout=60,
    )
    assert answer.status_code == 200, answer.text  # spooled (Orthanc is not running)
    [stored] = answer.json()["00081199"]["Value"]
    assert stored["00081190"]["Value"][0].startswith("https://")  # the API's WADO-RS
    with pytest.raises(httpx.TransportError):  # plain HTTP gets no answer, only a closed socket
        httpx.post(f"http://{path}", content=_multipart(data), headers=headers, timeout=30)


def test_plain_dicom_is_refused_beyond_loopback(
    exposed_gateway: GatewayService, outside: str
) -> None:
    result = subprocess.run(
        [
            "echoscu",
            "-aet",
            "ON_NETWORK",
            "-aec",
            AE_TITLE,
            outside,
            str(exposed_gateway.settings.gateway_port),
        ],
        env=dcmtk_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0


@pytest.mark.parametrize("edge", EDGES, ids=edge_id)
def test_orthanc_answers_dicom_only_as_the_edge_and_the_gateway_http_is_on_loopback(
    request: pytest.FixtureRequest, edge: GatewayEdge
) -> None:
    """Behind the pynetdicom edge Orthanc's DICOM port is closed (only the gateway reaches it,
    over HTTP); as the edge, Orthanc answers DICOM on the gateway's port and nowhere else."""
    stack = stack_with_edge(request, edge)
    settings = stack.settings
    config = json.loads(settings.paths.orthanc_config.read_text())
    orthanc = {port for _, port in _listening(stack.pid("orthanc"))}
    assert settings.orthanc_dicom_port not in orthanc
    assert _refused("127.0.0.1", settings.orthanc_dicom_port)
    if edge is GatewayEdge.ORTHANC:
        assert config["DicomServerEnabled"] is True
        assert config["DicomPort"] == settings.gateway_port
        assert settings.gateway_port in orthanc
    else:
        assert config["DicomServerEnabled"] is False
        assert settings.gateway_port not in orthanc
    gateway = _listening(stack.pid("gateway"))
    assert {a for a, p in gateway if p == settings.gateway_metrics_port} == {"127.0.0.1"}
    assert wait_until(lambda: httpx.get(settings.gateway_health_url, timeout=5).is_success)
