"""research cohorts: ``cohorts`` and ``cohort_studies``

A cohort (:mod:`serving.cohorts`) stores its query, who made it and when, the minimum cell size
of its answer and its exact counts per hospital; each study of it its de-identified row and,
for the training export only, the original Study Instance UID and hospital.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cohorts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(128), nullable=True),
        sa.Column("query", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("min_cell_size", sa.Integer(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
    )
    op.create_table(
        "cohort_studies",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "cohort_id",
            sa.Integer(),
            sa.ForeignKey("cohorts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "study_id",
            sa.Integer(),
            sa.ForeignKey("studies.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("hospital", sa.String(128), nullable=False),
        sa.Column("patient_key", sa.String(400), nullable=False),
        sa.Column("deid_study_instance_uid", sa.String(64), nullable=False),
        sa.Column("patient_pseudonym", sa.String(64), nullable=False),
        sa.Column("study_date", sa.String(8), nullable=True),
        sa.Column("modality", sa.String(64), nullable=True),
        sa.Column("body_part", sa.String(64), nullable=True),
        sa.Column("finding", sa.JSON(), nullable=False),
        sa.Column("listed", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("cohort_id", "deid_study_instance_uid"),
    )
    op.create_index("ix_cohort_studies_cohort_id", "cohort_studies", ["cohort_id"])


def downgrade() -> None:
    op.drop_index("ix_cohort_studies_cohort_id", table_name="cohort_studies")
    op.drop_table("cohort_studies")
    op.drop_table("cohorts")
