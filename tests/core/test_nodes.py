"""The node registry (:mod:`core.nodes`) over a real SQLite database and real HTTPS: a node
behind a private CA with a bearer token, tenants and nodes listed together, a removed node's
hospital row kept while something refers to it, credentials never shown."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from core.archive import ArchiveQueryTooBroadError, NodeStatus
from core.audit import AuditTrail
from core.config import load_settings
from core.db import Database, upgrade
from core.db.models import Hospital, Sender
from core.nodes import NodeCredentials, NodeRegistry, validate_dicomweb_url
from core.security import Actor
from core.tenancy import hospital_row
from tests.pki import CertificateAuthority

TOKEN = "node-token-" + "t" * 40
_MANY = {"vr": "LO", "Value": ["MANY"]}
_WARNING = (
    '299 pacs: "The number of results exceeded the maximum supported by the server. '
    'Additional results can be requested."'
)


class _Qido(http.server.BaseHTTPRequestHandler):
    """A DICOMweb service root at /dicom-web that admits one bearer token."""

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send_response(401)
            self.end_headers()
            return
        found = []
        if "PatientID=MANY" in self.path:  # more than the node returns: it says so
            found = [{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}, "00100020": _MANY}]
        body = json.dumps(found).encode() if self.path.startswith("/dicom-web/studies") else b""
        self.send_response(200 if body else 404)
        if found:
            self.send_header("Warning", _WARNING)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tls_node(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS DICOMweb stand-in whose certificate a private CA signs: (URL, CA file)."""
    ca = CertificateAuthority(tmp_path / "pki")
    pair = ca.server()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pair.certificate, pair.key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Qido)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/dicom-web/", ca.certificate
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def registry(tmp_path: Path) -> NodeRegistry:
    settings = load_settings(home=tmp_path / "home")
    db = Database.from_settings(settings)
    upgrade(db)
    return NodeRegistry(db, AuditTrail(db, "test-audit-key-" + "k" * 32, "chain"), settings)


def test_a_node_behind_a_private_ca_with_a_token(
    registry: NodeRegistry, tls_node: tuple[str, Path]
) -> None:
    url, ca_file = tls_node
    token = NodeCredentials(token=TOKEN)
    actor = Actor.cli()
    node = registry.add_node("East", url, credentials=token, ca_file=ca_file, actor=actor)
    assert node.dicomweb_url == url.rstrip("/") and node.auth == "token"
    check = registry.check_node("East")
    assert check.status is NodeStatus.OK, check.reason

    registry.add_node("East-system-CAs", url, credentials=token, actor=actor)
    untrusted = registry.check_node("East-system-CAs")
    assert untrusted.status is NodeStatus.UNREACHABLE and "CERTIFICATE" in untrusted.reason.upper()
    gone = ca_file.with_name("gone.crt")
    gone.write_bytes(ca_file.read_bytes())
    registry.add_node("East-gone-CA", url, credentials=token, ca_file=gone, actor=actor)
    gone.unlink()
    lost = registry.check_node("East-gone-CA")
    assert lost.status is NodeStatus.ERROR and "gone.crt" in lost.reason
    wrong = NodeCredentials(token="not-" + TOKEN)
    registry.add_node("East-wrong", url, credentials=wrong, ca_file=ca_file, actor=actor)
    assert registry.check_node("East-wrong").status is NodeStatus.REFUSED

    assert TOKEN not in repr(registry.credentials("East")) + repr(node)
    assert registry.credentials("East") == token
    with registry.open_archive("East") as archive:
        assert TOKEN not in repr(archive)
        # a node that cuts a search short says so (PS3.18 8.3.4.1): refused, not taken whole
        with pytest.raises(ArchiveQueryTooBroadError):
            archive.search_for_studies({"PatientID": "MANY"})
        (paged,) = archive.search_for_studies({"PatientID": "MANY"}, limit=1)
        assert paged.study_instance_uid == "1.2.3"


def test_tenants_and_nodes_are_listed_and_a_referenced_hospital_is_kept(
    registry: NodeRegistry,
) -> None:
    actor = Actor.cli()
    with registry._db.session() as session:
        tenant = hospital_row(session, "Tenant A")
        session.add(Sender(ae_title="TENANT_A", hospital=tenant))
    registry.add_node("West", "http://127.0.0.1:1/dicom-web", actor=actor)
    registry.add_node("South", "http://127.0.0.1:2/dicom-web", actor=actor)
    sites = {site.name: site for site in registry.sites()}
    assert not sites["Tenant A"].is_remote
    assert sites["West"].remote is not None and sites["West"].remote.dicomweb_url.endswith(
        ":1/dicom-web"
    )
    assert [node.name for node in registry.list_nodes()] == ["South", "West"]

    with registry._db.session() as session:  # a sender of West's refers to it
        west = session.scalar(select(Hospital).where(Hospital.name == "West"))
        session.add(Sender(ae_title="WEST_GW", hospital=west))
    registry.remove_node("West", actor=actor)
    registry.remove_node("South", actor=actor)
    sites = {site.name: site for site in registry.sites()}
    assert set(sites) == {"Tenant A", "West"} and not sites["West"].is_remote


def test_urls_and_credentials_are_checked() -> None:
    assert validate_dicomweb_url(" https://pacs.example.org/dicom-web/ ") == (
        "https://pacs.example.org/dicom-web"
    )
    for bad in ("ftp://x/dicom-web", "pacs/dicom-web", "https://u:p@pacs/dicom-web"):
        with pytest.raises(ValueError, match="DICOMweb URL") as caught:
            validate_dicomweb_url(bad)
        assert ":p@" not in str(caught.value)
    with pytest.raises(ValueError):
        NodeCredentials(username="u", password="p", token="t")
    with pytest.raises(ValueError):
        NodeCredentials(username="u")
    assert "secret" not in repr(NodeCredentials("u", "secret"))
