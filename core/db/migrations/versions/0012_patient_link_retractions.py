"""retracted patient-identity assertions: ``patient_link_retractions``

An administrator may retract a link a hospital's own study asserted (PatientID with an item of
OtherPatientIDsSequence) when it is wrong: the ``asserted`` row of ``patient_links`` is removed
and a row here, with the written reason, keeps later studies naming the two identifiers
together from re-creating it until the retraction is lifted (:mod:`core.identity`).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "patient_link_retractions",
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
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("asserted_by", sa.String(128), nullable=True),
        sa.Column("asserted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("withheld", sa.Integer(), nullable=False),
        sa.UniqueConstraint("identifier_a_id", "identifier_b_id"),
    )
    op.create_index(
        "ix_patient_link_retractions_identifier_a_id",
        "patient_link_retractions",
        ["identifier_a_id"],
    )
    op.create_index(
        "ix_patient_link_retractions_identifier_b_id",
        "patient_link_retractions",
        ["identifier_b_id"],
    )


def downgrade() -> None:
    op.drop_index(
        "ix_patient_link_retractions_identifier_b_id", table_name="patient_link_retractions"
    )
    op.drop_index(
        "ix_patient_link_retractions_identifier_a_id", table_name="patient_link_retractions"
    )
    op.drop_table("patient_link_retractions")
