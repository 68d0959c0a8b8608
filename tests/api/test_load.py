"""Load (issue 5): 50 concurrent clients on loopback for 60 s, then a bounded drain.

10 users x 5 clients, each client a ``grpc.aio`` channel of its own, all in one event loop
of the test process (50 threads would be heavy on 2 cores). A client only touches the
environments it created, so everything it reads back is predictable and checked: every
job ends as it must, every live and stored log runs 1, 2, 3... and ends with the terminal
job. The only errors allowed are the ones the load provokes on purpose (see ``Refusal``).
Afterwards: no job left active or unknown, the control plane SERVING, no watch
subscription or task left behind, and its RSS back near where it was after a warm-up.
Nothing is asserted about speed; the summary printed at the end shows what ran.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from darb.v1 import (
    common_pb2,
    environments_pb2,
    environments_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    users_pb2,
)
from testkit.control_plane import TERMINAL, ApiProcess, Client, watched_lines
from testkit.postgres import fresh_database
from tests.api.faults import rss_kib, stats, wait_until

USERS = 10
CLIENTS_PER_USER = 5
WARMUP_SECONDS = 10
LOAD_SECONDS = 60
# From the end of the load: for the iterations under way to finish and every job to end.
DRAIN_SECONDS = 120
MAX_ITERATIONS = 60  # per client and phase; the clock normally stops them long before
# Kept low on purpose: clients keep some environments, so creates hit it under contention.
ENVIRONMENT_QUOTA = 10
CALL_TIMEOUT = 30
POLL_SECONDS = 3  # GetJob while watching: ~17 requests/s from the 50 clients
STORED_LOG_SAMPLE = 30
PASSWORD = "load-password-1"
# How far the RSS may end above its value after the warm-up. Python seldom gives freed
# memory back to the OS, so "near" cannot mean "equal"; but the warm-up already ran the
# same 50 clients, so caches, the database pool and the allocator's arenas are sized for
# this concurrency (runs here end within 1 MiB of it). 16 MiB, about 15% of the ~100 MiB
# baseline, leaves room for allocator noise while a leak of 10 KB per RPC (~2,000 in the
# load) or of 60 KB per job (~300) crosses it; leaked tasks and watch subscriptions are
# counted exactly.
RSS_GROWTH_KIB = 16 * 1024
TASK_SLACK = 5  # the dispatcher's and the health check's own tasks come and go

PENDING = common_pb2.JOB_STATUS_PENDING
RUNNING = common_pb2.JOB_STATUS_RUNNING
COMPLETED = common_pb2.JOB_STATUS_COMPLETED
FAILED = common_pb2.JOB_STATUS_FAILED
ACTIVE = {PENDING, RUNNING}
Metadata = tuple[tuple[str, str], ...]
CREATE = common_pb2.JOB_TYPE_CREATE_ENVIRONMENT
INSTALL = common_pb2.JOB_TYPE_INSTALL_PACKAGES


@dataclass(frozen=True)
class Refusal:
    """An error the load provokes on purpose, recognised by its code and its message."""

    code: grpc.StatusCode
    says: str

    def matches(self, error: grpc.aio.AioRpcError) -> bool:
        return error.code() == self.code and self.says in (error.details() or "")


# Creates beyond ENVIRONMENT_QUOTA (the user's 5 clients share it).
OVER_QUOTA = Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "DARB_MAX_ENVIRONMENTS_PER_USER")
# A second create with the name of a live environment.
DUPLICATE = Refusal(grpc.StatusCode.ALREADY_EXISTS, "already have an environment named")
# An install after the environment's delete was queued.
BEING_DELETED = Refusal(grpc.StatusCode.FAILED_PRECONDITION, "is being deleted")
# An install into an environment whose create failed (acme-broken is unsolvable).
CREATE_FAILED = Refusal(grpc.StatusCode.FAILED_PRECONDITION, "failed to create")


@dataclass
class Tally:
    """What the clients of one phase did (one event loop, so no locks needed)."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    refusals: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    jobs: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    drain_seconds: float = 0.0  # from the end of the load until the last client is done


