-- darb's functions and triggers as they are now: the one place to read them.
--
-- The tables are Alembic's (services/api/database/migrations). This file is applied
-- after every upgrade, in the migration's transaction and under its advisory lock
-- (services/api/database/migrate.py): every darb_* function is dropped (with the
-- triggers that use them) and created again from here, so a changed signature needs
-- no migration of its own. A change of the columns written here changes this file.
--
-- Times come from the database's clock (now(): the start of the calling statement's
-- transaction), so the times of jobs that follow each other on one environment never
-- run backwards, whichever control plane ends one and claims the next.

DO $$
DECLARE
    old regprocedure;
BEGIN
    FOR old IN
        SELECT p.oid::regprocedure FROM pg_proc AS p
            JOIN pg_namespace AS n ON n.oid = p.pronamespace
            WHERE n.nspname = current_schema() AND p.proname LIKE 'darb\_%'
    LOOP
        EXECUTE format('DROP FUNCTION %s CASCADE', old);
    END LOOP;
END
$$;


-- Fencing tokens (services/api/repo/fences.py): every claim of a job and every takeover
-- of a job whose lease expired takes the next one, so the tokens of one environment's
-- claims grow; its agent refuses an operation with a lower token than it has seen.
CREATE SEQUENCE IF NOT EXISTS darb_fence_tokens AS bigint;


-- Every change to an environment row sends NOTIFY darb_environment_changed with its id.
-- Control-plane processes answer GetEnvironment from memory and drop an entry when its
-- row changes. A trigger, not the code paths that write, sends it: no path (a new one,
-- a migration, an administrator's SQL) can forget it.
CREATE FUNCTION darb_environment_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('darb_environment_changed', OLD.id);
    RETURN NULL;
END
$$;

CREATE TRIGGER environment_changed AFTER UPDATE OR DELETE ON environments
    FOR EACH ROW EXECUTE FUNCTION darb_environment_changed();


-- A create in one call: lock the owner, count for the quotas, insert the environment,
-- its creator as its owner (role 3, darb.v1.ROLE_OWNER) and its job, NOTIFY the dispatchers. Inside PL/pgSQL each statement takes a new snapshot
-- (READ COMMITTED), so the counts come after the owner's lock and see a create that
-- held it; the call is one statement, atomic on its own. Returns the owner's counts
-- before, whether the rows went in (only if both quotas allow it) and their creation
-- time. A name already live for the owner raises unique_violation.
CREATE FUNCTION darb_create_environment(
    p_owner_id varchar, p_max_environments bigint, p_max_active_jobs bigint,
    p_environment_id varchar, p_name varchar, p_package_manager varchar, p_channels json,
    p_executor varchar, p_environment_status varchar,
    p_job_id varchar, p_job_type varchar, p_job_status varchar, p_payload json,
    p_notify_channel text, p_notify_payload text
) RETURNS TABLE (
    o_environments bigint, o_active_jobs bigint, o_created boolean, o_created_at timestamptz
)
LANGUAGE plpgsql
-- Planned at each call for its owner: the generic plan cached while the tables were
-- still small counted the owner's environments by reading the whole name index of live
-- environments, and it stayed in use as they grew until an ANALYZE happened to replace
-- it, so each create got slower with every environment (auto_explain showed it).
SET plan_cache_mode = force_custom_plan
AS $$
BEGIN
    PERFORM 1 FROM users WHERE id = p_owner_id FOR NO KEY UPDATE;
    SELECT count(*) INTO o_environments FROM environments AS e
        WHERE e.owner_id = p_owner_id AND e.deleted_at IS NULL;
    SELECT count(*) INTO o_active_jobs FROM jobs AS j
        WHERE j.owner_id = p_owner_id AND (j.status = 'PENDING' OR j.status = 'RUNNING');
    o_created := o_environments < p_max_environments AND o_active_jobs < p_max_active_jobs;
    o_created_at := now();
    IF o_created THEN
        INSERT INTO environments (id, owner_id, name, package_manager, channels, executor,
                                  status, error, manifest, lockfile, created_at, updated_at)
            VALUES (p_environment_id, p_owner_id, p_name, p_package_manager, p_channels,
                    p_executor, p_environment_status, '', '', '', o_created_at, o_created_at);
        INSERT INTO environment_members (environment_id, member_key, user_id, role)
            VALUES (p_environment_id, 'user:' || p_owner_id, p_owner_id, 3);
        INSERT INTO jobs (id, environment_id, owner_id, created_by, type, status, payload,
                          error, cancel_requested, created_at)
            VALUES (p_job_id, p_environment_id, p_owner_id, p_owner_id, p_job_type,
                    p_job_status, p_payload, '', false, o_created_at);
        PERFORM pg_notify(p_notify_channel, p_notify_payload);
    END IF;
    RETURN NEXT;
END
$$;


-- A job's end in one call: the job's and its environment's rows, the installed
-- packages, the version a successful change adds (p_description, p_content_hash,
-- p_platforms and p_specs describe it), the jobs queued behind a failed create and the NOTIFYs.
-- Ends the job only if it is still p_expected (and, given p_worker_id, still claimed by
-- that worker); returns one row per ended job: this one first, then those failed
-- behind it.
CREATE FUNCTION darb_finish_job(
    p_job_id varchar, p_expected varchar, p_worker_id varchar, p_status varchar,
    p_error text, p_has_state boolean, p_manifest text, p_lockfile text,
    p_names text[], p_versions text[], p_builds text[], p_channels text[],
    p_description text, p_content_hash text, p_platforms json, p_specs json,
    p_job_channel text, p_jobs_channel text, p_notify_prefix text
) RETURNS TABLE (
    o_id varchar, o_environment_id varchar, o_type varchar, o_status varchar,
    o_error text, o_agent varchar, o_started_at timestamptz, o_completed_at timestamptz
)
LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan  -- as darb_create_environment, for its lookups
AS $$
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
    UPDATE jobs SET status = p_status, error = p_error, completed_at = now(),
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
    IF v_succeeded AND p_has_state AND v_job.type <> 'DELETE_ENVIRONMENT' THEN
        v_env.current_version := v_env.current_version + 1;
        v_env.platforms := p_platforms;
        INSERT INTO environment_versions (environment_id, version, job_id, created_by,
                                          created_at, description, content_hash, platforms,
                                          packages, specs, manifest, lockfile)
            SELECT v_env.id, v_env.current_version, v_job.id, v_job.created_by, now(),
                   p_description, p_content_hash, p_platforms,
                   coalesce(json_agg(json_build_array(p.name, p.version, p.build, p.channel)
                                     ORDER BY p.name), '[]'),
                   p_specs, p_manifest, p_lockfile
            FROM unnest(p_names, p_versions, p_builds, p_channels)
                AS p (name, version, build, channel);
    END IF;
    -- A change that succeeded on an environment left REBUILDING (its rebuild stopped
    -- with its control plane, services/api/scheduling/rebuilds.py) found its files.
    IF v_succeeded AND p_has_state AND v_env.status = 'REBUILDING' THEN
        v_env.status := 'READY';
        v_env.error := '';
    END IF;
    IF v_job.type = 'CREATE_ENVIRONMENT' THEN
        IF NOT v_succeeded THEN
            v_env.error := coalesce(nullif(p_error, ''), 'creation did not complete');
            WITH failed AS (
                UPDATE jobs SET status = 'FAILED', completed_at = now(),
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
            v_env.deleted_at := now();
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
                            current_version = v_env.current_version,
                            platforms = v_env.platforms,
                            updated_at = now(), deleted_at = v_env.deleted_at
        WHERE id = v_env.id;
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
$$;
