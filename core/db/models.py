"""The application database's tables (SQLAlchemy 2 declarative models).

Who writes what (docs/architecture.md has the full picture):

- platform (``radcloud``): ``users``, ``user_hospitals``, ``api_keys``, ``audit_events``,
  ``audit_head``
- gateway (``dicom_gateway``): ``hospitals``, ``senders``, ``move_destinations``, ``studies``,
  ``outbox_events``, ``change_cursors``
- identity (``core.identity``; the gateway registers at ingest): ``patient_identifiers``,
  ``patient_links``, ``patient_id_authorities``, ``patient_link_retractions``
- serving (``serving``): ``inference_results``, ``worklist_items``, ``shadow_results``; reading
  writes ``labels``;
  research cohorts (``serving.cohorts``): ``cohorts``, ``cohort_studies``; research retrieval
  (``serving.federation.research``): ``research_uids``
- core (``core.nodes``, ``radcloud hospitals``): ``remote_nodes``

Schema changes go through alembic migrations in ``radcloud/db/migrations``.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy import Enum as SAEnum
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

__all__ = [
    "ApiKey",
    "AuditEvent",
    "AuditHead",
    "Base",
    "ChangeCursor",
    "Hospital",
    "InferenceResult",
    "InferenceStatus",
    "Label",
    "MoveDestination",
    "OutboxEvent",
    "PatientIdAuthority",
    "PatientIdAuthorityKind",
    "PatientIdentifierEntry",
    "PatientLink",
    "PatientLinkKind",
    "PatientLinkRetraction",
    "ReadingStatus",
    "RemoteDicomwebNode",
    "Report",
    "Role",
    "Sender",
    "ShadowResult",
    "Study",
    "StudyState",
    "UTCDateTime",
    "User",
    "UserHospital",
    "WorklistItem",
    "utcnow",
]

UID = String(64)  # PS3.5 9.1: a UID is at most 64 characters


def utcnow() -> dt.datetime:
    """Timezone-aware current UTC time (stored as UTC)."""
    return dt.datetime.now(dt.UTC)


def _enum(enum_cls: type[StrEnum]) -> SAEnum:
    return SAEnum(
        enum_cls,
        values_callable=lambda members: [m.value for m in members],
        native_enum=False,
        validate_strings=True,
        length=32,
    )


class Role(StrEnum):
    """What a user or service account may do. Each route declares the roles it allows."""

    RADIOLOGIST = "radiologist"
    ML_ENGINEER = "ml_engineer"
    PACS = "pacs"  # ingest only
    PEER_HOSPITAL = "peer_hospital"  # cross-hospital lookup only
    ADMIN = "admin"
    RESEARCHER = "researcher"  # research purpose only: de-identified data across hospitals


class StudyState(StrEnum):
    """Where a study is in ingest: receiving instances, or complete and announced."""

    RECEIVING = "receiving"
    READY = "ready"


class InferenceStatus(StrEnum):
    """Outcome of one model version on one study."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ReadingStatus(StrEnum):
    """A study's place on the radiologists' worklist."""

    UNREAD = "unread"
    IN_PROGRESS = "in_progress"
    REPORTED = "reported"


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored as UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given: expected UTC-aware")
        return value.astimezone(dt.UTC)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base; timestamps are timezone-aware UTC."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: UTCDateTime(),
        dict[str, Any]: JSON,
    }


class Hospital(Base):
    """A hospital that sends studies."""

    __tablename__ = "hospitals"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    senders: Mapped[list[Sender]] = relationship(back_populates="hospital")


