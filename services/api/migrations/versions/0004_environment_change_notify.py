"""Every change to an environment row sends NOTIFY darb_environment_changed.

Control-plane processes answer GetEnvironment from memory and drop an entry when its
row changes. A trigger, not the code paths that write, sends the notification: no
path (a new one, a migration, an administrator's SQL) can forget it. PostgreSQL only;
SQLite runs one process, which drops entries itself, and caches nothing without LISTEN.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION darb_environment_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('darb_environment_changed', OLD.id);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER environment_changed AFTER UPDATE OR DELETE ON environments"
        " FOR EACH ROW EXECUTE FUNCTION darb_environment_changed()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER environment_changed ON environments")
    op.execute("DROP FUNCTION darb_environment_changed()")