class LoadClient:
    """One of the 50 clients. Its environments are named ``<phase>-c<index>-<n>``."""

    def __init__(self, addr: str, user: str, token: str, index: int) -> None:
        self.channel = grpc.aio.insecure_channel(addr)
        self.envs = environments_pb2_grpc.EnvironmentServiceStub(self.channel)
        self.jobs = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.metadata: Metadata = (("authorization", f"Bearer {token}"),)
        self.user, self.index = user, index
        self.tally = Tally()
        self.kept: list[str] = []  # environments left in place, to fill the quota
        self.deadline = 0.0  # of the phase: no job is submitted after it

    async def call(
        self,
        stub: Any,
        name: str,
        request: Any,
        allowed: tuple[Refusal, ...] = (),
        must_fail: bool = False,
    ) -> Any | None:
        """``stub.name(request)``: the response, or None when refused. A refusal not in
        ``allowed``, or a success when ``must_fail``, is a problem."""
        started = time.monotonic()
        try:
            response = await getattr(stub, name)(
                request, metadata=self.metadata, timeout=CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as error:
            self.tally.latencies[name].append(time.monotonic() - started)
            if any(refusal.matches(error) for refusal in allowed):
                self.tally.refusals[f"{name} {error.code().name}"] += 1
            else:
                self.problem(f"{name}: {error.code().name} {error.details()}")
            return None
        self.tally.latencies[name].append(time.monotonic() - started)
        if must_fail:
            self.problem(f"{name} succeeded, expected {[r.code.name for r in allowed]}")
        return response

    def problem(self, text: str) -> None:
        self.tally.problems.append(f"{self.user}/c{self.index}: {text}")

    def submitted(self, job: common_pb2.Job) -> str:
        self.tally.jobs[self.user].add(job.id)
        return job.id

    async def follow(self, job_id: str, want: int = COMPLETED) -> None:
        """Watches the job to its end, polling it meanwhile as a status display would,
        and checks that it ended as ``want`` and that no poll saw its status go back."""
        if not job_id:  # its submission failed, which is already a problem
            return
        started = time.monotonic()
        watching = asyncio.ensure_future(watch_events(self.jobs, self.metadata, job_id))
        polled = await self.poll(job_id, watching)
        events, broken = watching.result()
        self.tally.latencies["WatchJob (to the end)"].append(time.monotonic() - started)
        fault = broken or log_fault(events)
        final = events[-1].job if not fault else None
        if final is None:
            self.problem(f"WatchJob {job_id}: {fault}")
        elif final.status != want:
            status = common_pb2.JobStatus.Name(final.status)
            kind = common_pb2.JobType.Name(final.type)
            self.problem(f"{kind} job {job_id} ended {status}: {final.error}")
        elif polled != sorted(polled) or (polled[-1:] and polled[-1] not in ACTIVE | {want}):
            self.problem(f"GetJob {job_id} went {polled}, the watch ended {final.status}")

    async def poll(self, job_id: str, watching: asyncio.Future[Any]) -> list[int]:
        """The statuses GetJob gave every POLL_SECONDS while the watch ran."""
        statuses = []
        while not watching.done():
            got = await self.call(self.jobs, "GetJob", jobs_pb2.GetJobRequest(id=job_id))
            if got:
                statuses.append(got.job.status)
            await asyncio.wait([watching], timeout=POLL_SECONDS)
        return statuses

    async def iteration(self, phase: str, n: int) -> None:
        """Create, follow, install, follow, read back; every third time also remove and
        delete; every seventh the create is unsolvable and the environment is deleted. Past
        the deadline no job is submitted any more: the environment is kept as it is."""
        turn = n + self.index  # so that each path is taken early by some client
        broken = turn % 7 == 3
        request = environments_pb2.CreateEnvironmentRequest(
            name=f"{phase}-c{self.index}-{n}", packages=["acme-broken" if broken else "acme-core"]
        )
        created = await self.call(self.envs, "CreateEnvironment", request, (OVER_QUOTA,))
        if created is None:
            await self.make_room()
            return
        env_id = created.environment.id
        create_job = self.submitted(created.job)
        if turn % 4 == 1:
            # The quota is checked before the name: at the limit, that refusal comes first.
            await self.call(self.envs, "CreateEnvironment", request, (DUPLICATE, OVER_QUOTA), True)
        await self.follow(create_job, FAILED if broken else COMPLETED)
        if broken:
            await self.install(env_id, must=CREATE_FAILED)
        if self.stopped():
            self.kept.append(env_id)
            return
        if broken:
            await self.follow(await self.delete(env_id))
            return
        await self.follow(await self.install(env_id))
        await self.read_back(env_id)
        if turn % 3 == 2 and not self.stopped():
            await self.remove_and_delete(env_id)
        else:
            self.kept.append(env_id)

    async def install(self, env_id: str, must: Refusal | None = None) -> str:
        """Queues an install of acme-utils, or checks that ``must`` refuses it."""
        request = environments_pb2.InstallPackagesRequest(
            environment_id=env_id, packages=["acme-utils"]
        )
        refusals = (must,) if must else ()
        response = await self.call(self.envs, "InstallPackages", request, refusals, bool(must))
        return self.submitted(response.job) if response else ""

    async def delete(self, env_id: str) -> str:
        request = environments_pb2.DeleteEnvironmentRequest(id=env_id)
        response = await self.call(self.envs, "DeleteEnvironment", request)
        return self.submitted(response.job) if response else ""

    async def read_back(self, env_id: str) -> None:
        """The reads see the environment exactly as this client's jobs left it."""
        request = environments_pb2.ListPackagesRequest(environment_id=env_id)
        listed = await self.call(self.envs, "ListPackages", request)
        if listed and {p.name for p in listed.packages} != {"acme-core", "acme-utils"}:
            self.problem(f"ListPackages {env_id}: {[p.name for p in listed.packages]}")
        page = environments_pb2.ListEnvironmentsRequest(page_size=100)
        envs = await self.call(self.envs, "ListEnvironments", page)
        if envs and (env_id not in {e.id for e in envs.environments}):
            self.problem(f"ListEnvironments misses {env_id}")
        if envs and len(envs.environments) > ENVIRONMENT_QUOTA:
            self.problem(f"{len(envs.environments)} environments, over the quota")
        request = jobs_pb2.ListJobsRequest(environment_id=env_id)
        history = await self.call(self.jobs, "ListJobs", request)
        if history and [job.type for job in history.jobs] != [INSTALL, CREATE]:
            self.problem(f"ListJobs {env_id}: {[job.type for job in history.jobs]}")

    async def remove_and_delete(self, env_id: str) -> None:
        """Queues a remove and a delete behind it, then an install that must be refused."""
        request = environments_pb2.RemovePackagesRequest(
            environment_id=env_id, packages=["acme-utils"]
        )
        removed = await self.call(self.envs, "RemovePackages", request)
        delete_job = await self.delete(env_id)
        await self.install(env_id, must=BEING_DELETED)
        if removed:
            await self.follow(self.submitted(removed.job))
        if delete_job:
            await self.follow(delete_job)

    async def make_room(self) -> None:
        """Over the quota: delete this client's oldest kept environment, or, if it keeps
        none (the other 4 hold the quota), wait a little instead of spinning."""
        if self.kept:
            job_id = await self.delete(self.kept.pop(0))
            if job_id:
                await self.follow(job_id)
        else:
            await asyncio.sleep(2)

    def stopped(self) -> bool:
        return time.monotonic() >= self.deadline

    async def run(self, phase: str, deadline: float) -> None:
        self.deadline = deadline
        for n in range(MAX_ITERATIONS):
            if self.stopped():
                return
            await self.iteration(phase, n)


async def watch_events(
    stub: jobs_pb2_grpc.JobServiceStub, metadata: Metadata, job_id: str
) -> tuple[list[jobs_pb2.WatchJobResponse], str]:
    """Every event of WatchJob from after_seq=0, and how the stream broke ("" if it did
    not). Bounded by the drain time: a job stuck in a queue fails the test."""
    request = jobs_pb2.WatchJobRequest(id=job_id)
    events: list[jobs_pb2.WatchJobResponse] = []
    try:
        async for event in stub.WatchJob(request, metadata=metadata, timeout=DRAIN_SECONDS):
            events.append(event)
    except grpc.aio.AioRpcError as error:
        return events, f"{error.code().name} {error.details()}"
    return events, ""


def log_fault(events: list[jobs_pb2.WatchJobResponse]) -> str:
    """What is wrong with a stream watched from after_seq=0: the seqs must run 1, 2, 3...
    and the last event must be the terminal job. Empty when nothing is."""
    seqs = [line.seq for line in watched_lines(events)]
    if seqs != list(range(1, len(seqs) + 1)):
        return f"seqs not contiguous from 1: {seqs[:20]}"
    if not events or not events[-1].HasField("job") or events[-1].job.status not in TERMINAL:
        return "the stream did not end with the terminal job"
    return ""


async def run_phase(clients: list[LoadClient], phase: str, seconds: float) -> Tally:
    """All clients loop for ``seconds``, then follow the jobs they have submitted to their
    end, within the drain."""
    tally = Tally()
    for client in clients:
        client.tally = tally
    deadline = time.monotonic() + seconds
    work = asyncio.gather(*(client.run(phase, deadline) for client in clients))
    try:
        await asyncio.wait_for(work, seconds + DRAIN_SECONDS)
    except TimeoutError:
        tally.problems.append(f"{phase}: clients still busy {DRAIN_SECONDS} s after the load")
    tally.drain_seconds = time.monotonic() - deadline
    return tally


@dataclass(frozen=True)
class Footprint:
    rss_kib: int
    subscriptions: int
    tasks: int


def footprint(api: ApiProcess) -> Footprint:
    """The control plane once every watcher's subscription is gone."""
    wait_until(lambda: stats(api)[0] == 0, 30, "the watch subscriptions to be released")
    subscriptions, tasks = stats(api)
    return Footprint(rss_kib(api.process.pid), subscriptions, tasks)


def all_jobs(api: ApiProcess, token: str) -> dict[str, common_pb2.Job]:
    """Every job of the token's user, by id, from ListJobs."""
    found: dict[str, common_pb2.Job] = {}
    page_token = ""
    with grpc.insecure_channel(api.addr) as channel:
        client = Client(channel, token=token)
        while True:
            request = jobs_pb2.ListJobsRequest(page_size=500, page_token=page_token)
            response = client.call(client.jobs.ListJobs, request)
            found.update((job.id, job) for job in response.jobs)
            if not (page_token := response.next_page_token):
                return found


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(tally: Tally, jobs: list[common_pb2.Job], before: Footprint, after: Footprint) -> str:
    lines = [
        f"load: {USERS} users x {CLIENTS_PER_USER} clients, {LOAD_SECONDS} s"
        f" + {tally.drain_seconds:.1f} s drain, {len(tally.problems)} problems"
    ]
    for name, values in sorted(tally.latencies.items()):
        p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
        lines.append(f"  {name:<24} {len(values):>5} calls  p50 {p50:8.1f} ms  p99 {p99:8.1f} ms")
    lines.append(f"  expected refusals: {dict(tally.refusals)}")
    outcomes = Counter(
        f"{common_pb2.JobType.Name(j.type)} {common_pb2.JobStatus.Name(j.status)}" for j in jobs
    )
    lines.append(f"  jobs (warm-up included): {dict(sorted(outcomes.items()))}")
    lines.append(
        f"  control plane: RSS {before.rss_kib / 1024:.1f} -> {after.rss_kib / 1024:.1f} MiB,"
        f" asyncio tasks {before.tasks} -> {after.tasks}"
    )
    return "\n".join(lines)


def make_users(api: ApiProcess) -> dict[str, str]:
    """Token by username for USERS fresh accounts."""
    admin = api.admin()
    tokens = {}
    for index in range(USERS):
        username = f"load{index}"
        request = users_pb2.CreateUserRequest(username=username, password=PASSWORD)
        admin.call(admin.users.CreateUser, request)
        tokens[username] = api.login(username, PASSWORD).token
    return tokens


async def scenario(api: ApiProcess, tokens: dict[str, str]) -> tuple[Tally, Tally, Footprint]:
    """Warm-up, footprint, load. Returns both tallies and the footprint after warm-up."""
    clients = [
        LoadClient(api.addr, user, token, index)
        for user, token in tokens.items()
        for index in range(CLIENTS_PER_USER)
    ]
    try:
        warmup = await run_phase(clients, "w", WARMUP_SECONDS)
        before = await asyncio.to_thread(footprint, api)
        load = await run_phase(clients, "l", LOAD_SECONDS)
    finally:
        await asyncio.gather(*(client.channel.close() for client in clients))
    return warmup, load, before


def stored_log_faults(api: ApiProcess, sample: list[tuple[str, str]]) -> list[str]:
    """Finished jobs (token, job id) replayed from after_seq=0: contiguous, ending with
    the terminal job, and the same text as GetJob's logs."""
    faults = []
    with grpc.insecure_channel(api.addr) as channel:
        for token, job_id in sample:
            client = Client(channel, token=token)
            events = list(client.watch(job_id, timeout=CALL_TIMEOUT))
            text = "\n".join(line.text for line in watched_lines(events))
            same = text == client.get_job(job_id).logs
            if fault := log_fault(events) or ("" if same else "differs from GetJob's logs"):
                faults.append(f"stored log of {job_id}: {fault}")
    return faults


def check_health(api: ApiProcess) -> None:
    with grpc.insecure_channel(api.addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        response = health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def load_api(api_factory: Callable[..., ApiProcess]) -> Iterator[ApiProcess]:
    """A control plane of this test on a database of its own: no other control plane
    (the session's ``api`` shares ``database_url``) may claim the load's jobs."""
    with fresh_database() as url:
        api = api_factory(url, DARB_MAX_ENVIRONMENTS_PER_USER=str(ENVIRONMENT_QUOTA))
        yield api
        api.stop()  # before its database is dropped


@pytest.mark.timeout(WARMUP_SECONDS + LOAD_SECONDS + 2 * DRAIN_SECONDS + 120)
def test_fifty_clients_for_a_minute(load_api: ApiProcess) -> None:
    """No unexpected error, nothing stuck or lost, logs contiguous, nothing leaked."""
    tokens = make_users(load_api)
    warmup, load, before = asyncio.run(scenario(load_api, tokens))
    jobs_by_user = {user: all_jobs(load_api, token) for user, token in tokens.items()}
    jobs = [job for found in jobs_by_user.values() for job in found.values()]
    after = footprint(load_api)
    print("\n" + summary(load, jobs, before, after))

    problems = warmup.problems + load.problems
    assert not problems, "\n".join(problems)
    assert [job.id for job in jobs if job.status in ACTIVE] == []
    for user, found in jobs_by_user.items():
        assert set(found) == warmup.jobs[user] | load.jobs[user], user
    finished = [(tokens[user], job_id) for user in tokens for job_id in jobs_by_user[user]]
    sample = random.Random(5).sample(finished, min(STORED_LOG_SAMPLE, len(finished)))
    assert stored_log_faults(load_api, sample) == []
    check_health(load_api)
    assert after.subscriptions == 0
    assert after.tasks <= before.tasks + TASK_SLACK, (before, after)
    assert after.rss_kib - before.rss_kib < RSS_GROWTH_KIB, (before, after)
