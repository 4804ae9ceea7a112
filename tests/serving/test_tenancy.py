"""The hospital boundary on the HTTP side, against the real stack of ``radcloud up``.

Two hospitals, A and B, each store a study by STOW-RS with their own API key; A has a
radiologist, an ML engineer and an admin, B a radiologist, and one reader is assigned to both.
Every route the OpenAPI lists that names a study answers A's users 404 for B's study (exactly
as for a study that does not exist), and no list, search or filter shows A's users anything of
B's; the reader assigned to both sees both.
"""

from __future__ import annotations

import io
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from core.audit import AuditTrail
from core.config import load_settings
from core.db.models import AuditEvent, Role, Study, StudyState, WorklistItem
from core.secrets import load_secrets
from core.security import Accounts, Actor, TokenService
from serving.api.app import create_app
from serving.worklist import WorklistPolicy, ensure_worklist_item
from tests.conftest import Stack
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

BOUNDARY = "radcloud-tenancy-7e1d"
MULTIPART = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
PATIENT_ID, PATIENT_NAME = "00100020", "00100010"


def _routes() -> list[tuple[str, str]]:
    """(method, path) of every route of the app's OpenAPI."""
    settings = load_settings(home=tempfile.gettempdir())
    paths: dict[str, dict[str, Any]] = create_app(settings).openapi()["paths"]
    return [(method.upper(), path) for path, ops in paths.items() for method in ops]


ROUTES = _routes()
FEDERATED = "/api/federated/"
"""The cross-hospital door: another hospital's study is reached there only with a
purpose-bound token of that study's patient (treatment) or by a research pseudonym; a guessed
study of another patient is 404 there too (tests/serving/test_federation_e2e.py). Here: a
hospital's users with their ordinary tokens are refused at that door (no purpose)."""
FEDERATED_ROUTES = [(m, p) for m, p in ROUTES if p.startswith(FEDERATED) and "{study" in p]
STUDY_ROUTES = [
    (method, path) for method, path in ROUTES if "{study" in path and not path.startswith(FEDERATED)
]
LIST_ROUTES = [path for method, path in ROUTES if method == "GET" and "{" not in path]


@dataclass
class Tenant:
    """A hospital's study as stored, and its identifiers."""

    hospital: str
    study: str
    series: str
    instance: str
    patient_id: str
    patient_name: str

    @property
    def identifiers(self) -> list[str]:
        """What must never reach another hospital's users."""
        return [self.study, self.series, self.instance, self.patient_id, self.patient_name]


@dataclass
class World:
    """The two hospitals, their studies and users' clients."""

    a: Tenant
    b: Tenant
    clients: dict[str, httpx.Client] = field(default_factory=dict)


