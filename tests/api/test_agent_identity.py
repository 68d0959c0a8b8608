"""An agent whose data directory was emptied or replaced is noticed at the control
plane's next probe (``GetInfoResponse.data_id``), and its environments are rebuilt at
once, without waiting for a job to reach them: real control planes and agents (a data
directory deleted for real), and the repository function on a real database."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import create_engine, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from darb.v1 import common_pb2, jobs_pb2
from services.api import payloads
from services.api.database.db import Database
from services.api.repo import rebuilds
from services.api.repo.agents import record_identity
from services.api.repo.models import (
    Agent,
    Environment,
    EnvironmentStatus,
    Job,
    JobStatus,
    JobType,
    User,
    utcnow,
)
from testkit.agent import AgentProcess, start_agent
from testkit.control_plane import ApiProcess, Client
from testkit.postgres import fresh_database
from testkit.schema import migrate_url, new_environment, new_user
from tests.api.faults import ready_environment
from tests.api.test_rebuild import disk_builds, history, without_mark

READY = common_pb2.ENVIRONMENT_STATUS_READY
REBUILDING = common_pb2.ENVIRONMENT_STATUS_REBUILDING
# Probes every second (a third of the lease).
LEASE = "3"
AGENT = "agent-1:50051"


def jobs_of(client: Client, environment_id: str) -> list[common_pb2.Job]:
    request = jobs_pb2.ListJobsRequest(environment_id=environment_id)
    return list(client.call(client.jobs.ListJobs, request).jobs)


@dataclass
class Stack:
    """A control plane probing one agent every second, and a user."""

    agent: AgentProcess
    api: ApiProcess
    user: Client
    channel_url: str

    def restart_agent(self, empty: bool) -> None:
        """On the same address, its data directory deleted first when ``empty``."""
        self.agent.stop()
        if empty:
            shutil.rmtree(self.agent.data_dir)
        old = self.agent
        self.agent = start_agent(old.data_dir, self.channel_url, token=old.token, addr=old.addr)


@pytest.fixture
def stack(
    channel_url: str,
    agent_factory: Callable[..., AgentProcess],
    own_database: str,
    api_factory: Callable[..., ApiProcess],
) -> Iterator[Stack]:
    agent = agent_factory()
    api = api_factory(own_database, executors=agent.addr, DARB_AGENT_LEASE_SECONDS=LEASE)
    stack = Stack(agent, api, api.new_user(), channel_url)
    yield stack
    stack.agent.stop()


def test_an_agent_back_with_an_empty_disk_gets_its_environments_rebuilt_at_once(
    stack: Stack,
) -> None:
    user = stack.user
    small = ready_environment(user, "small", ["acme-core ==1.1"])
    big = ready_environment(user, "big", ["acme-big"])  # 80 MB: its rebuild takes a while
    envs = (small, big)
    before = {env: disk_builds(stack.agent, env) for env in envs}
    versions = {env: history(user, env) for env in envs}

    stack.restart_agent(empty=True)
    agent = stack.agent
    # No job is submitted: the probe notices, and both are rebuilt.
    seen: dict[str, list[int]] = {env: [] for env in envs}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        shown = {env: user.get_env(env) for env in envs}
        for env, environment in shown.items():
            seen[env].append(environment.status)
            if environment.status == READY and REBUILDING in seen[env]:
                assert disk_builds(agent, env) == before[env]  # never READY without it
        if all(history(user, env)[0].rebuild_count == 1 for env in envs) and all(
            environment.status == READY for environment in shown.values()
        ):
            break
        time.sleep(0.05)
    assert REBUILDING in seen[big], seen[big]
    for env in envs:
        assert user.get_env(env).status == READY
        assert disk_builds(agent, env) == before[env]
        after = history(user, env)
        assert [without_mark(v) for v in after] == [without_mark(v) for v in versions[env]]
        assert after[0].rebuild_count == 1 and after[0].HasField("rebuilt_at")
        rebuild, _create = jobs_of(user, env)  # newest first: one rebuild, no more
        assert rebuild.type == common_pb2.JOB_TYPE_REBUILD_ENVIRONMENT
        assert rebuild.created_by_username == user.user.username
        logs = user.get_job(rebuild.id).logs
        first = logs.splitlines()[0]
        assert f"agent {agent.addr} came back with an empty or replaced" in first, logs
    assert "queued the rebuild of 2 environments" in stack.api.log_text()


def test_an_agent_restarted_on_its_own_disk_rebuilds_nothing(stack: Stack) -> None:
    user = stack.user
    env = ready_environment(user, "kept", ["acme-utils"])
    stack.restart_agent(empty=False)
    # The control plane hears from the agent again, then several probes go by.
    done = user.wait(user.install(env, ["acme-extras"]).id)
    assert done.status == common_pb2.JOB_STATUS_COMPLETED and "rebuilding" not in done.logs
    time.sleep(4 * float(LEASE) / 3)
    assert [job.type for job in jobs_of(user, env)] == [
        common_pb2.JOB_TYPE_INSTALL_PACKAGES,
        common_pb2.JOB_TYPE_CREATE_ENVIRONMENT,
    ]
    assert user.get_env(env).status == READY


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_database() as url:
        migrate_url(url)
        yield url


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    engine = create_engine(url)
    yield engine
    engine.dispose()


def _seed(url: str, engine: Engine) -> dict[str, str]:
    """Environments on AGENT in each state that matters (and one on another agent), by
    label; the creates' rows end as a completed create leaves them."""

    async def create() -> tuple[User, dict[str, str]]:
        database = Database(url)
        try:
            owner = await new_user(database, "owner")
            labels = ["ready", "ready2", "failed", "pending", "moving", "deleted", "elsewhere"]
            made = {}
            for label in labels:
                executor = "agent-2:50051" if label == "elsewhere" else AGENT
                environment, _ = await new_environment(database, owner, label, executor)
                made[label] = environment.id
            return owner, made
        finally:
            await database.close()

    owner, made = asyncio.run(create())
    with Session(engine) as session, session.begin():
        created = [env for label, env in made.items() if label != "pending"]
        session.execute(
            update(Job).where(Job.environment_id.in_(created)).values(status=JobStatus.COMPLETED)
        )
        session.execute(
            update(Environment)
            .where(Environment.id.in_(created))
            .values(status=EnvironmentStatus.READY, current_version=1)
        )
        failed = made["failed"]  # a later job failed it; its files were there
        session.execute(
            update(Environment)
            .where(Environment.id == failed)
            .values(status=EnvironmentStatus.FAILED)
        )
        session.execute(
            update(Environment).where(Environment.id == made["deleted"]).values(deleted_at=utcnow())
        )
        owner_row = session.get(User, owner.id)
        assert owner_row is not None
        rebuilds.queue(session, owner_row, made["moving"], payloads.MovePayload("agent-2:50051"))
    return made


