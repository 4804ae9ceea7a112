"""patient identity cross-reference: identifiers, their links, assigning authorities

``patient_identifiers`` holds each hospital's (PatientID, IssuerOfPatientID) with its radcloud
patient key; ``patient_links`` the explicit links (asserted by a study's
OtherPatientIDsSequence, or an administrator's manual link); ``patient_id_authorities`` the
issuers registered as enterprise-wide or national (:mod:`core.identity`). Existing studies get
no identifiers here: the gateway registers those of studies claimed from now on.

The new ``researcher`` role needs no change: ``role`` columns are VARCHAR(32) without a CHECK
constraint (``native_enum=False``, SQLAlchemy 2 creates none).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "patient_identifiers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("hospital_id", sa.Integer(), sa.ForeignKey("hospitals.id"), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("issuer_of_patient_id", sa.String(64), nullable=False),
        sa.Column("patient_key", sa.String(40), nullable=False),
        sa.Column("own_key", sa.String(40), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("hospital_id", "issuer_of_patient_id", "patient_id"),
    )
    op.create_index("ix_patient_identifiers_hospital_id", "patient_identifiers", ["hospital_id"])
    op.create_index("ix_patient_identifiers_patient_key", "patient_identifiers", ["patient_key"])
    op.create_table(
        "patient_links",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "identifier_a_id",
            sa.Integer(),
            sa.ForeignKey("patient_identifiers.id"),
            nullable=False,
        ),
        sa.Column(
            "identifier_b_id",
            sa.Integer(),
            sa.ForeignKey("patient_identifiers.id"),
            nullable=False,
        ),
        sa.Column(
            "kind",
            sa.Enum("asserted", "manual", name="patientlinkkind", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("identifier_a_id", "identifier_b_id", "kind"),
    )
    op.create_index("ix_patient_links_identifier_a_id", "patient_links", ["identifier_a_id"])
    op.create_index("ix_patient_links_identifier_b_id", "patient_links", ["identifier_b_id"])
    op.create_table(
        "patient_id_authorities",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("issuer_of_patient_id", sa.String(64), nullable=False, unique=True),
        sa.Column(
            "kind",
            sa.Enum(
                "enterprise",
                "national",
                name="patientidauthoritykind",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("created_by", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("patient_id_authorities")
    op.drop_index("ix_patient_links_identifier_b_id", "patient_links")
    op.drop_index("ix_patient_links_identifier_a_id", "patient_links")
    op.drop_table("patient_links")
    op.drop_index("ix_patient_identifiers_patient_key", "patient_identifiers")
    op.drop_index("ix_patient_identifiers_hospital_id", "patient_identifiers")
    op.drop_table("patient_identifiers")
