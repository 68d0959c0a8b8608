"""Job ordering per environment, concurrency, live logs and cancellation, on PostgreSQL."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from darb.v1 import common_pb2, environments_pb2, jobs_pb2
from testkit.agent import AgentProcess
from testkit.control_plane import ApiProcess, Client

COMPLETED = common_pb2.JOB_STATUS_COMPLETED


def _ready(client: Client, name: str, packages: list[str] | None = None) -> str:
    created = client.create(name, packages or ["acme-core ==1.0"])
    assert client.wait(created.job.id).status == COMPLETED
    return created.environment.id


def test_installs_submitted_together_run_one_after_the_other(api: ApiProcess) -> None:
    client = api.new_user()
    env_id = _ready(client, "serial")
    first = client.install(env_id, ["acme-utils"])
    second = client.install(env_id, ["acme-tool"])
    first, second = client.wait(first.id), client.wait(second.id)
    assert first.status == second.status == COMPLETED, (first.error, second.error)
    assert second.started_at.ToDatetime() >= first.completed_at.ToDatetime()
    assert set(client.packages(env_id)) == {"acme-core", "acme-utils", "acme-tool"}


def test_an_install_right_after_create_waits_for_it(api: ApiProcess) -> None:
    client = api.new_user()
    created = client.create("queued", ["acme-core ==1.0"])
    install = client.install(created.environment.id, ["acme-utils"])
    assert install.status == common_pb2.JOB_STATUS_PENDING
    create, install = client.wait(created.job.id), client.wait(install.id)
    assert create.status == install.status == COMPLETED
    assert install.started_at.ToDatetime() >= create.completed_at.ToDatetime()


def test_jobs_behind_a_failed_create_fail_saying_so(api: ApiProcess) -> None:
    client = api.new_user()
    created = client.create("broken", ["acme-broken"])
    install = client.install(created.environment.id, ["acme-utils"])
    assert client.wait(created.job.id).status == common_pb2.JOB_STATUS_FAILED
    install = client.wait(install.id)
    assert install.status == common_pb2.JOB_STATUS_FAILED
    assert "creating environment 'broken' failed" in install.error
    environment = client.get_env(created.environment.id)
    assert environment.status == common_pb2.ENVIRONMENT_STATUS_FAILED and environment.error
    # A failed environment takes no more package changes, but can be deleted.
    with pytest.raises(grpc.RpcError) as info:
        client.install(environment.id, ["acme-utils"])
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    request = environments_pb2.DeleteEnvironmentRequest(id=environment.id)
    delete = client.call(client.envs.DeleteEnvironment, request).job
    assert client.wait(delete.id).status == COMPLETED


def test_twenty_environments_created_at_once_are_all_ready(api: ApiProcess) -> None:
    client = api.new_user()
    with ThreadPoolExecutor(20) as pool:
        created = list(pool.map(lambda i: client.create(f"many-{i}", ["acme-utils"]), range(20)))
        jobs = list(pool.map(lambda c: client.wait(c.job.id, timeout=300), created))
    assert [job.status for job in jobs] == [COMPLETED] * 20, [job.error for job in jobs]
    for response in created:
        environment = client.get_env(response.environment.id)
        assert environment.status == common_pb2.ENVIRONMENT_STATUS_READY


def _seqs(client: Client, job_id: str, after_seq: int = 0) -> tuple[list[int], list[int]]:
    """Line seqs of a watch, and the job statuses it reported, in order (progress events,
    tested in test_progress.py, are left out)."""
    seqs, statuses = [], []
    for event in client.watch(job_id, after_seq=after_seq):
        if event.HasField("log_lines"):
            seqs += [line.seq for line in event.log_lines.lines]
        elif event.HasField("job"):
            statuses.append(event.job.status)
    return seqs, statuses


def test_watchers_joining_mid_job_see_contiguous_lines(
    api: ApiProcess, shared_agent: AgentProcess
) -> None:
    client = api.new_user()
    env_id = _ready(client, "watched")
    shared_agent.evict_cached("acme-big")
    job = client.install(env_id, ["acme-big"])
    # Join once the job runs and has some output, then again resuming from a seq.
    deadline = time.monotonic() + 60
    while not client.get_job(job.id).logs and time.monotonic() < deadline:
        time.sleep(0.05)
    results: dict[str, tuple[list[int], list[int]]] = {}

    def watch(key: str, after: int) -> None:
        results[key] = _seqs(client, job.id, after)

    threads = [
        threading.Thread(target=watch, args=(key, after))
        for key, after in [("all", 0), ("resumed", 1)]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    final = client.get_job(job.id)
    assert final.status == COMPLETED, final.error
    total = len(final.logs.splitlines())
    assert total >= 2
    seqs, statuses = results["all"]
    assert seqs == list(range(1, total + 1))
    assert statuses[-1] == COMPLETED and statuses[0] in (common_pb2.JOB_STATUS_RUNNING, COMPLETED)
    assert results["resumed"][0] == list(range(2, total + 1))
    # A watcher of a finished job gets its status first, the lines, and the status last.
    events = list(client.watch(job.id))
    assert [e.WhichOneof("event") for e in (events[0], events[-1])] == ["job", "job"]
    assert _seqs(client, job.id) == (list(range(1, total + 1)), [COMPLETED, COMPLETED])


def test_cancel_a_pending_and_a_running_job(api: ApiProcess, shared_agent: AgentProcess) -> None:
    client = api.new_user()
    env_id = _ready(client, "cancelled")
    shared_agent.evict_cached("acme-big")
    running = client.install(env_id, ["acme-big"])
    pending = client.install(env_id, ["acme-tool"])
    cancelled = client.call(client.jobs.CancelJob, jobs_pb2.CancelJobRequest(id=pending.id)).job
    assert cancelled.status == common_pb2.JOB_STATUS_CANCELLED

    deadline = time.monotonic() + 60
    while client.get_job(running.id).status == common_pb2.JOB_STATUS_PENDING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client.call(client.jobs.CancelJob, jobs_pb2.CancelJobRequest(id=running.id))
    running = client.wait(running.id)
    assert running.status == common_pb2.JOB_STATUS_CANCELLED
    assert "cancelled" in running.error
    # The environment is left as it was, and takes jobs again.
    assert client.packages(env_id) == {"acme-core": "1.0"}
    assert client.get_env(env_id).status == common_pb2.ENVIRONMENT_STATUS_READY
    assert client.wait(client.install(env_id, ["acme-tool"]).id).status == COMPLETED
