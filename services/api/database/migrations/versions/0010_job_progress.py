"""Jobs keep the last progress their agent reported (``repo/progress.py``).

A JSON object (phase, packages and bytes done of total, the report's time), NULL before
the first report; a job that ended keeps its last one.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("progress", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "progress")
