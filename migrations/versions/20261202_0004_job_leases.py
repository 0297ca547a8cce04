"""jobs.lease_expires_at: a running job's lease, renewed by its worker; jobs.losses: runs
whose worker was lost (the reconciler fails the job after MIFO_MAX_ATTEMPTS of them)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import core.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("lease_expires_at", core.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("losses", sa.Integer(), nullable=False, server_default="0"))
    # Workers from before leases renew none: their running jobs lapse at their last write and
    # are re-queued (an old worker still running one is fenced out by the attempt counter).
    op.execute("UPDATE jobs SET lease_expires_at = updated_at WHERE status = 'running'")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("losses")
        batch_op.drop_column("lease_expires_at")
