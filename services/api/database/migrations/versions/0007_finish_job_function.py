"""darb_finish_job(): a job's end in one call.

The function was created here; it now lives in ``services/api/repo/schema.sql``,
applied after every upgrade.

Revision ID: 0007
Revises: 0006
"""

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing: ``schema.sql`` creates what this revision used to."""


def downgrade() -> None:
    """Nothing: ``schema.sql`` owns what this revision used to create."""
