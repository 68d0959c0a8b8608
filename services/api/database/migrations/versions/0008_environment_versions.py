"""Environment history: every successful change leaves an immutable version.

``environment_versions`` keeps each version's manifest, lock, package set, requested
specs and content hash; ``environments`` gains ``current_version`` and ``platforms``,
``jobs`` the user who submitted them (``created_by``). Environments that already have a
lock get version 1, "recorded when history began", so that every live environment has a
current version.

Revision ID: 0008
Revises: 0007
"""

import json

import sqlalchemy as sa
from alembic import op

from shared.lockhash import content_hash, read_lock_text
from shared.manifests import parse_manifest

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BACKFILL = "recorded when history began"


def upgrade() -> None:
    op.add_column(
        "environments",
        sa.Column("current_version", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.add_column(
        "environments", sa.Column("platforms", sa.JSON(), nullable=False, server_default="[]")
    )
    op.add_column("jobs", sa.Column("created_by", sa.String(36), nullable=True))
    op.execute("UPDATE jobs SET created_by = owner_id")
    op.alter_column("jobs", "created_by", nullable=False)
    op.create_table(
        "environment_versions",
        sa.Column(
            "environment_id",
            sa.String(36),
            sa.ForeignKey("environments.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("version", sa.BigInteger(), primary_key=True),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("created_by", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("platforms", sa.JSON(), nullable=False),
        sa.Column("packages", sa.JSON(), nullable=False),
        sa.Column("specs", sa.JSON(), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("lockfile", sa.Text(), nullable=False),
    )
    _backfill()


def _backfill() -> None:
    """Version 1 of every live environment that has a lock, from its last create job."""
    connection = op.get_bind()
    rows = connection.execute(
        sa.text(
            "SELECT e.id, e.owner_id, e.manifest, e.lockfile, e.updated_at,"
            " (SELECT j.id FROM jobs AS j WHERE j.environment_id = e.id"
            "  AND j.type = 'CREATE_ENVIRONMENT') AS job_id"
            " FROM environments AS e WHERE e.lockfile <> '' AND e.deleted_at IS NULL"
        )
    ).all()
    for row in rows:
        fields = parse_manifest(row.manifest)
        packages = connection.execute(
            sa.text(
                "SELECT name, version, build, channel FROM installed_packages"
                " WHERE environment_id = :id ORDER BY name"
            ),
            {"id": row.id},
        ).all()
        connection.execute(
            sa.text(
                "INSERT INTO environment_versions (environment_id, version, job_id,"
                " created_by, created_at, description, content_hash, platforms, packages,"
                " specs, manifest, lockfile) VALUES (:id, 1, :job_id, :owner, :at,"
                " :description, :hash, CAST(:platforms AS json), CAST(:packages AS json),"
                " CAST(:specs AS json), :manifest, :lock)"
            ),
            {
                "id": row.id,
                "job_id": row.job_id or "",
                "owner": row.owner_id,
                "at": row.updated_at,
                "description": BACKFILL,
                "hash": content_hash(read_lock_text(row.lockfile)),
                "platforms": json.dumps(fields.platforms),
                "packages": json.dumps([list(package) for package in packages]),
                "specs": json.dumps(fields.specs),
                "manifest": row.manifest,
                "lock": row.lockfile,
            },
        )
        connection.execute(
            sa.text(
                "UPDATE environments SET current_version = 1,"
                " platforms = CAST(:platforms AS json) WHERE id = :id"
            ),
            {"id": row.id, "platforms": json.dumps(fields.platforms)},
        )


def downgrade() -> None:
    op.drop_table("environment_versions")
    op.drop_column("jobs", "created_by")
    op.drop_column("environments", "platforms")
    op.drop_column("environments", "current_version")
