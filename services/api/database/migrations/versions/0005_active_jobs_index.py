"""An index of each owner's pending and running jobs.

The active-jobs quota counts them on every submit; with only the owner index the count
visited every job the owner had ever run, so submits slowed down as history grew.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

# services.api.repo.models.ACTIVE_JOBS_CONDITION when this was written.
CONDITION = "status = 'PENDING' OR status = 'RUNNING'"

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    condition = sa.text(CONDITION)
    op.create_index(
        "ix_jobs_owner_active",
        "jobs",
        ["owner_id"],
        postgresql_where=condition,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_active", "jobs")
