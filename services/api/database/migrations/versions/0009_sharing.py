"""Sharing: groups, and one policy per environment (its members and their roles).

``environment_members`` holds an environment's policy, one row per member: a user, a
group, or everyone signed in (``member_key`` ``user:<id>``, ``group:<id>`` or ``all``;
``user_id`` and ``group_id`` carry the foreign keys, so deleting a user or a group drops
its rows). ``environments.policy_version`` grows with every change of the policy; its
etag is made from it. Every environment gets its owner as an OWNER member.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

OWNER = 3  # darb.v1.Role.ROLE_OWNER


def upgrade() -> None:
    op.create_table(
        "groups",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("created_by", sa.String(36), sa.ForeignKey("users.id", ondelete="SET NULL")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "group_members",
        sa.Column(
            "group_id",
            sa.String(36),
            sa.ForeignKey("groups.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "user_id",
            sa.String(36),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            primary_key=True,
        ),
    )
    op.create_index("ix_group_members_user_id", "group_members", ["user_id"])
    op.create_table(
        "environment_members",
        sa.Column(
            "environment_id",
            sa.String(36),
            sa.ForeignKey("environments.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("member_key", sa.String(48), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE")),
        sa.Column("group_id", sa.String(36), sa.ForeignKey("groups.id", ondelete="CASCADE")),
        sa.Column("role", sa.SmallInteger(), nullable=False),
        sa.CheckConstraint("role BETWEEN 1 AND 3", name="ck_environment_members_role"),
    )
    op.create_index("ix_environment_members_user_id", "environment_members", ["user_id"])
    op.create_index("ix_environment_members_group_id", "environment_members", ["group_id"])
    op.create_index(
        "ix_environment_members_everyone",
        "environment_members",
        ["environment_id"],
        postgresql_where=sa.text("member_key = 'all'"),
    )
    # The listing of every environment (admins) in (name, id) order.
    op.create_index(
        "ix_environments_live_name_id",
        "environments",
        ["name", "id"],
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.add_column(
        "environments",
        sa.Column("policy_version", sa.BigInteger(), nullable=False, server_default="1"),
    )
    op.execute(
        "INSERT INTO environment_members (environment_id, member_key, user_id, role)"
        f" SELECT id, 'user:' || owner_id, owner_id, {OWNER} FROM environments"
    )


def downgrade() -> None:
    op.drop_column("environments", "policy_version")
    op.drop_index("ix_environments_live_name_id", "environments")
    op.drop_table("environment_members")
    op.drop_table("group_members")
    op.drop_table("groups")
