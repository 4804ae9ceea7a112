"""Encryption in transit and Ray's isolation, on a real radcloud (issue 14, items 4 and 8).

``exposed`` is a prod-mode radcloud started with ``radcloud up`` on 0.0.0.0, with HTTPS on the API
(Serve's proxy, certificates of ``tests/pki.py``) and DICOM TLS on the gateway, and with its
token signing key and webhook signing key given as environment variables, as an operator would.
The tests connect through loopback and through this machine's own non-loopback address, read
which addresses every process of the Ray cluster listens on (psutil), and read Ray's own state
(the GCS actor and job tables) and session logs for secret values.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from core.config import is_loopback_host
from core.secrets import load_secrets
from serving.api._headers import CONTENT_SECURITY_POLICY
from tests.conftest import RADCLOUD, Stack, settings_from_env, stack_env
from tests.helpers import wait_until
from tests.pki import CertificateAuthority, non_loopback_address

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JWT_SECRET = "jwt-secret-given-in-the-environment-0123456789"
NOTIFY_KEY = "notify-key-given-in-the-environment-0123456789"


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("transport-pki"))


@pytest.fixture(scope="module")
def exposed(
    tmp_path_factory: pytest.TempPathFactory, authority: CertificateAuthority
) -> Iterator[Stack]:
    """A prod radcloud on 0.0.0.0 with HTTPS and DICOM TLS, secrets in its environment."""
    server = authority.server()
    env = stack_env(
        tmp_path_factory.mktemp("radcloud-exposed"),
        mode="prod",
        bind_host="0.0.0.0",  # noqa: S104 - the point of the test
        api_tls_certificate=server.certificate,
        api_tls_private_key=server.key,
        gateway_tls_certificate=server.certificate,
        gateway_tls_private_key=server.key,
        jwt_secret=JWT_SECRET,
        notify_signing_key=NOTIFY_KEY,
    )
    running = Stack(env, settings_from_env(env))
    try:
        running.cli("up")  # inside: a start that fails stops what it did start
        yield running
    finally:
        running.cli("down", check=False)


def _https(stack: Stack, authority: CertificateAuthority, host: str = "127.0.0.1") -> httpx.Client:
    context = ssl.create_default_context(cafile=str(authority.certificate))
    return httpx.Client(
        base_url=f"https://{host}:{stack.settings.api_port}", verify=context, timeout=30
    )


def _ray_processes(stack: Stack) -> list[psutil.Process]:
    """The serving process and every process it started: Ray's GCS, raylet, agents, workers."""
    root = psutil.Process(stack.pid("api"))
    return [root, *root.children(recursive=True)]


def _listening(processes: list[psutil.Process]) -> set[tuple[str, int, str]]:
    found = set()
    for process in processes:
        try:
            connections = process.net_connections(kind="tcp")
            name = process.name()
        except psutil.NoSuchProcess:  # a worker that just exited
            continue
        found |= {
            (c.laddr.ip, c.laddr.port, name) for c in connections if c.status == psutil.CONN_LISTEN
        }
    return found


def _loopback(address: str) -> bool:
    return is_loopback_host(address.removeprefix("::ffff:"))


# -- HTTPS -----------------------------------------------------------------------------------


def test_the_api_speaks_https_only_with_its_certificate(
    exposed: Stack, authority: CertificateAuthority
) -> None:
    assert exposed.settings.api_url.startswith("https://")
    for host in ("127.0.0.1", non_loopback_address()):
        with _https(exposed, authority, host) as client:
            assert client.get("/healthz").status_code == 200
    with pytest.raises(httpx.HTTPError):  # plain HTTP gets no answer
        httpx.get(f"http://127.0.0.1:{exposed.settings.api_port}/healthz", timeout=10)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://127.0.0.1:{exposed.settings.api_port}/healthz", timeout=10)


def test_a_token_signed_with_the_environments_key_is_accepted_by_the_replicas(
    exposed: Stack, authority: CertificateAuthority
) -> None:
    """The replicas read the signing key themselves (it is not in Ray's runtime env)."""
    token = exposed.token_for("admin")
    with _https(exposed, authority) as client:
        answer = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        forged = client.get("/api/me", headers={"Authorization": f"Bearer {token[:-4]}AAAA"})
        assert forged.status_code == 401


@pytest.mark.parametrize(
    ("path", "status"),
    [("/app/", 200), ("/healthz", 200), ("/api/worklist", 401), ("/api/nowhere", 404)],
)
def test_every_answer_carries_the_security_headers(
    exposed: Stack, authority: CertificateAuthority, path: str, status: int
) -> None:
    with _https(exposed, authority) as client:
        answer = client.get(path)
    assert answer.status_code == status, answer.text[:200]
    headers = answer.headers
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY.split("script-src")[1].split(";")[0]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert headers["strict-transport-security"].startswith("max-age=")


