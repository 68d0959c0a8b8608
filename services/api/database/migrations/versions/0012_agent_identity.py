"""Agents' data directory identities (``repo/agents.py``).

An agent writes a random id into its data directory when it finds none there and
reports it at every probe (``GetInfoResponse.data_id``). The control plane keeps the
last one per agent address: a new one means the agent's disk was emptied or replaced,
and the environments bound to it are rebuilt at once rather than when a job reaches
them.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("address", sa.String(255), primary_key=True),
        sa.Column("data_id", sa.String(), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("agents")
