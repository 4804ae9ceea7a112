"""worklist score context: the lead model's threshold and whether the score is calibrated

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("worklist_items") as batch:
        batch.add_column(sa.Column("ai_threshold", sa.Float(), nullable=True))
        batch.add_column(sa.Column("ai_calibrated", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("worklist_items") as batch:
        batch.drop_column("ai_calibrated")
        batch.drop_column("ai_threshold")
