"""The scratch federation the federation suite measures (:mod:`benchmarks.federation`).

- remote nodes: plain Orthanc instances with their DICOMweb plugin and basic authentication
  (:func:`radcloud.services.orthanc_component`), each in its own temporary home on free ports;
- :class:`SlowProxy`: a small threaded HTTP proxy that holds every request a fixed delay before
  forwarding it to its Orthanc (the artificially slow node);
- :class:`SilentNode`: a TCP port that accepts connections and never answers;
- radcloud itself: a temporary ``RADCLOUD_HOME`` (SQLite), two tenants (North, South), a
  national assigning authority, one patient registered at both tenants and known by the
  national number at the remote nodes, a peer-hospital clinician, and the HTTP API under
  uvicorn in its own process (not Ray Serve: no models are needed), so that the measuring
  client and the server do not share an interpreter.

Every study is SYNTHETIC (:func:`benchmarks.viewer.synthetic_ct`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from pydicom import Dataset
from pydicom.uid import generate_uid

from benchmarks._env import free_ports, scratch_settings

__all__ = [
    "NATIONAL_ISSUER",
    "Federation",
    "RemoteOrthanc",
    "SilentNode",
    "SlowProxy",
    "encode",
    "scratch_federation",
    "study_instances",
]

logger = logging.getLogger(__name__)

NATIONAL_ISSUER = "NHS"
"""The national assigning authority the benchmark's patient is linked by."""

_CLINICIAN = "bench-dr-north"
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
    }
)


class SlowProxy:
    """An HTTP proxy on a free loopback port that sleeps ``delay_s`` before forwarding each
    request to ``upstream`` (answers are read whole, then passed on with their status and
    headers: meant for QIDO-RS answers, not for large retrievals).

    Parameters
    ----------
    upstream
        The origin forwarded to (``http://127.0.0.1:PORT``); the request's path is kept.
    delay_s
        The added delay per request.
    """

    def __init__(self, upstream: str, delay_s: float) -> None:
        self.upstream = upstream.rstrip("/")
        self.delay_s = delay_s
        self._client = httpx.Client(timeout=60.0)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Orthanc itself

            def do_GET(self) -> None:
                proxy._forward(self)

            def do_POST(self) -> None:
                proxy._forward(self)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("slow proxy: " + format, *args)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="slow-proxy", daemon=True
        )
        self._thread.start()

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        time.sleep(self.delay_s)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            answer = self._client.request(
                handler.command, self.upstream + handler.path, headers=headers, content=body
            )
        except httpx.HTTPError as exc:
            handler.send_error(502, f"upstream {self.upstream} failed: {exc}")
            return
        handler.send_response(answer.status_code)
        for name, value in answer.headers.multi_items():
            if name.lower() not in _HOP_BY_HOP:
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(answer.content)))
        handler.end_headers()
        handler.wfile.write(answer.content)

    def close(self) -> None:
        """Stop serving and close the upstream connections."""
        self._server.shutdown()
        self._server.server_close()
        self._client.close()


class SilentNode:
    """A loopback port that accepts TCP connections and never answers (a hung node)."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, name="silent-node", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._socket.accept()
            except OSError:  # closed
                return
            self._held.append(connection)  # held open, never read, never answered

    def close(self) -> None:
        """Close every held connection and the listening socket."""
        self._closed.set()
        self._socket.close()
        for connection in self._held:
            connection.close()


@dataclass
class RemoteOrthanc:
    """A running remote node: its name, DICOMweb service root and basic credentials."""

    name: str
    dicomweb_url: str
    username: str
    password: str

    def client(self, timeout_s: float = 60.0) -> httpx.Client:
        """A keep-alive HTTP client of the node's DICOMweb, authenticated."""
        return httpx.Client(
            base_url=self.dicomweb_url, auth=(self.username, self.password), timeout=timeout_s
        )