def _instance(patient_id: str, patient_name: str) -> pydicom.Dataset:
    """A CT instance of a new study; the accession number is the run's tag, shared by both
    hospitals' studies (to search for them together: Orthanc matches it exactly)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.AccessionNumber = f"T{patient_id[-8:]}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName = patient_id, patient_name
    return ds


def _multipart(ds: pydicom.Dataset) -> bytes:
    with io.BytesIO() as buffer:
        pydicom.dcmwrite(buffer, ds)
        part = buffer.getvalue()
    delimiter = f"--{BOUNDARY}".encode()
    return (
        delimiter
        + b"\r\nContent-Type: application/dicom\r\n\r\n"
        + part
        + b"\r\n"
        + (delimiter + b"--\r\n")
    )


def _stow(client: httpx.Client, ds: pydicom.Dataset, study: str | None = None) -> httpx.Response:
    path = f"/dicom-web/studies/{study}" if study else "/dicom-web/studies"
    return client.post(path, content=_multipart(ds), headers={"Content-Type": MULTIPART})


def _client(stack: Stack, **headers: str) -> httpx.Client:
    return httpx.Client(base_url=stack.settings.api_url, headers=headers, timeout=60)


def _ready_and_listed(stack: Stack, uid: str, hospital: str) -> None:
    """Wait for the gateway to record the study, owned by ``hospital``; put it on the worklist
    if triage has not yet."""
    db = stack.database()
    try:

        def recorded() -> bool:
            with db.session() as session:
                study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
                return study is not None and study.state is StudyState.READY

        assert wait_until(recorded, timeout_s=90, interval_s=0.5), f"study {uid} never ready"
        with db.session() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
            assert study is not None and study.hospital is not None
            assert study.hospital.name == hospital  # STOW-RS: the key's hospital owns it

        def listed() -> bool:
            with db.session() as session:
                return (
                    session.scalar(
                        select(WorklistItem.id).join(Study).where(Study.study_instance_uid == uid)
                    )
                    is not None
                )

        if not wait_until(listed, timeout_s=30, interval_s=0.5):
            try:
                with db.session() as session:
                    study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
                    assert study is not None
                    ensure_worklist_item(session, study, WorklistPolicy())
            except IntegrityError:  # triage listed it meanwhile
                pass
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def world(stack: Stack) -> Iterator[World]:
    """Hospitals A and B with a STOW-RS study each, their users, and a reader of both."""
    tag = uuid.uuid4().hex[:8]
    a, b = f"Tenancy A {tag}", f"Tenancy B {tag}"
    # the command line, as an operator assigns: repeated --hospital, a key's --hospital
    stack.cli(
        "users", "add", f"reader-{tag}", "--role", "radiologist", "--hospital", a, "--hospital", b
    )
    key_b = stack.cli("apikeys", "create", f"pacs-b-{tag}", "--role", "pacs", "--hospital", b)
    db = stack.database()
    secrets = load_secrets(stack.settings)
    try:
        accounts = Accounts(db, AuditTrail.from_secrets(db, secrets))
        users = {
            "rad-a": (Role.RADIOLOGIST, [a]),
            "ml-a": (Role.ML_ENGINEER, [a]),
            "admin-a": (Role.ADMIN, [a]),
            "rad-b": (Role.RADIOLOGIST, [b]),
            "nobody": (Role.RADIOLOGIST, []),
            "pacs-none": (Role.PACS, []),
        }
        for name, (role, hospitals) in users.items():
            accounts.add_user(f"{name}-{tag}", role, hospitals=hospitals, actor=Actor.cli())
        key_a = accounts.create_api_key(f"pacs-a-{tag}", Role.PACS, hospital=a, actor=Actor.cli())
    finally:
        db.dispose()
    tokens = TokenService(stack.settings, secrets.jwt_signing_key)
    clients = {
        name: _client(stack, Authorization=f"Bearer {tokens.issue(f'{name}-{tag}', [role])}")
        for name, (role, _) in users.items()
    }
    reader = tokens.issue(f"reader-{tag}", [Role.RADIOLOGIST])
    clients["reader"] = _client(stack, Authorization=f"Bearer {reader}")
    clients["pacs-a"] = _client(stack, **{"X-API-Key": key_a.key})
    clients["pacs-b"] = _client(stack, **{"X-API-Key": key_b.stdout.strip().splitlines()[-1]})
    tenants = []
    for hospital, pacs in ((a, "pacs-a"), (b, "pacs-b")):
        letter = hospital[8]
        ds = _instance(f"TENANCY-{letter}-{tag}", f"Tenancy{letter}^{tag}")
        answer = _stow(clients[pacs], ds)
        assert answer.status_code == 200, answer.text
        tenants.append(
            Tenant(
                hospital,
                ds.StudyInstanceUID,
                ds.SeriesInstanceUID,
                ds.SOPInstanceUID,
                ds.PatientID,
                str(ds.PatientName),
            )
        )
    for tenant in tenants:
        _ready_and_listed(stack, tenant.study, tenant.hospital)
    try:
        yield World(tenants[0], tenants[1], clients)
    finally:
        for client in clients.values():
            client.close()


def _path(template: str, tenant: Tenant, study: str | None = None) -> str:
    values = {
        "study": study or tenant.study,
        "study_uid": study or tenant.study,
        "series": tenant.series,
        "instance": tenant.instance,
        "frames": "1",
        "bulk": "7FE00010",
        "result_id": "1",
        "model": "none",
        "hospital": quote(tenant.hospital, safe=""),
    }
    return template.format(**values)


def _call(client: httpx.Client, method: str, path: str, tenant: Tenant) -> httpx.Response:
    if method == "GET":
        return client.get(path)
    if path.startswith("/dicom-web/"):  # STOW-RS: an instance claiming the study's UID
        ds = _instance(tenant.patient_id, "Intruder^Test")
        ds.StudyInstanceUID = tenant.study
        return _stow(client, ds, tenant.study)
    return client.post(path, json={"version": 1, "text": "no acute findings"})


def _as_hospital_a(world: World, method: str, path: str, tenant: Tenant) -> httpx.Response:
    """The answer to A's first user whose role the route admits (403 is the role check)."""
    for name in ("rad-a", "ml-a", "admin-a", "pacs-a"):
        answer = _call(world.clients[name], method, path, tenant)
        if answer.status_code != 403:
            return answer
    raise AssertionError(f"{method} {path} admits none of hospital A's users")


