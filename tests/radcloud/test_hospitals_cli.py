"""``radcloud hospitals add/list/check/remove`` through the real command line against a real
Orthanc with its DICOMweb plugin and basic authentication: the credentials stay in a 0600 file,
never in the database, the output or the audit trail; ``check`` tells ok, refused, unreachable
and timeout apart; every change is audited."""

from __future__ import annotations

import json
import shutil
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import Settings, load_settings
from core.secrets import Secrets, load_secrets
from radcloud.services import Supervisor, orthanc_component
from tests.audit_records import assert_cli_actor, audit_records, radcloud
from tests.helpers import free_port, free_ports

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Secrets]]:
    """The remote node: a plain Orthanc with its DICOMweb plugin and basic auth."""
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc is not installed: run `make install` (apt-get install orthanc)")
    http, dicom, api, gateway = free_ports(4)
    settings = load_settings(
        home=tmp_path_factory.mktemp("node-home"),
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
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        held: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            listener.settimeout(0.2)
            while not stop.is_set():
                try:
                    held.append(listener.accept()[0])
                except OSError:
                    continue

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        yield listener.getsockname()[1]
        stop.set()
        thread.join(2)
        for connection in held:
            connection.close()


def test_add_list_check_remove_a_remote_node(
    tmp_path: Path, orthanc: tuple[Settings, Secrets], silent_port: int
) -> None:
    settings, secrets = orthanc
    home = tmp_path / "home"
    url = f"{settings.orthanc_url}/dicom-web"
    password = secrets.orthanc_password
    outputs: list[str] = []

    def run(*args: str, stdin: str | None = None, code: int = 0) -> str:
        result = radcloud(home, *args, stdin=stdin)
        outputs.append(result.stdout + result.stderr)
        assert result.returncode == code, result.stdout + result.stderr
        return result.stdout + result.stderr

    user = secrets.orthanc_user
    run("hospitals", "add", "North", "--dicomweb", url, "--username", user, "--password-stdin",
        stdin=f"{password}\n")  # fmt: skip
    run("hospitals", "add", "Wrong", "--dicomweb", url, "--username", user, "--password-stdin",
        stdin="not-the-password\n")  # fmt: skip
    stopped = f"http://127.0.0.1:{free_port()}/dicom-web"
    run("hospitals", "add", "Stopped", "--dicomweb", stopped)
    silent = f"http://127.0.0.1:{silent_port}/dicom-web"
    run("hospitals", "add", "Silent", "--dicomweb", silent, "--timeout", "0.5")

    assert "ok" in run("hospitals", "check", "North")
    assert "refused" in run("hospitals", "check", "Wrong", code=1)
    assert "HTTP 401" in outputs[-1]
    assert "unreachable" in run("hospitals", "check", "Stopped", code=1)
    assert "timeout" in run("hospitals", "check", "Silent", code=1)

    assert "North" in run("hospitals", "list")
    listing = {
        entry["name"]: entry
        for entry in map(json.loads, run("hospitals", "list", "--json").splitlines())
    }
    assert listing["North"] == {
        "name": "North",
        "kind": "remote",
        "dicomweb_url": url,
        "auth": "basic",
        "timeout_s": None,
        "ca_file": None,
    }
    assert listing["Silent"]["timeout_s"] == 0.5 and listing["Stopped"]["auth"] == "none"

    # refused changes: a name taken, credentials in the URL, a username without a password
    assert "already exists" in run("hospitals", "add", "North", "--dicomweb", url, code=1)
    bad_url = f"http://{user}:{password}@127.0.0.1:1/dicom-web"
    assert "must not hold credentials" in run(
        "hospitals", "add", "Leaky", "--dicomweb", bad_url, code=2
    )
    run("hospitals", "add", "Half", "--dicomweb", url, "--username", user, code=2)

    credentials = home / "node-credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    stored = json.loads(credentials.read_text())
    assert stored["North"] == {"username": user, "password": password}
    assert "Stopped" not in stored  # no credentials, no entry

    run("hospitals", "remove", "North")
    assert "North" not in run("hospitals", "list", "--json")
    assert "North" not in json.loads(credentials.read_text())
    assert "does not exist" in run("hospitals", "remove", "North", code=1)

    # the password is nowhere but the credentials file (now without it)
    for path in home.rglob("*"):
        if path.is_file() and path != credentials:
            assert password.encode() not in path.read_bytes(), path
    assert not any(password in output for output in outputs)
    records = [r for r in audit_records(home) if r["resource_type"] == "remote_node"]
    assert not any(password in json.dumps(r["detail"], default=str) for r in records)
    created = [r for r in records if r["action"] == "C" and r["outcome"] == 0]
    assert [r["resource_id"] for r in created] == ["North", "Wrong", "Stopped", "Silent"]
    assert created[0]["detail"]["dicomweb_url"] == url
    assert created[0]["detail"]["auth"] == "basic"
    assert_cli_actor(created[0])
    refused = [r for r in records if r["action"] == "C" and r["outcome"] == 4]
    assert {r["resource_id"] for r in refused} == {"North", "Leaky"}
    removed = [r for r in records if r["action"] == "D"]
    assert [(r["resource_id"], r["outcome"]) for r in removed] == [("North", 0), ("North", 4)]
