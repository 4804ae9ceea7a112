"""The gateway's internal STOW endpoint (``dicom_gateway.stow``, contract ``core.ingest``) on
its real HTTP listener, with a real spool and quarantine in ``tmp_path``, called over HTTP as
the API process calls it; and the rule that importing the gateway changes no global state.
"""

from __future__ import annotations

import http.client
import io
import json
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from core.ingest import STOW_PATH, FailureReason
from dicom_gateway._http import GatewayHttpServer
from dicom_gateway.intake import Intake
from dicom_gateway.quarantine import Quarantine
from dicom_gateway.spool import Spool
from tests.dicom_gateway.dicom_files import study_ownership, synthetic_ct

KEY = "test-ingest-key-" + "k" * 32
HOSPITAL = "STOW Hospital"


@dataclass
class Endpoint:
    """A running listener and what lies behind it."""

    url: str
    spool: Spool
    quarantine: Quarantine

    def post(self, data: bytes, *, key: str | None = KEY, **params: str) -> httpx.Response:
        headers = {"Content-Type": "application/dicom"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        query = {"hospital": HOSPITAL} | params
        return httpx.post(self.url, content=data, params=query, headers=headers, timeout=30)


@pytest.fixture
def make_endpoint(tmp_path: Path) -> Iterator[Callable[..., Endpoint]]:
    """Start listeners on free ports (stopped at teardown); keywords: spool limits."""
    servers: list[GatewayHttpServer] = []

    def start(limit_bytes: int = 100_000_000, min_free_bytes: int = 0) -> Endpoint:
        home = tmp_path / f"gateway{len(servers)}"
        spool = Spool(home / "spool", limit_bytes, min_free_bytes)
        quarantine = Quarantine(home / "quarantine")
        server = GatewayHttpServer(
            ("127.0.0.1", 0),
            health=lambda: {"status": "ok"},
            intake=Intake(spool, quarantine, 10_000_000, study_ownership(home)),
            ingest_key=KEY,
            timeout_s=30,
        )
        server.start()
        servers.append(server)
        return Endpoint(f"http://127.0.0.1:{server.port}{STOW_PATH}", spool, quarantine)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def endpoint(make_endpoint: Callable[..., Endpoint]) -> Endpoint:
    return make_endpoint()


def _study(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID)


def test_instance_is_spooled_before_the_answer(endpoint: Endpoint) -> None:
    data = synthetic_ct()
    answer = endpoint.post(data)
    assert answer.status_code == 200
    body: dict[str, Any] = answer.json()
    assert body["status"] == 0
    assert body["patient_id"] == "SYNTH-001"
    [entry] = list(endpoint.spool.entries())
    assert entry.info.sop_instance_uid == body["sop_instance_uid"]
    assert entry.read_dicom()[128:] == data[128:]
    assert entry.sender_ae_title is None
    assert entry.hospital == HOSPITAL  # the sending API key's: the study's owner


def test_an_instance_without_an_owning_hospital_is_refused(endpoint: Endpoint) -> None:
    for hospital in ("", " ", "x" * 129):
        answer = endpoint.post(synthetic_ct(), hospital=hospital)
        assert answer.status_code == 400
        assert "hospital" in answer.json()["detail"]
    assert not list(endpoint.spool.entries())


def test_missing_or_wrong_key_is_401_and_stores_nothing(endpoint: Endpoint) -> None:
    data = synthetic_ct()
    assert endpoint.post(data, key=None).status_code == 401
    assert endpoint.post(data, key="guessed").status_code == 401
    assert endpoint.spool.usage().files == 0


def test_refusals_carry_their_failure_reason_and_are_quarantined(endpoint: Endpoint) -> None:
    no_study = synthetic_ct(drop=("StudyInstanceUID",))
    garbage = endpoint.post(b"not DICOM").json()
    nonconformant = endpoint.post(no_study).json()
    assert garbage["status"] == FailureReason.CANNOT_UNDERSTAND
    assert "DICM" in garbage["reason"]
    assert nonconformant["status"] == FailureReason.DOES_NOT_MATCH_SOP_CLASS
    assert "(0020,000D)" in nonconformant["reason"]
    assert nonconformant["sop_instance_uid"]  # labels of refused data, where readable
    assert not garbage["retry"] and not nonconformant["retry"]
    assert endpoint.quarantine.count() == 2
    assert endpoint.spool.usage().files == 0


def test_instance_with_a_path_traversal_uid_is_refused_and_quarantined(
    endpoint: Endpoint,
) -> None:
    ds = pydicom.dcmread(io.BytesIO(synthetic_ct()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom warns of the invalid UID
        ds.StudyInstanceUID = "../../x"
        buffer = io.BytesIO()
        ds.save_as(buffer)
    assert endpoint.post(buffer.getvalue(), study="../../x").status_code == 400
    assert endpoint.quarantine.count() == 0
    answer = endpoint.post(buffer.getvalue()).json()
    assert answer["status"] == FailureReason.DOES_NOT_MATCH_SOP_CLASS
    assert "StudyInstanceUID '../../x' is not a valid UID" in answer["reason"]
    assert not answer["retry"]
    [entry] = endpoint.quarantine.list()
    assert entry.source == "stow"
    assert "not a valid UID" in entry.reason
    assert endpoint.spool.usage().files == 0


def test_instance_of_another_study_is_neither_spooled_nor_quarantined(
    endpoint: Endpoint,
) -> None:
    data = synthetic_ct()
    other = endpoint.post(data, study="1.2.3.4").json()
    assert other["status"] == FailureReason.STUDY_MISMATCH
    assert other["study_instance_uid"] == _study(data)
    assert endpoint.quarantine.count() == 0
    assert endpoint.spool.usage().files == 0
    assert endpoint.post(data, study=_study(data)).json()["status"] == 0
    assert endpoint.post(data, study="../../etc").status_code == 400


def test_full_spool_is_out_of_resources_worth_a_retry(
    make_endpoint: Callable[..., Endpoint],
) -> None:
    endpoint = make_endpoint(min_free_bytes=2**60)  # more free disk than any disk has
    answer = endpoint.post(synthetic_ct()).json()
    assert answer["status"] == FailureReason.OUT_OF_RESOURCES
    assert answer["retry"] is True
    assert "free" in answer["reason"]


def test_body_over_the_instance_limit_is_refused_unread(endpoint: Endpoint) -> None:
    url = httpx.URL(endpoint.url)
    connection = http.client.HTTPConnection(url.host, url.port, timeout=30)
    try:  # only the headers are sent: the answer must not wait for the body
        connection.putrequest("POST", url.path)
        connection.putheader("Authorization", f"Bearer {KEY}")
        connection.putheader("Content-Length", "10000001")
        connection.endheaders()
        answer = connection.getresponse()
        assert answer.status == 413
        assert "10000000" in json.loads(answer.read())["detail"]
    finally:
        connection.close()


def test_importing_the_gateway_leaves_pydicom_config_unchanged() -> None:
    """Every module of the package imported under RAISE: the mode stays RAISE."""
    code = """
import importlib, json, pkgutil
import pydicom.config as config
config.settings.reading_validation_mode = config.RAISE
before = {k: repr(v) for k, v in vars(config).items() if not k.startswith("_")}
import dicom_gateway
for module in pkgutil.iter_modules(dicom_gateway.__path__):
    importlib.import_module(f"dicom_gateway.{module.name}")
after = {k: repr(v) for k, v in vars(config).items() if not k.startswith("_")}
print(json.dumps({
    "mode": config.settings.reading_validation_mode,
    "changed": sorted(k for k in before if before[k] != after.get(k)),
}))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"mode": pydicom.config.RAISE, "changed": []}
