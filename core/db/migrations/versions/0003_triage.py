"""triage: outbox retry time, worklist AI status and due time

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_events") as table:
        table.add_column(sa.Column("available_at", sa.DateTime(timezone=True), nullable=True))
        table.create_index("ix_outbox_events_available_at", ["available_at"])
    with op.batch_alter_table("worklist_items") as table:
        table.add_column(
            sa.Column("ai_status", sa.String(length=16), nullable=False, server_default="pending")
        )
        table.add_column(sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
        table.create_index("ix_worklist_items_due_at", ["due_at"])


def downgrade() -> None:
    with op.batch_alter_table("worklist_items") as table:
        table.drop_index("ix_worklist_items_due_at")
        table.drop_column("due_at")
        table.drop_column("ai_status")
    with op.batch_alter_table("outbox_events") as table:
        table.drop_index("ix_outbox_events_available_at")
        table.drop_column("available_at")