def _not_found_is_ours(answer: httpx.Response, study: str) -> bool:
    if answer.status_code != 404:
        return False
    body: dict[str, Any] = answer.json()
    return body == {"error": "not_found", "detail": f'study "{study}" does not exist'}


def test_the_openapi_lists_the_routes_this_test_covers() -> None:
    assert len(STUDY_ROUTES) >= 20  # every DICOMweb and API route that names a study
    assert ("POST", "/api/studies/{study_uid}/sign") in STUDY_ROUTES
    assert ("POST", "/api/studies/{study_uid}/amend") in STUDY_ROUTES
    assert "/api/worklist" in LIST_ROUTES and "/dicom-web/studies" in LIST_ROUTES
    assert len(FEDERATED_ROUTES) >= 10  # treatment WADO-RS and research retrieval


@pytest.mark.parametrize(
    ("method", "template"), STUDY_ROUTES, ids=[f"{m} {p}" for m, p in STUDY_ROUTES]
)
def test_another_hospitals_study_is_not_found(
    world: World, stack: Stack, method: str, template: str
) -> None:
    b = world.b
    answer = _as_hospital_a(world, method, _path(template, b), b)
    assert _not_found_is_ours(answer, b.study), (answer.status_code, answer.text[:300])
    assert not any(value in answer.text for value in b.identifiers[1:])
    if method == "POST" and template.startswith("/dicom-web/"):
        return  # STOW-RS to an unknown study stores a new one: nothing to compare with
    # exactly as for a study that does not exist (but for the UID named)
    unknown = generate_uid()
    never = _as_hospital_a(world, method, _path(template, b, unknown), b)
    assert never.status_code == 404
    assert never.json() == {
        key: value.replace(b.study, unknown) if isinstance(value, str) else value
        for key, value in answer.json().items()
    }
    # the reader assigned to both hospitals is not turned away from B's study
    seen = _call(world.clients["reader"], method, _path(template, b), b)
    assert not _not_found_is_ours(seen, b.study), (seen.status_code, seen.text[:300])


@pytest.mark.parametrize(
    ("method", "template"), FEDERATED_ROUTES, ids=[f"{m} {p}" for m, p in FEDERATED_ROUTES]
)
def test_the_federated_door_refuses_a_token_without_purpose(
    world: World, method: str, template: str
) -> None:
    path = _path(template, world.b)
    for name in ("rad-a", "ml-a", "admin-a", "pacs-a"):
        answer = _call(world.clients[name], method, path, world.b)
        assert answer.status_code == 403, (name, answer.status_code, answer.text[:200])
        assert not any(value in answer.text for value in world.b.identifiers)


def test_a_refused_look_at_another_hospitals_study_is_audited(world: World, stack: Stack) -> None:
    answer = world.clients["rad-a"].get(f"/api/studies/{world.b.study}/viewer")
    assert answer.status_code == 404
    db = stack.database()
    try:
        with db.session() as session:
            alerts = session.scalars(
                select(AuditEvent).where(
                    AuditEvent.event_code == "110113", AuditEvent.resource_id == world.b.study
                )
            ).all()
    finally:
        db.dispose()
    assert any(alert.user_name.startswith("rad-a-") for alert in alerts)


def _searches(world: World) -> list[tuple[str, dict[str, Any]]]:
    b = world.b
    return [(path, {}) for path in LIST_ROUTES] + [
        ("/api/worklist", {"hospital": b.hospital}),
        ("/api/worklist", {"q": b.patient_id}),
        ("/api/worklist", {"status": ["unread", "in_progress", "reported"], "limit": 500}),
        ("/dicom-web/studies", {"StudyInstanceUID": b.study}),
        ("/dicom-web/studies", {"PatientID": b.patient_id}),
        ("/dicom-web/studies", {"AccessionNumber": f"T{b.patient_id[-8:]}", "includefield": "all"}),
        ("/dicom-web/series", {"StudyInstanceUID": b.study}),
        ("/dicom-web/series", {"Modality": "CT"}),
        ("/dicom-web/instances", {"PatientID": b.patient_id}),
        ("/dicom-web/instances", {"SOPInstanceUID": b.instance}),
    ]


