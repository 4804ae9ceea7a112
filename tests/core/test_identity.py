"""The patient identity cross-reference in a real SQLite database: ingest registers a study's
identifiers, an authority rule links two hospitals' identifiers, manual links and unlinks are
audited and split keys correctly, a hospital's admin stays inside its hospitals, and
context tokens are bound to a purpose (and a treatment token to one patient)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydicom.dataset import Dataset
from sqlalchemy import select

from core.audit import AuditTrail
from core.config import load_settings
from core.db import Database, upgrade
from core.db.models import AuditEvent, Role
from core.exceptions import (
    AlreadyExistsError,
    AuthenticationError,
    IdentityLinkError,
    NoCareRelationshipError,
    NotFoundError,
    PermissionDeniedError,
)
from core.identity import (
    PatientIdentifier,
    PatientIdentity,
    issue_context_token,
    parse_system,
)
from core.security import Accounts, Actor, AuthMethod, Door, Principal, Purpose, TokenService
from core.tenancy import HospitalScope
from dicom_gateway.ownership import StudyOwnership
from dicom_gateway.validation import InstanceInfo, _other_patient_ids

A1 = PatientIdentifier("A", "A-0001", "HOSP_A")
B7 = PatientIdentifier("B", "B-77", "HOSP_B")
C5 = PatientIdentifier("C", "C-5", None)
OPERATOR = Actor("op", Door.CLI, scope=HospitalScope.platform())
ADMIN_A = Actor("admin-a", Door.HTTP, "admin", "10.0.0.1", HospitalScope.of(["A"]))
ADMIN_AB = Actor("admin-ab", Door.HTTP, "admin", "10.0.0.2", HospitalScope.of(["A", "B"]))


@pytest.fixture
def db(database_url: str) -> Database:
    database = Database(database_url)
    upgrade(database)
    return database


@pytest.fixture
def audit(db: Database) -> AuditTrail:
    return AuditTrail(db, "k" * 32, "c" * 32)


@pytest.fixture
def identity(db: Database, audit: AuditTrail) -> PatientIdentity:
    return PatientIdentity(db, audit)


def _records(db: Database, code: str) -> list[AuditEvent]:
    with db.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event_code == code)))


def _instance(
    uid: str,
    patient_id: str,
    issuer: str | None,
    others: Iterable[tuple[str, str | None]] = (),
) -> InstanceInfo:
    return InstanceInfo(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=uid + ".1",
        study_instance_uid=uid,
        series_instance_uid=uid + ".2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        patient_id=patient_id,
        issuer_of_patient_id=issuer,
        patient_name="DOE^JANE",
        other_patient_ids=tuple(others),
    )


def test_identifier_text_and_fhir_system_round_trip() -> None:
    assert PatientIdentifier.parse("A:HOSP_A:A-0001") == A1
    assert PatientIdentifier.parse("C::C-5") == C5
    assert PatientIdentifier.parse("A:ISS:id:with:colons").patient_id == "id:with:colons"
    assert str(A1) == "A:HOSP_A:A-0001"
    odd = PatientIdentifier("St Mary's: North", "1", "ISS/1")
    assert ":" not in odd.system.removeprefix("urn:radcloud:pid:").replace("%3A", "").split(":")[0]
    assert PatientIdentifier.from_fhir(odd.system, "1") == odd
    assert parse_system(C5.system) == ("C", None)
    assert parse_system("urn:radcloud:authority:NHS") == (None, "NHS")
    assert parse_system("http://example.org") is None
    with pytest.raises(ValueError, match="HOSPITAL:ISSUER:PATIENTID"):
        PatientIdentifier.parse("A-0001")


def test_other_patient_ids_sequence_is_read_with_issuers() -> None:
    ds = Dataset()
    first, second, empty = Dataset(), Dataset(), Dataset()
    first.PatientID, first.IssuerOfPatientID = "9434765919", "NHS"
    second.PatientID = "LAB-3"
    ds.OtherPatientIDsSequence = [first, second, empty]
    assert _other_patient_ids(ds) == (("9434765919", "NHS"), ("LAB-3", None))
    info = _instance("1.2.3", "A-0001", "HOSP_A", _other_patient_ids(ds))
    assert InstanceInfo.from_json(info.to_json()) == info  # through the spool header


def test_claiming_a_study_registers_its_identifiers(
    db: Database, audit: AuditTrail, identity: PatientIdentity
) -> None:
    ownership = StudyOwnership(db, audit)
    info = _instance("1.2.826.0.1.3680043.10.9.1", "A-0001", "HOSP_A", [("9434765919", "NHS")])
    ownership.admit(info, "A", sender="MODALITY_A", source="dimse")
    key = identity.key_for("A", "A-0001", "HOSP_A")
    assert key is not None and key.startswith("rcp-")
    assert identity.patient_of_study("1.2.826.0.1.3680043.10.9.1") == key
    assert identity.patient_of_study("1.2.826.0.1.3680043.10.9.2") is None
    # the other ID is hospital A's identifier of the same patient, asserted by its study
    assert identity.key_for("A", "9434765919", "NHS") == key
    assert identity.identifiers(key) == [
        PatientIdentifier("A", "9434765919", "NHS"),
        A1,
    ]
    registered = _records(db, "110110")
    assert len(registered) == 1
    assert registered[0].resource_id == key
    assert "A-0001" not in str(registered[0].detail)  # hashed, never the ID itself
    # a later instance of the study registers nothing new
    ownership.admit(
        _instance("1.2.826.0.1.3680043.10.9.1", "A-0001", "HOSP_A"),
        "A",
        sender="MODALITY_A",
        source="dimse",
    )
    assert len(_records(db, "110110")) == 1


def test_an_authority_rule_links_two_hospitals_and_removing_it_splits(
    db: Database, identity: PatientIdentity
) -> None:
    key_a = identity.register("A", "A-0001", "HOSP_A", [("9434765919", "NHS")])
    key_b = identity.register("B", "B-77", "HOSP_B", [("9434765919", "NHS")])
    key_c = identity.register("C", "9434765919", "NHS")  # NHS number as the Patient ID
    assert len({key_a, key_b, key_c}) == 3  # no rule yet: never matched on the value alone

    with pytest.raises(PermissionDeniedError):
        identity.add_authority("NHS", "national", actor=ADMIN_AB)
    identity.add_authority("NHS", "national", actor=OPERATOR)
    assert identity.key_for("B", "B-77", "HOSP_B") == key_a  # the older key is kept
    assert identity.key_for("C", "9434765919", "NHS") == key_a
    assert {i.hospital for i in identity.identifiers(key_a)} == {"A", "B", "C"}
    assert identity.current_key(key_b) == key_a  # a key merged away still resolves

    # a new hospital's study with the national number joins at ingest
    key_d = identity.register("D", "D-1", None, [("9434765919", "NHS")])
    assert key_d == key_a

    with pytest.raises(IdentityLinkError, match="authority rule"):
        identity.unlink(B7, "wrong patient", actor=OPERATOR)

    identity.remove_authority("NHS", actor=OPERATOR)
    assert identity.key_for("A", "A-0001", "HOSP_A") == key_a
    assert identity.key_for("B", "B-77", "HOSP_B") == key_b  # its own key back
    assert identity.key_for("C", "9434765919", "NHS") == key_c
    changes = [r.detail["change"] for r in _records(db, "110113") if r.outcome == 0]
    assert changes == ["authority rule added", "authority rule removed"]


def test_manual_link_and_unlink_are_audited_and_split_correctly(
    db: Database, identity: PatientIdentity
) -> None:
    key_a = identity.register("A", "A-0001", "HOSP_A")
    key_b = identity.register("B", "B-77", "HOSP_B")
    key_c = identity.register("C", "C-5")
    with pytest.raises(ValueError, match="reason"):
        identity.link(A1, B7, " ", actor=OPERATOR)
    assert identity.link(A1, B7, "same patient: referral letter 2026-11", actor=OPERATOR) == key_a
    assert identity.link(C5, B7, "same patient: phone call", actor=OPERATOR) == key_a
    with pytest.raises(AlreadyExistsError):
        identity.link(B7, A1, "again", actor=OPERATOR)
    assert {i.hospital for i in identity.identifiers(key_a)} == {"A", "B", "C"}
    links = identity.links(HospitalScope.platform(), patient_key=key_a)
    assert [(str(x.a), str(x.b), x.kind) for x in links] == [
        (str(A1), str(B7), "manual"),
        (str(B7), str(C5), "manual"),
    ]

    # unlinking B (the middle one) splits all three apart: each gets its own key back
    assert identity.unlink(B7, "letter was about another patient", actor=OPERATOR) == key_b
    assert identity.key_for("A", "A-0001", "HOSP_A") == key_a
    assert identity.key_for("C", "C-5") == key_c
    with pytest.raises(IdentityLinkError, match="no manual link"):
        identity.unlink(B7, "again", actor=OPERATOR)

    alerts = [r for r in _records(db, "110113")]
    done = [(r.detail["change"], r.outcome) for r in alerts]
    assert done.count(("identifiers linked", 0)) == 2
    assert ("identifier unlinked", 0) in done
    assert ("identifier unlinked", 4) in done  # the refused second unlink
    unlink = next(r for r in alerts if r.detail["change"] == "identifier unlinked")
    assert unlink.detail["reason"] == "letter was about another patient"
    assert unlink.user_name == "op"
    assert "B-77" not in str([r.detail for r in alerts])  # patient IDs only hashed


def test_a_hospital_admin_sees_and_links_only_its_hospitals(
    db: Database, identity: PatientIdentity
) -> None:
    identity.register("A", "A-0001", "HOSP_A")
    key_b = identity.register("B", "B-77", "HOSP_B")
    a2 = PatientIdentifier("A", "A-0002", "HOSP_A")
    key_a2 = identity.register("A", "A-0002", "HOSP_A")
    with pytest.raises(NotFoundError):  # B's identifier: answered as if it did not exist
        identity.link(A1, B7, "same patient", actor=ADMIN_A)
    assert identity.key_for("B", "B-77", "HOSP_B") == key_b
    refused = [r for r in _records(db, "110113") if r.outcome == 4]
    assert refused and refused[-1].user_name == "admin-a"
    # inside its own hospital it may link, and sees only A's identifiers
    identity.link(A1, a2, "duplicate registration", actor=ADMIN_A)
    assert identity.key_for("A", "A-0002", "HOSP_A") != key_a2
    listed = identity.patients(ADMIN_A.scope)
    assert {i.hospital for _, ids in listed for i in ids} == {"A"}
    # an admin of both hospitals may link across them; A's admin then still sees A's only
    key = identity.link(A1, B7, "same patient: referral", actor=ADMIN_AB)
    assert identity.identifiers(key, ADMIN_A.scope) == [A1, a2]
    assert all("A" in (x.a.hospital, x.b.hospital) for x in identity.links(ADMIN_A.scope))
    with pytest.raises(NotFoundError):
        identity.links(ADMIN_A.scope, identifier=B7)


def _principal(name: str, role: Role, hospitals: list[str]) -> Principal:
    return Principal(name, frozenset({role}), AuthMethod.TOKEN, scope=HospitalScope.of(hospitals))


def test_context_tokens_bind_purpose_and_patient(
    db: Database, audit: AuditTrail, identity: PatientIdentity, tmp_path: Path
) -> None:
    settings = load_settings(home=tmp_path, mode="dev")
    tokens = TokenService(settings, "s" * 32)
    key = identity.register("A", "A-0001", "HOSP_A")

    def issue(principal: Principal, purpose: str, **kw: object):  # type: ignore[no-untyped-def]
        actor = Actor.from_principal(principal, Door.HTTP, "10.0.0.9")
        return issue_context_token(
            principal,
            purpose,
            identity=identity,
            tokens=tokens,
            audit=audit,
            settings=settings,
            actor=actor,
            **kw,  # type: ignore[arg-type]
        )

    doctor_a = _principal("dr-a", Role.PEER_HOSPITAL, ["A"])
    treated = issue(doctor_a, "treatment", patient_key=key)
    verified = tokens.verify(treated.token)
    assert (verified.purpose, verified.patient_key, treated.break_glass) == (
        Purpose.TREATMENT,
        key,
        False,
    )
    assert treated.expires_in == settings.context_token_ttl_minutes * 60

    doctor_b = _principal("dr-b", Role.PEER_HOSPITAL, ["B"])
    with pytest.raises(NoCareRelationshipError):
        issue(doctor_b, "treatment", patient_key=key)
    glass = issue(doctor_b, "treatment", patient_key=key, reason="unconscious in our ED")
    assert glass.break_glass and tokens.verify(glass.token).reason == "unconscious in our ED"
    broke = [r for r in _records(db, "110113") if r.detail.get("break_glass")]
    assert len(broke) == 1 and broke[0].user_name == "dr-b" and broke[0].resource_id == key
    refused = [
        r for r in _records(db, "110113") if r.detail.get("change") == "context token refused"
    ]
    assert len(refused) == 1 and refused[0].outcome == 4

    with pytest.raises(NotFoundError):
        issue(doctor_a, "treatment", patient_key="rcp-unknown")
    researcher = _principal("res", Role.RESEARCHER, [])
    research = tokens.verify(issue(researcher, "research").token)
    assert (research.purpose, research.patient_key) == (Purpose.RESEARCH, None)
    with pytest.raises(PermissionDeniedError):  # a researcher never treats
        issue(researcher, "treatment", patient_key=key)
    with pytest.raises(ValueError):
        issue(researcher, "research", patient_key=key)


def test_token_claims_are_checked(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, mode="dev")
    tokens = TokenService(settings, "s" * 32)
    plain = tokens.verify(tokens.issue("u", [Role.RADIOLOGIST]))
    assert plain.purpose is None and plain.patient_key is None  # none, never "any"
    with pytest.raises(ValueError):
        tokens.issue("u", [Role.RADIOLOGIST], purpose="treatment")
    expired = tokens.issue("u", [Role.RADIOLOGIST], dt.timedelta(seconds=-5), purpose="research")
    with pytest.raises(AuthenticationError, match="expired"):
        tokens.verify(expired)
    forged = jwt.decode(
        tokens.issue("u", [Role.RADIOLOGIST], purpose="research"),
        options={"verify_signature": False},
    )
    forged["purpose"] = "marketing"
    with pytest.raises(AuthenticationError, match="not known"):
        tokens.verify(jwt.encode(forged, "s" * 32, algorithm="HS256"))


def test_a_researcher_sees_no_hospitals_identified_data(db: Database, audit: AuditTrail) -> None:
    accounts = Accounts(db, audit)
    accounts.add_user("res", Role.RESEARCHER, hospitals=["A"], actor=OPERATOR)
    assert accounts.get_user("res").hospitals == ("A",)  # what research may ask about
    assert accounts.user_scope("res") == HospitalScope()  # no identified data path opens


def test_an_oidc_token_states_purpose_and_patient_in_the_configured_claims(
    tmp_path: Path,
) -> None:
    key = rsa.generate_private_key(65537, 2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk | {"kid": "k1", "alg": "RS256"}]}))
    settings = load_settings(
        home=tmp_path,
        jwt_algorithm="RS256",
        jwt_jwks_url=(tmp_path / "jwks.json").as_uri(),
        jwt_jwks_issuer="https://idp.example",
        jwt_purpose_claim="context.purpose_of_use",
        jwt_patient_claim="context.patient",
    )
    base = {
        "sub": "dr-oidc",
        "aud": "radcloud",
        "iss": "https://idp.example",
        "exp": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
        "roles": ["peer_hospital"],
        "hospitals": ["A"],
    }
    service = TokenService(settings, "s" * 48)

    def verify(**claims: object) -> Principal:
        token = jwt.encode(base | claims, key, algorithm="RS256", headers={"kid": "k1"})
        return service.verify(token)

    treating = verify(context={"purpose_of_use": "treatment", "patient": "rcp-" + "0" * 32})
    assert (treating.purpose, treating.patient_key) == (Purpose.TREATMENT, "rcp-" + "0" * 32)
    assert verify().purpose is None  # no claim: no purpose
    # radcloud's own claim names mean nothing in an OIDC token configured otherwise
    assert verify(purpose="research").purpose is None
    with pytest.raises(AuthenticationError, match="names no patient"):
        verify(context={"purpose_of_use": "treatment"})
    with pytest.raises(AuthenticationError, match="not known"):
        verify(context={"purpose_of_use": ["treatment", "research"]})
