"""jobs.enqueued_at: when the job's broker message was sent; concepts.files: where the
learning attempt that succeeded wrote the concept; storage_cleanups: prefixes to remove again

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 09:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import core.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("enqueued_at", core.models.UTCDateTime(timezone=True), nullable=True)
        )
    # Jobs from before this column were sent when they were created.
    op.execute("UPDATE jobs SET enqueued_at = created_at")
    # NULL: a concept learned before attempts had their own folders (<prefix>concept/).
    with op.batch_alter_table("concepts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("files", sa.String(length=300), nullable=True))
    op.create_table(
        "storage_cleanups",
        sa.Column("prefix", sa.String(length=500), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", core.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("prefix", name=op.f("pk_storage_cleanups")),
    )


def downgrade() -> None:
    op.drop_table("storage_cleanups")
    with op.batch_alter_table("concepts", schema=None) as batch_op:
        batch_op.drop_column("files")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("enqueued_at")
