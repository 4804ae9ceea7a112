"""hospital scope: users' hospital assignments, API keys' hospital, platform operators

Existing users and API keys get no hospital and are not platform operators: they see no
study until an administrator assigns them (``radcloud users assign``, ``radcloud apikeys
create --hospital``); there is no implicit "all".

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "user_hospitals",
        sa.Column(
            "user_id",
            sa.Integer(),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("hospital_id", sa.Integer(), sa.ForeignKey("hospitals.id"), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("platform_operator", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("hospital_id", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("platform_operator", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.create_foreign_key("fk_api_keys_hospital_id", "hospitals", ["hospital_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint("fk_api_keys_hospital_id", type_="foreignkey")
        batch.drop_column("platform_operator")
        batch.drop_column("hospital_id")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("platform_operator")
    op.drop_table("user_hospitals")