def test_prod_refuses_to_listen_beyond_loopback_without_tls(tmp_path: Path) -> None:
    for tls, missing in (
        ({}, "RADCLOUD_API_TLS_CERTIFICATE and RADCLOUD_GATEWAY_TLS_CERTIFICATE"),
        (
            {"RADCLOUD_API_TLS_CERTIFICATE": "a.crt", "RADCLOUD_API_TLS_PRIVATE_KEY": "a.key"},
            "expected RADCLOUD_GATEWAY_TLS_CERTIFICATE",
        ),
    ):
        env = stack_env(tmp_path / "home", mode="prod", bind_host="0.0.0.0") | tls  # noqa: S104
        result = subprocess.run(
            [*RADCLOUD, "up"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode != 0
        message = " ".join(result.stderr.split())
        assert "RADCLOUD_BIND_HOST" in message and missing in message, result.stderr
        assert not (tmp_path / "home" / "run").exists() or not any(
            (tmp_path / "home" / "run").glob("*.pid")
        )
    dev = stack_env(tmp_path / "dev", mode="dev", bind_host="0.0.0.0")  # noqa: S104
    assert settings_from_env(dev).bind_host == "0.0.0.0"  # noqa: S104 - dev allows plain text


# -- Ray isolation ---------------------------------------------------------------------------


def test_ray_listens_on_loopback_only(exposed: Stack) -> None:
    listening = _listening(_ray_processes(exposed))
    names = {name for _, _, name in listening}
    assert {"gcs_server", "raylet"} <= names, names  # the right processes were looked at
    beyond = {(a, p, n) for a, p, n in listening if not _loopback(a)}
    # the only door: Serve's HTTPS proxy on bind_host:api_port
    assert {(a, p) for a, p, _ in beyond} == {("0.0.0.0", exposed.settings.api_port)}, beyond  # noqa: S104


_RAY_STATE = """
import json, sys
import ray
from ray._private import state
from ray.core.generated import gcs_pb2

ray.init(address=sys.argv[1], logging_level="ERROR")
accessor = state.state._connect_and_get_accessor()
actors = [gcs_pb2.ActorTableData.FromString(raw) for raw in accessor.get_actor_table(None, None)]
jobs = [
    gcs_pb2.JobTableData.FromString(raw)
    for raw in accessor.get_job_table(
        skip_submission_job_info_field=False, skip_is_running_tasks_field=True
    )
]
print(json.dumps({
    "actors": {a.class_name: a.serialized_runtime_env for a in actors},
    "jobs": [str(j) for j in jobs],
}))
"""


def _gcs_address(processes: list[psutil.Process]) -> str:
    """The GCS address the raylet was given (``--gcs-address=IP:PORT``)."""
    [raylet] = [p for p in processes if p.name() == "raylet"]
    addresses = {a.split("=", 1)[1] for a in raylet.cmdline() if a.startswith("--gcs-address=")}
    [address] = addresses
    return str(address)


def _log_dir(processes: list[psutil.Process]) -> Path:
    [gcs] = [p for p in processes if p.name() == "gcs_server"]
    [log_dir] = [a.split("=", 1)[1] for a in gcs.cmdline() if a.startswith("--log_dir=")]
    return Path(log_dir)


def test_no_secret_travels_in_rays_state_or_logs(exposed: Stack) -> None:
    secrets = load_secrets(exposed.settings)
    values = {
        "jwt_secret": JWT_SECRET,
        "notify_signing_key": NOTIFY_KEY,
        "audit_hmac_key": secrets.audit_hmac_key,
        "orthanc_password": secrets.orthanc_password,
        "gateway_ingest_key": secrets.gateway_ingest_key,
        "deid_hmac_key": secrets.deid_hmac_key,
    }
    processes = _ray_processes(exposed)
    dumped = subprocess.run(
        [sys.executable, "-c", _RAY_STATE, _gcs_address(processes)],
        # a driver of this machine, with the token Ray made for its local clusters
        env={**exposed.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dumped.returncode == 0, dumped.stderr[-3000:]
    state = json.loads(dumped.stdout.strip().splitlines()[-1])
    runtime_envs = state["actors"]
    # the check looks where the settings are: the API replica's runtime env holds them
    [api_env] = [env for name, env in runtime_envs.items() if "api" in name.lower()]
    assert str(exposed.settings.home) in api_env and "RADCLOUD_API_PORT" in api_env
    text = json.dumps(state)
    assert [name for name, value in values.items() if value in text] == []

    logs = _log_dir(processes)
    files = [path for path in logs.rglob("*") if path.is_file()]
    assert len(files) > 5, logs
    leaked = {
        path.name: name
        for path in files
        for name, value in values.items()
        if value.encode() in path.read_bytes()
    }
    assert leaked == {}


def test_the_api_alone_under_uvicorn_speaks_https_too(
    tmp_path: Path, authority: CertificateAuthority
) -> None:
    """``python -m serving.api`` (the API without Ray) takes the same certificate settings."""
    server = authority.server("uvicorn")
    env = stack_env(
        tmp_path / "home",
        api_tls_certificate=server.certificate,
        api_tls_private_key=server.key,
    )
    settings = settings_from_env(env)
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.api"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    context = ssl.create_default_context(cafile=str(authority.certificate))
    url = f"https://127.0.0.1:{settings.api_port}/healthz"

    def healthy() -> bool:
        try:
            return httpx.get(url, verify=context, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_until(healthy, timeout_s=120, interval_s=0.5), "uvicorn did not answer"
        answer = httpx.get(url, verify=context, timeout=5)
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert answer.headers["strict-transport-security"].startswith("max-age=")
    finally:
        process.terminate()
        process.wait(timeout=30)