def encode(dataset: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file."""
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def study_instances(
    template: Sequence[Dataset],
    *,
    patient_id: str,
    patient_name: str,
    study_date: str,
    issuer_of_patient_id: str | None = None,
) -> list[Dataset]:
    """``template``'s slices as a new study (fresh Study, Series and SOP Instance UIDs) of
    another patient."""
    study, series = generate_uid(), generate_uid()
    out = []
    for source in template:
        dataset = copy.deepcopy(source)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.PatientID, dataset.PatientName = patient_id, patient_name
        dataset.StudyDate = dataset.SeriesDate = study_date
        dataset.AccessionNumber = f"A{study[-8:]}"
        if issuer_of_patient_id:
            dataset.IssuerOfPatientID = issuer_of_patient_id
        out.append(dataset)
    return out


@dataclass
class Federation:
    """The running scratch federation (see the module docstring)."""

    api_url: str
    home: Path
    settings: Any  # core.config.Settings of the radcloud deployment
    nodes: dict[str, RemoteOrthanc]  # name -> the node itself (the direct baseline)
    reached_at: dict[str, str]  # name -> the DICOMweb root radcloud is registered with
    patient_key: str
    national_id: str
    slow: str | None
    tenants: tuple[str, ...] = ("North", "South")
    _extra: list[str] = field(default_factory=list)

    def treatment_token(self) -> str:
        """A fresh treatment context token for the patient (``POST /api/auth/context-token``)."""
        from core.db.models import Role
        from core.secrets import load_secrets
        from core.security import TokenService

        tokens = TokenService(self.settings, load_secrets(self.settings).jwt_signing_key)
        bearer = tokens.issue(_CLINICIAN, [Role.PEER_HOSPITAL])
        answer = httpx.post(
            f"{self.api_url}/api/auth/context-token",
            json={"purpose": "treatment", "patient": self.patient_key},
            headers={"Authorization": f"Bearer {bearer}"},
            timeout=30,
        )
        answer.raise_for_status()
        token: str = answer.json()["access_token"]
        return token

    def add_node(self, name: str, url: str, timeout_s: float | None = None) -> None:
        """Register one more remote node (no credentials) while the API runs: the federated
        search reads the registered nodes per search."""
        from core.security import Actor

        with self._registry() as registry:
            registry.add_node(name, f"{url}/dicom-web", timeout_s=timeout_s, actor=Actor.cli())

    def remove_node(self, name: str) -> None:
        """Unregister a node added by :meth:`add_node`."""
        from core.security import Actor

        with self._registry() as registry:
            registry.remove_node(name, actor=Actor.cli())

    @contextlib.contextmanager
    def _registry(self) -> Iterator[Any]:
        from core.audit import AuditTrail
        from core.db import Database
        from core.nodes import NodeRegistry
        from core.secrets import load_secrets

        db = Database.from_settings(self.settings)
        try:
            trail = AuditTrail.from_secrets(db, load_secrets(self.settings))
            yield NodeRegistry(db, trail, self.settings)
        finally:
            db.dispose()


@contextlib.contextmanager
def _remote_orthanc(home: Path, name: str) -> Iterator[RemoteOrthanc]:
    from core.secrets import load_secrets
    from radcloud.services import Supervisor, orthanc_component

    settings = scratch_settings(home)
    http = settings.orthanc_http_port
    secrets = load_secrets(settings)
    supervisor = Supervisor(settings, [orthanc_component(settings, secrets, as_edge=False)])
    supervisor.up()
    try:
        yield RemoteOrthanc(
            name,
            f"http://127.0.0.1:{http}/dicom-web",
            secrets.orthanc_user,
            secrets.orthanc_password,
        )
    finally:
        supervisor.down()


def _api_component(settings: Any) -> Any:
    """radcloud's HTTP API under uvicorn in a child process (no Ray Serve, no models)."""
    import functools

    from core.config import settings_env
    from radcloud.services.supervisor import Component, http_ok

    return Component.create(
        settings,
        name="api",
        argv=[
            sys.executable,
            "-m",
            "uvicorn",
            "serving.api.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(settings.api_port),
            "--log-level",
            "warning",
        ],
        ports=[(settings.api_port, "RADCLOUD_API_PORT")],
        health=functools.partial(http_ok, f"{settings.api_url}/healthz"),
        url=str(settings.api_url),
        env=settings_env(settings),
    )


def _tenant_study(db: Any, hospital: str, patient_id: str, issuer: str, date: str) -> str:
    from core.db.models import Study, StudyState
    from core.tenancy import hospital_row

    uid = generate_uid()
    with db.session() as session:
        session.add(
            Study(
                study_instance_uid=uid,
                hospital_id=hospital_row(session, hospital).id,
                patient_id=patient_id,
                issuer_of_patient_id=issuer,
                patient_name="SYNTHETIC^PATIENT",
                patient_birth_date="19700101",
                accession_number=f"ACC{patient_id}",
                study_date=date,
                modalities="CT",
                state=StudyState.READY,
                instance_count=1,
            )
        )
    return uid


def _prepare_deployment(
    settings: Any, nodes: dict[str, RemoteOrthanc], reached_at: dict[str, str], national: str
) -> str:
    """Tenants, the clinician, the nodes and the patient's identity; the patient key."""
    from core.audit import AuditTrail
    from core.db import Database, upgrade
    from core.db.models import Role
    from core.identity import PatientIdentity
    from core.nodes import NodeCredentials, NodeRegistry
    from core.secrets import load_secrets
    from core.security import Accounts, Actor

    db = Database.from_settings(settings)
    try:
        upgrade(db)
        trail = AuditTrail.from_secrets(db, load_secrets(settings))
        Accounts(db, trail).add_user(
            _CLINICIAN, Role.PEER_HOSPITAL, hospitals=["North"], actor=Actor.cli()
        )
        registry = NodeRegistry(db, trail, settings)
        for name, node in nodes.items():
            registry.add_node(
                name,
                reached_at[name],
                credentials=NodeCredentials(node.username, node.password),
                actor=Actor.cli(),
            )
        identity = PatientIdentity(db, trail)
        identity.add_authority(NATIONAL_ISSUER, "national", actor=Actor.cli())
        key = identity.register("North", "N-1", "MRN-N", [(national, NATIONAL_ISSUER)])
        identity.register("South", "S-77", "MRN-S", [(national, NATIONAL_ISSUER)])
        for n in range(3):
            _tenant_study(db, "North", "N-1", "MRN-N", f"2025011{n}")
        _tenant_study(db, "South", "S-77", "MRN-S", "20230505")
        return str(key)
    finally:
        db.dispose()


@contextlib.contextmanager
def scratch_federation(
    tmp: Path,
    *,
    node_names: Sequence[str],
    slow: str | None,
    delay_s: float,
    node_data: dict[str, list[bytes]],
    national_id: str,
    connect_timeout_s: float = 1.0,
) -> Iterator[Federation]:
    """Start the remote nodes (storing ``node_data[name]`` into each), the slow proxy in
    front of ``slow``, and radcloud's API with the nodes registered; stop all on exit.

    Raises
    ------
    RuntimeError
        A node refused some of its instances.
    """
    from core.archive import DicomwebArchive
    from core.config import load_settings
    from radcloud.services import Supervisor

    with contextlib.ExitStack() as stack:
        nodes: dict[str, RemoteOrthanc] = {}
        for name in node_names:
            nodes[name] = stack.enter_context(_remote_orthanc(tmp / f"node-{name}", name))
            data = node_data.get(name, [])
            if data:
                with DicomwebArchive(
                    nodes[name].dicomweb_url,
                    username=nodes[name].username,
                    password=nodes[name].password,
                    read_timeout_s=300.0,
                    name=name,
                ) as archive:
                    outcomes = archive.store_instances(data)
                refused = [o for o in outcomes if isinstance(o, Exception)]
                if refused:
                    raise RuntimeError(
                        f"node {name} refused {len(refused)} instances: {refused[0]}"
                    )
        reached_at = {name: node.dicomweb_url for name, node in nodes.items()}
        if slow is not None:
            origin = nodes[slow].dicomweb_url.removesuffix("/dicom-web")
            proxy = SlowProxy(origin, delay_s)
            stack.callback(proxy.close)
            reached_at[slow] = f"{proxy.url}/dicom-web"
        api_port, orthanc_http, orthanc_dicom, gateway, metrics = free_ports(5)
        settings = load_settings(
            home=tmp / "radcloud",
            mode="dev",
            api_port=api_port,
            orthanc_http_port=orthanc_http,
            orthanc_dicom_port=orthanc_dicom,
            gateway_port=gateway,
            gateway_metrics_port=metrics,
            remote_connect_timeout_s=connect_timeout_s,
            log_level="WARNING",
        )
        settings.paths.home.mkdir(parents=True, exist_ok=True)
        key = _prepare_deployment(settings, nodes, reached_at, national_id)
        supervisor = Supervisor(settings, [_api_component(settings)])
        supervisor.up()
        stack.callback(supervisor.down)
        yield Federation(
            api_url=str(settings.api_url).rstrip("/"),
            home=tmp / "radcloud",
            settings=settings,
            nodes=nodes,
            reached_at=reached_at,
            patient_key=key,
            national_id=national_id,
            slow=slow,
        )
