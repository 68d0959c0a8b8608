"""Every change to an environment row sends NOTIFY darb_environment_changed (a trigger).

The function and trigger were created here; they now live in
``services/api/repo/schema.sql``, applied after every upgrade.

Revision ID: 0004
Revises: 0003
"""

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing: ``schema.sql`` creates what this revision used to."""


def downgrade() -> None:
    """Nothing: ``schema.sql`` owns what this revision used to create."""