def test_no_list_or_search_shows_another_hospitals_study(world: World) -> None:
    for name in ("rad-a", "ml-a", "admin-a", "pacs-a", "nobody"):
        for path, params in _searches(world):
            answer = world.clients[name].get(path, params=params)
            leaked = [value for value in world.b.identifiers if value in answer.text]
            assert not leaked, (name, path, params, answer.status_code, leaked)


def test_each_hospital_sees_its_own_and_the_shared_reader_both(world: World) -> None:
    a, b = world.a, world.b

    def seen(name: str, path: str, **params: Any) -> set[str]:
        answer = world.clients[name].get(path, params=params)
        assert answer.status_code == 200, answer.text
        return {uid for uid in (a.study, b.study) if uid in answer.text}

    for path, params in (
        ("/dicom-web/studies", {"AccessionNumber": f"T{a.patient_id[-8:]}"}),
        ("/api/worklist", {"q": a.patient_id[-8:], "status": ["unread", "in_progress"]}),
    ):
        assert seen("rad-a", path, **params) == {a.study}
        assert seen("rad-b", path, **params) == {b.study}
        assert seen("reader", path, **params) == {a.study, b.study}
        assert seen("nobody", path, **params) == set()
    assert world.clients["reader"].get(f"/api/studies/{b.study}/viewer").status_code == 200
    assert world.clients["rad-b"].get(f"/api/studies/{b.study}/viewer").status_code == 200
    me = world.clients["reader"].get("/api/me").json()
    assert me["hospitals"] == sorted([a.hospital, b.hospital])
    assert me["platform_operator"] is False


def test_search_pages_hold_only_the_callers_matches(world: World) -> None:
    """A page is taken after another hospital's matches are dropped: never emptied by them."""
    a, b = world.a, world.b
    both = {"AccessionNumber": f"T{a.patient_id[-8:]}"}
    for limit_and_offset in ({"limit": 1}, {"limit": 1, "offset": 0}):
        answer = world.clients["rad-a"].get("/dicom-web/studies", params=both | limit_and_offset)
        assert answer.status_code == 200, answer.text
        assert [m["0020000D"]["Value"][0] for m in answer.json()] == [a.study]
    past = world.clients["rad-a"].get("/dicom-web/studies", params=both | {"offset": 1})
    assert past.json() == []
    pages = [
        world.clients["reader"].get("/dicom-web/studies", params=both | {"limit": 1, "offset": n})
        for n in (0, 1)
    ]
    assert sorted(m["0020000D"]["Value"][0] for p in pages for m in p.json()) == sorted(
        [a.study, b.study]
    )
    worklist = world.clients["rad-a"].get(
        "/api/worklist", params={"q": a.patient_id[-8:], "status": ["unread", "in_progress"]}
    )
    assert worklist.json()["total"] == 1  # counts only the caller's


def test_stow_stores_for_the_keys_hospital_only(world: World, stack: Stack) -> None:
    # B's key stored B's study (the fixture checks the owner); a credential of no single
    # hospital cannot store, and nothing is stored
    ds = _instance("TENANCY-X", "Nobody^Stores")
    operator = _client(stack, Authorization=f"Bearer {stack.token_for('admin')}")
    for client in (world.clients["pacs-none"], operator):
        answer = _stow(client, ds)
        assert answer.status_code == 403, answer.text
    search = operator.get("/dicom-web/studies", params={"StudyInstanceUID": ds.StudyInstanceUID})
    assert search.json() == []
    operator.close()
    # a key of A storing into B's study by its UID: B's study is not found for A
    intruder = _instance("TENANCY-X", "Intruder^Test")
    intruder.StudyInstanceUID = world.b.study
    answer = _stow(world.clients["pacs-a"], intruder, world.b.study)
    assert _not_found_is_ours(answer, world.b.study)


