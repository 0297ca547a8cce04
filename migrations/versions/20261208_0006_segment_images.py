"""segment_images: images uploaded to be segmented (the tenant's, not a concept's);
artifacts.image_id: a segmentation's masks belong to its image, so artifacts.concept_id may
be NULL

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import core.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segment_images",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("created_at", core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", core.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_segment_images_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segment_images")),
    )
    with op.batch_alter_table("segment_images", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_segment_images_tenant_id"), ["tenant_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_segment_images_last_used_at"), ["last_used_at"], unique=False
        )
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.alter_column("concept_id", existing_type=sa.Uuid(), nullable=True)
        batch_op.add_column(sa.Column("image_id", sa.Uuid(), nullable=True))
        batch_op.create_index(batch_op.f("ix_artifacts_image_id"), ["image_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_artifacts_image_id_segment_images"),
            "segment_images",
            ["image_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    # A segmentation's masks have no concept to belong to: they go with their images, and
    # the segmentation jobs with them (a release before this one knows no such kind). Their
    # files under `segmentations/` are left to remove by hand (docs/service.md).
    op.execute("DELETE FROM artifacts WHERE concept_id IS NULL")
    op.execute("DELETE FROM jobs WHERE kind = 'segment'")
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_artifacts_image_id_segment_images"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_artifacts_image_id"))
        batch_op.drop_column("image_id")
        batch_op.alter_column("concept_id", existing_type=sa.Uuid(), nullable=False)
    with op.batch_alter_table("segment_images", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_segment_images_last_used_at"))
        batch_op.drop_index(batch_op.f("ix_segment_images_tenant_id"))
    op.drop_table("segment_images")
