"""remote DICOMweb nodes: a hospital that is another archive, reached over DICOMweb

``remote_nodes`` marks a hospital row as a remote node (``radcloud hospitals add NAME
--dicomweb URL``) with its DICOMweb base URL, CA file, read timeout and kind of
authentication; its credentials are never in the database (``node-credentials.json``).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "remote_nodes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "hospital_id",
            sa.Integer(),
            sa.ForeignKey("hospitals.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
        ),
        sa.Column("dicomweb_url", sa.String(2048), nullable=False),
        sa.Column("ca_file", sa.String(4096), nullable=True),
        sa.Column("timeout_s", sa.Float(), nullable=True),
        sa.Column("auth", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("remote_nodes")
