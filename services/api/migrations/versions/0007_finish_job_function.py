"""darb_finish_job(): a job's end on PostgreSQL in one call.

Ending a job through the ORM (lock the job, lock its environment, update both, replace
the installed packages, NOTIFY, then read the rows back for the metrics) took about ten
round trips, and under a burst of small jobs it was a third of the control plane's CPU.
The function does the same steps in one statement and returns what the metrics need.
SQLite runs ``outcomes.finish`` from Python; ``tests/api/test_job_end.py`` runs every
kind of end through both and compares the rows. A migration that changes the columns
written here must replace the function.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

FUNCTION = """
CREATE FUNCTION darb_finish_job(
    p_job_id varchar, p_expected varchar, p_worker_id varchar, p_status varchar,
    p_error text, p_now timestamptz, p_has_state boolean, p_manifest text, p_lockfile text,
    p_names text[], p_versions text[], p_builds text[], p_channels text[],
    p_job_channel text, p_jobs_channel text, p_notify_prefix text
) RETURNS TABLE (
    o_id varchar, o_environment_id varchar, o_type varchar, o_status varchar,
    o_error text, o_agent varchar, o_started_at timestamptz, o_completed_at timestamptz
)
LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs%ROWTYPE;
    v_env environments%ROWTYPE;
    v_succeeded boolean := p_status = 'COMPLETED';
    v_failed varchar[] := '{}';
BEGIN
    SELECT * INTO STRICT v_job FROM jobs WHERE id = p_job_id FOR UPDATE;
    IF v_job.status <> p_expected
            OR (p_worker_id IS NOT NULL AND v_job.claimed_by IS DISTINCT FROM p_worker_id) THEN
        RETURN;
    END IF;
    UPDATE jobs SET status = p_status, error = p_error, completed_at = p_now,
                    lease_expires_at = NULL
        WHERE id = p_job_id;
    SELECT * INTO STRICT v_env FROM environments WHERE id = v_job.environment_id FOR UPDATE;
    IF p_has_state AND v_job.type <> 'DELETE_ENVIRONMENT' THEN
        v_env.manifest := p_manifest;
        v_env.lockfile := p_lockfile;
        DELETE FROM installed_packages WHERE environment_id = v_env.id;
        INSERT INTO installed_packages (environment_id, name, version, build, channel)
            SELECT v_env.id, p.name, p.version, p.build, p.channel
            FROM unnest(p_names, p_versions, p_builds, p_channels)
                AS p (name, version, build, channel);
    END IF;
    IF v_job.type = 'CREATE_ENVIRONMENT' THEN
        IF NOT v_succeeded THEN
            v_env.error := coalesce(nullif(p_error, ''), 'creation did not complete');
            WITH failed AS (
                UPDATE jobs SET status = 'FAILED', completed_at = p_now,
                                error = format('not run: creating environment %L failed',
                                               v_env.name)
                    WHERE environment_id = v_env.id AND status = 'PENDING'
                        AND type <> 'DELETE_ENVIRONMENT'
                    RETURNING id
            )
            SELECT coalesce(array_agg(id), '{}') INTO v_failed FROM failed;
        END IF;
        IF v_env.status <> 'DELETING' THEN  -- a queued delete keeps it DELETING
            v_env.status := CASE WHEN v_succeeded THEN 'READY' ELSE 'FAILED' END;
        END IF;
    ELSIF v_job.type = 'DELETE_ENVIRONMENT' THEN
        IF v_succeeded THEN
            v_env.deleted_at := p_now;
            DELETE FROM installed_packages WHERE environment_id = v_env.id;
        ELSE  -- the status the environment had before its delete was queued
            SELECT CASE j.status WHEN 'PENDING' THEN 'PENDING' WHEN 'RUNNING' THEN 'CREATING'
                                 WHEN 'COMPLETED' THEN 'READY' ELSE 'FAILED' END
                INTO STRICT v_env.status
                FROM jobs AS j
                WHERE j.environment_id = v_env.id AND j.type = 'CREATE_ENVIRONMENT';
        END IF;
    END IF;
    UPDATE environments SET status = v_env.status, error = v_env.error,
                            manifest = v_env.manifest, lockfile = v_env.lockfile,
                            updated_at = p_now, deleted_at = v_env.deleted_at
        WHERE id = v_env.id;
    -- The ended jobs: this one and, after a failed create, those queued behind it.
    RETURN QUERY
        SELECT j.id, j.environment_id, j.type, j.status, j.error, v_env.executor,
               j.started_at, j.completed_at
        FROM jobs AS j
        WHERE j.id = p_job_id OR j.id = ANY (v_failed)
        ORDER BY j.id <> p_job_id, j.seq;
    PERFORM pg_notify(p_job_channel, p_notify_prefix || p_job_id);
    PERFORM pg_notify(p_job_channel, p_notify_prefix || failed)
        FROM unnest(v_failed) AS failed;
    PERFORM pg_notify(p_jobs_channel, p_notify_prefix);
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION darb_finish_job")