class Sender(Base):
    """A calling AE title allowed to store to the gateway, and its hospital."""

    __tablename__ = "senders"

    id: Mapped[int] = mapped_column(primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    hospital_id: Mapped[int] = mapped_column(ForeignKey("hospitals.id"))
    host: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    hospital: Mapped[Hospital] = relationship(back_populates="senders")


class MoveDestination(Base):
    """A DICOM node the gateway may send to on C-MOVE (by its AE title)."""

    __tablename__ = "move_destinations"

    id: Mapped[int] = mapped_column(primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    hospital_id: Mapped[int | None] = mapped_column(ForeignKey("hospitals.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Study(Base):
    """Ingest tracking of one study (by StudyInstanceUID)."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    hospital_id: Mapped[int | None] = mapped_column(ForeignKey("hospitals.id"))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    # with patient_id and patient_name, the identity of the study's first instance: every
    # later instance must carry the same (dicom_gateway.ownership)
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(String(8))
    modalities: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[StudyState] = mapped_column(_enum(StudyState), default=StudyState.RECEIVING)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    orthanc_id: Mapped[str | None] = mapped_column(String(64))
    first_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    ready_at: Mapped[dt.datetime | None]

    hospital: Mapped[Hospital | None] = relationship()


class OutboxEvent(Base):
    """A durable event (``study.ready``, ``study.updated``) for at-least-once consumers."""

    __tablename__ = "outbox_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    topic: Mapped[str] = mapped_column(String(64), index=True)
    key: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[dt.datetime | None] = mapped_column(index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Not before this time (retry backoff); None: at once.
    available_at: Mapped[dt.datetime | None] = mapped_column(index=True)


class ChangeCursor(Base):
    """How far a follower of the archive's change feed has read (the feed's ``seq``), written
    with what the changes up to it caused (:mod:`dicom_gateway.completeness`)."""

    __tablename__ = "change_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class InferenceResult(Base):
    """One model version's result on one study; unique per (study, model, version)."""

    __tablename__ = "inference_results"
    __table_args__ = (UniqueConstraint("study_id", "model_name", "model_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    status: Mapped[InferenceStatus] = mapped_column(_enum(InferenceStatus))
    score: Mapped[float | None] = mapped_column(Float)
    critical: Mapped[bool] = mapped_column(Boolean, default=False)
    findings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ShadowResult(Base):
    """A shadow version's run on a study beside production (``serving.shadow``): never shown on
    the worklist, notified or written to the archive; unique per (study, model, version).

    ``status`` is ``succeeded``, ``failed`` (the shadow could not answer: the study was not
    affected) or ``shed`` (not run: the live backlog was above the setting). The production
    columns are those of the production run on the same input, for the comparison; latencies
    are the model call and interpretation, CPU the triage worker's thread time of that step.
    """

    __tablename__ = "shadow_results"
    __table_args__ = (UniqueConstraint("study_id", "model_name", "model_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    production_version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Float)
    positive: Mapped[bool | None] = mapped_column(Boolean)
    production_score: Mapped[float | None] = mapped_column(Float)
    production_positive: Mapped[bool | None] = mapped_column(Boolean)
    # lesion_voxels, lesion_volume_ml, mask_dice (with production's mask): segmenters only
    findings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    cpu_ms: Mapped[float | None] = mapped_column(Float)
    production_latency_ms: Mapped[float | None] = mapped_column(Float)
    production_cpu_ms: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class WorklistItem(Base):
    """A study's reading state; ``version`` is the optimistic lock for claims."""

    __tablename__ = "worklist_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), unique=True)
    status: Mapped[ReadingStatus] = mapped_column(
        _enum(ReadingStatus), default=ReadingStatus.UNREAD
    )
    priority_class: Mapped[str] = mapped_column(String(16), default="routine")
    ai_score: Mapped[float | None] = mapped_column(Float)
    # the lead model's operating threshold, and whether ai_score is a calibrated probability
    ai_threshold: Mapped[float | None] = mapped_column(Float)
    ai_calibrated: Mapped[bool | None] = mapped_column(Boolean)
    # "pending", "succeeded", "failed" (AI could not process the study: it is read unaided)
    ai_status: Mapped[str] = mapped_column(String(16), default="pending")
    # When the study should be read at the latest (ready time + its class's maximum wait):
    # the worklist is ordered by it.
    due_at: Mapped[dt.datetime | None] = mapped_column(index=True)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[dt.datetime | None]
    reported_at: Mapped[dt.datetime | None]
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 - SQLAlchemy declares it


class Label(Base):
    """A radiologist-confirmed (or rejected) finding, used for retraining."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str | None] = mapped_column(UID)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    finding: Mapped[str] = mapped_column(String(128))
    present: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(32), default="radiologist")
    region: Mapped[dict[str, Any]] = mapped_column(default=dict)
    inference_result_id: Mapped[int | None] = mapped_column(ForeignKey("inference_results.id"))
    author: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Report(Base):
    """A radiologist's signed report of a study (its DICOM SR is in Orthanc), or an amendment.

    Append-only: a signed report is never altered nor deleted (the ORM refuses, below); it is
    amended by a new row and a new SR that references it (``serving.reading.amending``). The
    rows of a study, oldest first, are its versions: the signed report, then each amendment.
    """

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    author: Mapped[str] = mapped_column(String(128))
    text: Mapped[str] = mapped_column(Text)
    decisions: Mapped[list[Any]] = mapped_column(JSON, default=list)  # per AI finding
    added: Mapped[list[Any]] = mapped_column(JSON, default=list)  # findings the AI missed
    sr_sop_instance_uid: Mapped[str] = mapped_column(UID)
    sr_series_instance_uid: Mapped[str] = mapped_column(UID)
    signed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


@event.listens_for(Report, "before_update")
@event.listens_for(Report, "before_delete")
def _reports_are_append_only(_mapper: Any, _connection: Any, target: Report) -> None:
    raise ValueError(
        f"report {target.id} of study {target.study_id} is signed: it cannot be altered or "
        "deleted, only amended with a new report"
    )


class User(Base):
    """A person (or an identity from the hospital's OIDC provider) and their role.

    What studies the user sees: the hospitals of its ``user_hospitals`` rows, or every
    hospital's when ``platform_operator`` (:mod:`core.tenancy`); neither: nothing. An
    ``ml_engineer`` sees a hospital's identified data only where its row says ``identified``.
    """

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[Role] = mapped_column(_enum(Role))
    password_hash: Mapped[str | None] = mapped_column(String(256))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    platform_operator: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    hospitals: Mapped[list[Hospital]] = relationship(
        secondary="user_hospitals", order_by="Hospital.name", viewonly=True
    )
    assignments: Mapped[list[UserHospital]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )


class UserHospital(Base):
    """A user's explicit assignment to a hospital whose studies they read."""

    __tablename__ = "user_hospitals"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    hospital_id: Mapped[int] = mapped_column(ForeignKey("hospitals.id"), primary_key=True)
    # an ml_engineer sees this hospital's identified data only with it (de-identified otherwise)
    identified: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    hospital: Mapped[Hospital] = relationship()


class ApiKey(Base):
    """A service account's API key; only a SHA-256 of the secret part is stored.

    A key belongs to one hospital (what it stores by STOW-RS is that hospital's) or is a
    platform operator's; neither: it sees nothing.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[Role] = mapped_column(_enum(Role))
    hospital_id: Mapped[int | None] = mapped_column(ForeignKey("hospitals.id"))
    platform_operator: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None]

    hospital: Mapped[Hospital | None] = relationship()
    revoked_at: Mapped[dt.datetime | None]


class AuditEvent(Base):
    """One append-only audit record, modelled on DICOM PS3.15 A.5 / IHE ATNA.

    ``hash`` is the HMAC-SHA256, keyed with ``audit_chain_key`` from ``secrets.json``, of every
    other column plus ``prev_hash``, chaining each record to the one before (records of an
    older radcloud: a plain SHA-256, sealed by a keyed checkpoint, :mod:`core._audit_chain`);
    ``radcloud audit verify`` recomputes the chain.
    """

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    time: Mapped[dt.datetime] = mapped_column(index=True)
    event_code: Mapped[str] = mapped_column(String(16))  # DCM code, e.g. 110103
    event_name: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(1))  # C R U D E
    outcome: Mapped[int] = mapped_column(Integer)  # 0 success, 4 minor, 8 serious, 12 major
    user_name: Mapped[str | None] = mapped_column(String(128))
    role: Mapped[str | None] = mapped_column(String(32))
    source_address: Mapped[str | None] = mapped_column(String(64))
    resource_type: Mapped[str | None] = mapped_column(String(32))
    resource_id: Mapped[str | None] = mapped_column(String(128), index=True)
    patient_id_hash: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The chain's last sequence number and MAC, so deleting the newest records shows."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    hash: Mapped[str] = mapped_column(String(64))


class PatientIdAuthorityKind(StrEnum):
    """How wide an assigning authority's patient IDs are valid (IHE PIX "identity domain")."""

    ENTERPRISE = "enterprise"  # every hospital of one enterprise
    NATIONAL = "national"  # a national patient number


class PatientLinkKind(StrEnum):
    """Why two patient identifiers are linked (one rule each; never demographic matching)."""

    # one hospital's study named both: PatientID + IssuerOfPatientID and an item of its
    # OtherPatientIDsSequence (PS3.3 C.7.1.1)
    ASSERTED = "asserted"
    MANUAL = "manual"  # an administrator's link, with a written reason


class PatientIdentifierEntry(Base):
    """One hospital's patient identifier (PatientID within IssuerOfPatientID) and the radcloud
    patient key it belongs to (:mod:`core.identity`).

    ``own_key`` is the key the identifier got when first registered and keeps for ever;
    ``patient_key`` is the key of its linked group now: the ``own_key`` of the group's
    earliest identifier (so an identifier split off by an unlink gets its own key back).
    ``issuer_of_patient_id`` is ``""`` when the instance named none.
    """

    __tablename__ = "patient_identifiers"
    __table_args__ = (UniqueConstraint("hospital_id", "issuer_of_patient_id", "patient_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    hospital_id: Mapped[int] = mapped_column(ForeignKey("hospitals.id"), index=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_key: Mapped[str] = mapped_column(String(40), index=True)
    own_key: Mapped[str] = mapped_column(String(40), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    hospital: Mapped[Hospital] = relationship()


class PatientLink(Base):
    """An explicit link of two patient identifiers: asserted by a hospital's study, or an
    administrator's manual link. Links of an assigning authority are not rows: they follow
    from :class:`PatientIdAuthority`."""

    __tablename__ = "patient_links"
    __table_args__ = (UniqueConstraint("identifier_a_id", "identifier_b_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    identifier_a_id: Mapped[int] = mapped_column(ForeignKey("patient_identifiers.id"), index=True)
    identifier_b_id: Mapped[int] = mapped_column(ForeignKey("patient_identifiers.id"), index=True)
    kind: Mapped[PatientLinkKind] = mapped_column(_enum(PatientLinkKind))
    reason: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class PatientIdAuthority(Base):
    """An assigning authority (IssuerOfPatientID) registered as enterprise-wide or national:
    its identifiers of one value are one patient at whichever hospital they appear."""

    __tablename__ = "patient_id_authorities"

    id: Mapped[int] = mapped_column(primary_key=True)
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[PatientIdAuthorityKind] = mapped_column(_enum(PatientIdAuthorityKind))
    created_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class PatientLinkRetraction(Base):
    """An administrator's retraction of a hospital's assertion that two of its identifiers are
    one patient (an ``asserted`` :class:`PatientLink` found wrong): the link is gone, and while
    this row exists a study naming the two together again does not re-create it (``withheld``
    counts those studies). ``asserted_by`` and ``asserted_at`` are the retracted link's, so
    lifting the retraction restores it as it was."""

    __tablename__ = "patient_link_retractions"
    __table_args__ = (UniqueConstraint("identifier_a_id", "identifier_b_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    identifier_a_id: Mapped[int] = mapped_column(ForeignKey("patient_identifiers.id"), index=True)
    identifier_b_id: Mapped[int] = mapped_column(ForeignKey("patient_identifiers.id"), index=True)
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    asserted_by: Mapped[str | None] = mapped_column(String(128))
    asserted_at: Mapped[dt.datetime]
    withheld: Mapped[int] = mapped_column(Integer, default=0)


class RemoteDicomwebNode(Base):
    """A hospital that is a remote DICOMweb node (``radcloud hospitals add NAME --dicomweb``):
    another radcloud or any DICOMweb archive. Its credentials are not here but in
    ``RADCLOUD_HOME/node-credentials.json`` (:mod:`core.nodes`). A hospital without such a row
    is a tenant of this deployment."""

    __tablename__ = "remote_nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    hospital_id: Mapped[int] = mapped_column(
        ForeignKey("hospitals.id", ondelete="CASCADE"), unique=True
    )
    dicomweb_url: Mapped[str] = mapped_column(String(2048))
    ca_file: Mapped[str | None] = mapped_column(String(4096))
    timeout_s: Mapped[float | None] = mapped_column(Float)
    auth: Mapped[str] = mapped_column(String(16), default="none")  # basic, token, none
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    hospital: Mapped[Hospital] = relationship()


class ResearchUid(Base):
    """A study's research pseudonym (the keyed Study Instance UID a research answer showed)
    and the study it stands for, so a research retrieval names only the pseudonym
    (PS3.15 E.1: the de-identifier may keep the mapping; it never leaves radcloud)."""

    __tablename__ = "research_uids"

    deidentified_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    original_uid: Mapped[str] = mapped_column(UID)
    hospital_id: Mapped[int] = mapped_column(ForeignKey("hospitals.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Cohort(Base):
    """A research cohort (:mod:`serving.cohorts`): its query, who made it and when, the
    minimum cell size it was answered with, and the exact counts of its last run (per hospital,
    server-side only: answers show them suppressed)."""

    __tablename__ = "cohorts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None] = mapped_column(String(128))
    query: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    run_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    runs: Mapped[int] = mapped_column(Integer, default=1)
    min_cell_size: Mapped[int] = mapped_column(Integer)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)  # hospital -> exact count


class CohortStudy(Base):
    """One study of a cohort: the de-identified row the API shows, and, server-side only, the
    original Study Instance UID and hospital the training export fetches. ``listed`` is false
    for a study the answer leaves out of its list (its hospital's count is suppressed)."""

    __tablename__ = "cohort_studies"
    __table_args__ = (UniqueConstraint("cohort_id", "deid_study_instance_uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    cohort_id: Mapped[int] = mapped_column(ForeignKey("cohorts.id", ondelete="CASCADE"), index=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id", ondelete="SET NULL"))
    study_instance_uid: Mapped[str] = mapped_column(UID)  # the original: never answered
    hospital: Mapped[str] = mapped_column(String(128))  # the holder: never answered
    patient_key: Mapped[str] = mapped_column(String(400))  # keyed the pseudonym: never answered
    deid_study_instance_uid: Mapped[str] = mapped_column(UID)
    patient_pseudonym: Mapped[str] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(String(8))  # shifted
    modality: Mapped[str | None] = mapped_column(String(64))
    body_part: Mapped[str | None] = mapped_column(String(64))
    finding: Mapped[dict[str, Any]] = mapped_column(default=dict)
    listed: Mapped[bool] = mapped_column(Boolean, default=True)