def test_stow_of_an_instance_claiming_another_hospitals_study_is_refused(
    world: World, stack: Stack
) -> None:
    # no study in the URL: the gateway itself refuses to let it join B's study (0xC409)
    intruder = _instance(world.b.patient_id, world.b.patient_name)
    intruder.StudyInstanceUID = world.b.study
    answer = _stow(world.clients["pacs-a"], intruder)
    assert answer.status_code == 409, answer.text
    [failed] = answer.json()["00081198"]["Value"]  # Failed SOP Sequence
    assert failed["00081197"]["Value"] == [0xC409]  # Failure Reason
    assert failed["00081155"]["Value"] == [intruder.SOPInstanceUID]
    db = stack.database()
    try:
        with db.session() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == world.b.study))
            assert study is not None and study.hospital is not None
            assert study.hospital.name == world.b.hospital  # the owner never changes
            assert study.instance_count == 1
    finally:
        db.dispose()


def test_admins_assign_hospitals_through_the_api_within_their_own(
    world: World, stack: Stack
) -> None:
    a, b = world.a, world.b
    tag = a.hospital.split()[-1]
    admin = world.clients["admin-a"]
    listed = {user["name"] for user in admin.get("/api/users").json()}
    assert {f"rad-a-{tag}", f"ml-a-{tag}", f"reader-{tag}"} <= listed
    assert f"rad-b-{tag}" not in listed and f"nobody-{tag}" not in listed
    # another hospital's user is not found; another hospital is not the admin's to grant
    other = admin.post(f"/api/users/rad-b-{tag}/hospitals", json={"hospital": a.hospital})
    assert other.status_code == 404, other.text
    beyond = admin.post(f"/api/users/rad-a-{tag}/hospitals", json={"hospital": b.hospital})
    assert beyond.status_code == 403, beyond.text
    withdraw = admin.delete(f"/api/users/reader-{tag}/hospitals/{b.hospital}")
    assert withdraw.status_code == 403, withdraw.text
    for name in ("rad-a", "ml-a"):  # not an admin
        answer = world.clients[name].post(
            f"/api/users/rad-a-{tag}/hospitals", json={"hospital": a.hospital}
        )
        assert answer.status_code == 403

    # the ML engineer of A sees A's identified data only once granted, and not after
    ml = world.clients["ml-a"]

    def ml_sees_a() -> bool:
        found = ml.get("/dicom-web/studies", params={"StudyInstanceUID": a.study})
        assert found.status_code == 200, found.text
        return a.study in found.text and a.patient_id in found.text

    assert not ml_sees_a()
    assert ml.get(f"/api/studies/{a.study}/results").status_code == 404
    path = f"/api/users/ml-a-{tag}/hospitals"
    granted = admin.post(path, json={"hospital": a.hospital, "identified": True})
    assert granted.status_code == 200, granted.text
    assert granted.json()["identified_hospitals"] == [a.hospital]
    try:
        assert ml_sees_a()
        assert ml.get(f"/api/studies/{a.study}/results").status_code == 200
    finally:
        plain = admin.post(path, json={"hospital": a.hospital, "identified": False})
        assert plain.status_code == 200 and plain.json()["identified_hospitals"] == []
    assert not ml_sees_a()

    # a reader of A alone, withdrawn and given back
    tmp = f"reader-{tag}"
    removed = admin.delete(f"/api/users/{tmp}/hospitals/{a.hospital}")
    assert removed.status_code == 200 and removed.json()["hospitals"] == [b.hospital]
    assert world.clients["reader"].get(f"/api/studies/{a.study}/viewer").status_code == 404
    # no longer assigned any of A's hospitals: no longer A's admin's user
    assert admin.post(f"/api/users/{tmp}/hospitals", json={"hospital": a.hospital}).status_code == (
        404
    )
    operator = _client(stack, Authorization=f"Bearer {stack.token_for('admin')}")
    try:
        back = operator.post(f"/api/users/{tmp}/hospitals", json={"hospital": a.hospital})
        assert back.status_code == 200 and back.json()["hospitals"] == sorted(
            [a.hospital, b.hospital]
        )
    finally:
        operator.close()
    db = stack.database()
    try:
        with db.session() as session:
            records = session.scalars(
                select(AuditEvent).where(
                    AuditEvent.event_code == "110113", AuditEvent.resource_id == f"ml-a-{tag}"
                )
            ).all()
    finally:
        db.dispose()
    grants = [
        r.detail.get("identified") for r in records if r.detail.get("change") == "hospital assigned"
    ]
    assert grants[-2:] == [True, False]  # each grant and withdrawal audited