def _rebuilds(engine: Engine) -> list[Job]:
    with Session(engine) as session:
        query = select(Job).where(Job.type == JobType.REBUILD_ENVIRONMENT)
        return list(session.scalars(query))


def test_a_new_data_directory_queues_each_rebuild_once(url: str, engine: Engine) -> None:
    made = _seed(url, engine)
    with Session(engine) as session, session.begin():
        assert record_identity(session, AGENT, "disk-1") == []  # first sight
    with Session(engine) as session, session.begin():
        assert record_identity(session, AGENT, "disk-1") == []  # the same disk
        assert session.get(Agent, AGENT) is not None
    assert _rebuilds(engine) == []

    # Two control planes see the new disk at once: the first holds the row until it
    # commits, the second's compare-and-set then finds it changed and queues nothing.
    other: list[list[Job]] = []

    def second_control_plane() -> None:
        with Session(engine) as session, session.begin():
            other.append(record_identity(session, AGENT, "disk-2"))

    with Session(engine) as session, session.begin():
        queued = record_identity(session, AGENT, "disk-2")
        thread = threading.Thread(target=second_control_plane)
        thread.start()
        thread.join(1.0)
        assert thread.is_alive()  # waits for the first one's row lock
    thread.join(30)
    assert other == [[]]
    eligible = sorted(made[label] for label in ("ready", "ready2", "failed"))
    assert sorted(job.environment_id for job in queued) == eligible
    rows = _rebuilds(engine)
    assert sorted(job.environment_id for job in rows) == eligible
    with Session(engine) as session:
        owner = session.scalars(select(User).where(User.username == "owner")).one()
        for job in rows:
            assert job.created_by == owner.id and job.status == JobStatus.PENDING
            assert "came back with an empty or replaced data directory" in job.payload["reason"]
            environment = session.get(Environment, job.environment_id)
            assert environment is not None
            assert environment.status == EnvironmentStatus.REBUILDING
        agent = session.get(Agent, AGENT)
        assert agent is not None and agent.data_id == "disk-2"

    # Yet another disk while those rebuilds are queued: no second rebuild of any.
    with Session(engine) as session, session.begin():
        assert record_identity(session, AGENT, "disk-3") == []
    assert len(_rebuilds(engine)) == len(eligible)
