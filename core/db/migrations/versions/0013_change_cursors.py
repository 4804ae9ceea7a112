"""where the study completeness tracker stands in the archive's change feed: ``change_cursors``

The gateway's tracker (:mod:`dicom_gateway.completeness`) follows Orthanc's persistent change
log (``GET /changes``) and keeps its position here, written in the same transaction as the
``studies`` rows the changes it covers updated, so that a crash replays nothing twice. One row
per follower (``name``); the tracker writes the first one itself, at the feed's newest position
then (an archive's past is not replayed: every study stored before the upgrade was already
tracked through the forwarder's confirmations).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "change_cursors",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("change_cursors")
