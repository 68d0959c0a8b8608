"""Log lines without a foreign key to their job.

PostgreSQL checks a foreign key with one trigger call per inserted row: it nearly doubled
the database's work for every log line stored (COPY of 400,000 lines: 2.3 s with the key,
1.3 s without). Lines are written only by the job's own dispatcher, and removed with
their job by ``users.delete_user``, the only place jobs are deleted.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# What 0001 created the key as, unnamed: PostgreSQL's default name, and the name batch
# mode gives the reflected SQLite key through this convention.
POSTGRES_NAME = "job_log_lines_job_id_fkey"
SQLITE_CONVENTION = {"fk": "fk_%(table_name)s_%(column_0_name)s"}
SQLITE_NAME = "fk_job_log_lines_job_id"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(POSTGRES_NAME, "job_log_lines", type_="foreignkey")
        return
    with op.batch_alter_table("job_log_lines", naming_convention=SQLITE_CONVENTION) as batch:
        batch.drop_constraint(SQLITE_NAME, type_="foreignkey")


def downgrade() -> None:
    name = POSTGRES_NAME if op.get_bind().dialect.name == "postgresql" else SQLITE_NAME
    with op.batch_alter_table("job_log_lines") as batch:
        batch.create_foreign_key(name, "jobs", ["job_id"], ["id"], ondelete="CASCADE")
