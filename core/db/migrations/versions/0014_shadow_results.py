"""a shadow version's runs beside production on live studies: ``shadow_results``

``radcloud models shadow NAME VERSION`` runs a staged version on live studies without touching the
worklist, notifications or the archive (``serving.shadow``); its score, positive call, mask
summary, latency and CPU time per study go here, with production's on the same input, for
``radcloud models compare``.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shadow_results",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id"), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("production_version", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("positive", sa.Boolean(), nullable=True),
        sa.Column("production_score", sa.Float(), nullable=True),
        sa.Column("production_positive", sa.Boolean(), nullable=True),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("cpu_ms", sa.Float(), nullable=True),
        sa.Column("production_latency_ms", sa.Float(), nullable=True),
        sa.Column("production_cpu_ms", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("study_id", "model_name", "model_version"),
    )
    op.create_index("ix_shadow_results_study_id", "shadow_results", ["study_id"])
    op.create_index("ix_shadow_results_model_name", "shadow_results", ["model_name"])


def downgrade() -> None:
    op.drop_index("ix_shadow_results_model_name", table_name="shadow_results")
    op.drop_index("ix_shadow_results_study_id", table_name="shadow_results")
    op.drop_table("shadow_results")
