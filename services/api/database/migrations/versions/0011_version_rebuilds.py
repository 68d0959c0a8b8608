"""Versions keep a "rebuilt" mark (``scheduling/rebuilds.py``).

A rebuild installs the current version's lock again, as is, on an agent that lost the
environment's files or that it moves to: the content is the same, so no version is
added. The version counts its rebuilds and keeps when the last one completed.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "environment_versions",
        sa.Column("rebuild_count", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.add_column(
        "environment_versions",
        sa.Column("rebuilt_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("environment_versions", "rebuilt_at")
    op.drop_column("environment_versions", "rebuild_count")
