"""darb_create_environment(): a create in one call.

The function was created here; it now lives in ``services/api/repo/schema.sql``,
applied after every upgrade.

Revision ID: 0006
Revises: 0005
"""

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing: ``schema.sql`` creates what this revision used to."""


def downgrade() -> None:
    """Nothing: ``schema.sql`` owns what this revision used to create."""
