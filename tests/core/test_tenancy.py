"""The hospital scope of principals, in the database: no hospital sees nothing, a hospital sees
its own studies, a platform operator all; assignments and who may grant them."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from core.audit import AuditTrail
from core.config import load_settings
from core.db import Database, upgrade
from core.db.models import AuditEvent, Hospital, Role, Study, StudyState
from core.exceptions import NotFoundError, PermissionDeniedError
from core.security import Accounts, Actor, Door, TokenService
from core.tenancy import (
    HospitalScope,
    OwnerAlreadySetError,
    assign_study_owner,
    find_hospital,
    hospital_row,
    require_study,
    study_in_scope,
    visible_study_uids,
)
from serving.worklist import WorklistPolicy, WorklistQuery, ensure_worklist_item, list_worklist

T0 = dt.datetime(2026, 12, 6, 8, 0, tzinfo=dt.UTC)
UIDS = {"A": "1.2.826.0.1.3680043.10.2.1", "B": "1.2.826.0.1.3680043.10.2.2", None: "1.2.3.9"}


@pytest.fixture
def db(database_url: str) -> Database:
    """Studies of hospitals A and B and one without an owner, each on the worklist."""
    database = Database(database_url)
    upgrade(database)
    with database.session() as session:
        for hospital, uid in UIDS.items():
            study = Study(
                study_instance_uid=uid,
                hospital=Hospital(name=hospital) if hospital else None,
                state=StudyState.READY,
                first_received_at=T0,
                last_received_at=T0,
                ready_at=T0,
            )
            session.add(study)
            session.flush()
            ensure_worklist_item(session, study, WorklistPolicy())
    return database


@pytest.fixture
def accounts(db: Database, tmp_path: Path) -> Accounts:
    return Accounts(db, AuditTrail(db, "k" * 32, "c" * 32))


def _visible(db: Database, scope: HospitalScope) -> dict[str, set[str]]:
    """What ``scope`` sees through each way of looking: one by one, as a set, the worklist."""
    with db.session() as session:
        one_by_one = {uid for uid in UIDS.values() if study_in_scope(session, uid, scope)}
        as_set = visible_study_uids(session, scope, UIDS.values())
        entries, total = list_worklist(session, WorklistQuery(), scope=scope)
    listed = {entry.study_instance_uid for entry in entries}
    assert total == len(listed)  # the count is of what the caller sees
    return {"one by one": one_by_one, "as a set": as_set, "worklist": listed}


def test_a_principal_without_hospitals_sees_nothing(db: Database) -> None:
    assert _visible(db, HospitalScope()) == {
        "one by one": set(),
        "as a set": set(),
        "worklist": set(),
    }
    with db.session() as session, pytest.raises(NotFoundError) as refused:
        require_study(session, UIDS["A"], HospitalScope())
    assert str(refused.value) == f'study "{UIDS["A"]}" does not exist'  # as for an unknown one


def test_a_hospital_sees_its_own_and_a_platform_operator_all(db: Database) -> None:
    assert all(seen == {UIDS["A"]} for seen in _visible(db, HospitalScope.of(["A"])).values())
    both = HospitalScope.of(["A", "B"])
    assert all(seen == {UIDS["A"], UIDS["B"]} for seen in _visible(db, both).values())
    everything = set(UIDS.values())  # the study without an owner only for the platform
    assert all(seen == everything for seen in _visible(db, HospitalScope.platform()).values())
    with db.session() as session:
        filtered, total = list_worklist(
            session, WorklistQuery(hospital="B"), scope=HospitalScope.of(["A"])
        )
    assert (filtered, total) == ([], 0)  # filtering by another hospital finds nothing


def test_users_and_api_keys_get_the_scope_of_their_assignments(accounts: Accounts) -> None:
    operator = Actor.cli()
    accounts.add_user("nobody", Role.RADIOLOGIST, actor=operator)
    accounts.add_user("reader", Role.RADIOLOGIST, hospitals=["A", "B"], actor=operator)
    accounts.add_user("ops", Role.ADMIN, platform_operator=True, actor=operator)
    assert accounts.user_scope("nobody") == HospitalScope()
    assert accounts.user_scope("reader") == HospitalScope.of(["A", "B"])
    assert accounts.user_scope("ops") == HospitalScope.platform()

    assert accounts.unassign_hospital("reader", "B", actor=operator).hospitals == ("A",)
    assert accounts.assign_hospital("nobody", "C", actor=operator).hospitals == ("C",)
    assert accounts.user_scope("nobody") == HospitalScope.of(["C"])
    with pytest.raises(NotFoundError):
        accounts.unassign_hospital("reader", "B", actor=operator)
    with pytest.raises(ValueError, match="platform operator"):
        accounts.assign_hospital("ops", "A", actor=operator)
    with pytest.raises(ValueError, match="not both"):
        accounts.add_user(
            "both", Role.ADMIN, hospitals=["A"], platform_operator=True, actor=operator
        )

    key = accounts.create_api_key("pacs-b", Role.PACS, hospital="B", actor=operator)
    stored = accounts.authenticate_api_key(key.key)
    assert stored.scope == HospitalScope.of(["B"]) and stored.scope.sole_hospital == "B"
    bare = accounts.create_api_key("bare", Role.PACS, actor=operator)
    assert accounts.authenticate_api_key(bare.key).scope == HospitalScope()
    assert [row[3] for row in accounts.list_api_keys()] == ["no hospital", "B"]


def test_only_a_platform_operator_grants_beyond_its_own_hospitals(
    accounts: Accounts, db: Database
) -> None:
    admin_of_a = Actor("admin-a", Door.HTTP, "admin", "127.0.0.1", HospitalScope.of(["A"]))
    accounts.add_user("rad-a", Role.RADIOLOGIST, hospitals=["A"], actor=admin_of_a)
    for grant in (
        lambda: accounts.add_user("rad-b", Role.RADIOLOGIST, hospitals=["B"], actor=admin_of_a),
        lambda: accounts.add_user("ops", Role.ADMIN, platform_operator=True, actor=admin_of_a),
        lambda: accounts.assign_hospital("rad-a", "B", actor=admin_of_a),
        lambda: accounts.create_api_key("pacs-b", Role.PACS, hospital="B", actor=admin_of_a),
    ):
        with pytest.raises(PermissionDeniedError):
            grant()
    assert accounts.user_scope("rad-a") == HospitalScope.of(["A"])
    with db.session() as session:
        refusals = session.scalars(
            select(AuditEvent).where(AuditEvent.user_name == "admin-a", AuditEvent.outcome == 4)
        ).all()
    assert len(refusals) == 4  # each refusal audited


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        ({"radcloud": {"hospitals": ["A", "B"]}}, HospitalScope.of(["A", "B"])),
        ({"radcloud": {"hospitals": "A"}}, HospitalScope.of(["A"])),
        ({}, HospitalScope()),  # no claim: no hospital, never all
        ({"radcloud": {"hospitals": ["*"]}}, HospitalScope.of(["*"])),  # no wildcard either
    ],
)
def test_an_oidc_token_names_its_hospitals_in_the_configured_claim(
    tmp_path: Path, claim: dict[str, object], expected: HospitalScope
) -> None:
    key = rsa.generate_private_key(65537, 2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk | {"kid": "k1", "alg": "RS256"}]}))
    settings = load_settings(
        home=tmp_path,
        jwt_algorithm="RS256",
        jwt_jwks_url=(tmp_path / "jwks.json").as_uri(),
        jwt_jwks_issuer="https://idp.example",
        jwt_hospitals_claim="radcloud.hospitals",
    )
    claims = {
        "sub": "dr-oidc",
        "aud": "radcloud",
        "iss": "https://idp.example",
        "exp": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
        "roles": ["radiologist"],
    }
    token = jwt.encode(claims | claim, key, algorithm="RS256", headers={"kid": "k1"})
    principal = TokenService(settings, "s" * 48).verify(token)
    assert principal.scope == expected
    assert not principal.scope.platform_operator
    assert not principal.scope.covers(None)


def test_an_ml_engineer_sees_identified_data_only_where_granted(accounts: Accounts) -> None:
    operator = Actor.cli()
    accounts.add_user("ml", Role.ML_ENGINEER, hospitals=["A", "B"], actor=operator)
    assert accounts.user_scope("ml") == HospitalScope()  # de-identified data only
    info = accounts.assign_hospital("ml", "A", identified=True, actor=operator)
    assert info.hospitals == ("A", "B") and info.identified_hospitals == ("A",)
    assert accounts.user_scope("ml") == HospitalScope.of(["A"])
    # the training export made for them: their hospitals, identifiers only where granted
    assert accounts.export_hospitals("ml", [], keep_identifiers=False) == ("A", "B")
    assert accounts.export_hospitals("ml", ["A"], keep_identifiers=True) == ("A",)
    with pytest.raises(PermissionDeniedError, match="de-identified data only of B"):
        accounts.export_hospitals("ml", ["B"], keep_identifiers=True)
    with pytest.raises(PermissionDeniedError):
        accounts.export_hospitals("ml", ["C"], keep_identifiers=False)
    # assigning again without the grant withdraws it; an API key never has one
    assert accounts.assign_hospital("ml", "A", actor=operator).identified_hospitals == ()
    assert accounts.user_scope("ml") == HospitalScope()
    key = accounts.create_api_key("ml-key", Role.ML_ENGINEER, hospital="A", actor=operator)
    assert accounts.authenticate_api_key(key.key).scope == HospitalScope()
    # the grant is for ml_engineers: a radiologist sees identified data of every assignment
    accounts.add_user("rad", Role.RADIOLOGIST, hospitals=["A"], actor=operator)
    assert accounts.user_scope("rad") == HospitalScope.of(["A"])


def test_a_hospitals_admin_manages_only_users_of_its_hospitals(accounts: Accounts) -> None:
    operator = Actor.cli()
    accounts.add_user("rad-a", Role.RADIOLOGIST, hospitals=["A"], actor=operator)
    accounts.add_user("rad-b", Role.RADIOLOGIST, hospitals=["B"], actor=operator)
    admin_of_a = Actor("admin-a", Door.HTTP, "admin", "127.0.0.1", HospitalScope.of(["A"]))
    listed = [user.name for user in accounts.list_users(HospitalScope.of(["A"]))]
    assert listed == ["rad-a"]
    assert {u.name for u in accounts.list_users(HospitalScope.platform())} == {"rad-a", "rad-b"}
    with pytest.raises(NotFoundError, match='user "rad-b"'):  # as if it did not exist
        accounts.assign_hospital("rad-b", "A", actor=admin_of_a)
    with pytest.raises(NotFoundError, match='user "rad-b"'):
        accounts.unassign_hospital("rad-b", "A", actor=admin_of_a)
    assert accounts.assign_hospital("rad-a", "A", identified=True, actor=admin_of_a).hospitals == (
        "A",
    )


def test_hospital_rows_are_looked_up_in_one_place(db: Database) -> None:
    with db.session() as session:
        first = hospital_row(session, "New Hospital")
        assert hospital_row(session, "New Hospital").id == first.id
        assert find_hospital(session, "New Hospital") is first
        assert find_hospital(session, "Nowhere") is None
        with pytest.raises(ValueError, match="must not be empty"):
            hospital_row(session, "  ")


def test_an_owner_less_study_gets_an_owner_once(db: Database) -> None:
    audit = AuditTrail(db, "k" * 32, "c" * 32)
    legacy = UIDS[None]
    admin_of_a = Actor("admin-a", Door.HTTP, "admin", "127.0.0.1", HospitalScope.of(["A"]))
    with pytest.raises(PermissionDeniedError):
        assign_study_owner(audit, legacy, "A", actor=admin_of_a)
    assign_study_owner(audit, legacy, "A", actor=Actor.cli())
    with db.session() as session:
        assert visible_study_uids(session, HospitalScope.of(["A"]), [legacy]) == {legacy}
    with pytest.raises(OwnerAlreadySetError, match='owned by hospital "A" already'):
        assign_study_owner(audit, legacy, "B", actor=Actor.cli())
    with pytest.raises(OwnerAlreadySetError, match='owned by hospital "B" already'):
        assign_study_owner(audit, UIDS["B"], "A", actor=Actor.cli())
    with pytest.raises(NotFoundError):
        assign_study_owner(audit, "1.2.3.404", "A", actor=Actor.cli())
    with db.session() as session:
        records = session.scalars(
            select(AuditEvent).where(AuditEvent.resource_id == legacy).order_by(AuditEvent.seq)
        ).all()
    assert [(r.outcome, r.detail.get("change")) for r in records] == [
        (4, "owner assigned"),
        (0, "owner assigned"),
        (4, "owner assigned"),
    ]
