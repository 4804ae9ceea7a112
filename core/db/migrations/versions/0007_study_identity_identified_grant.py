"""study patient identity as first recorded; identified access of a user to a hospital

``studies`` gains the issuer of the patient ID and the birth date its first instance carried
(with ``patient_id`` and ``patient_name``, the identity every later instance of the study must
agree with, :mod:`dicom_gateway.ownership`). ``user_hospitals`` gains ``identified``: an
``ml_engineer`` sees a hospital's identified data only with it (``radcloud users assign NAME
HOSPITAL --identified``); existing assignments get none.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("issuer_of_patient_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("patient_birth_date", sa.String(8), nullable=True))
    with op.batch_alter_table("user_hospitals") as batch:
        batch.add_column(
            sa.Column("identified", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("user_hospitals") as batch:
        batch.drop_column("identified")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("patient_birth_date")
        batch.drop_column("issuer_of_patient_id")
