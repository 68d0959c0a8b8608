"""Prometheus metrics and key=value job logs of a real control plane (DARB_METRICS_ADDR).

A fresh database per test: the job counters are per process, and a control plane of
another test on a shared database could claim (and so count) these jobs.
"""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from darb.v1 import common_pb2, environments_pb2, jobs_pb2
from services.api.metrics import parse_addr
from testkit.agent import AgentProcess
from testkit.control_plane import ADMIN_PASSWORD, TERMINAL, ApiProcess, Client
from testkit.postgres import fresh_database
from tests.api.faults import ready_environment

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
CREATE_METHOD = "darb.v1.EnvironmentService/CreateEnvironment"
GET_ENV_METHOD = "darb.v1.EnvironmentService/GetEnvironment"
WATCH_METHOD = "darb.v1.JobService/WatchJob"
RPC_COUNT = "darb_rpc_duration_seconds_count"


@pytest.fixture
def metered(api_factory: Callable[..., ApiProcess]) -> Iterator[ApiProcess]:
    with fresh_database() as url:
        yield api_factory(url, DARB_METRICS_ADDR="127.0.0.1:0")


def metrics_url(api: ApiProcess) -> str:
    found = re.search(r"metrics on (http://\S+/metrics)", api.log_text())
    assert found, api.log_text()
    return found[1]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def eventually(url: str, check: Callable[[Samples], bool], timeout: float = 60) -> Samples:
    """Scrapes until ``check`` holds; gauges refreshed in the background get time."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def test_metrics_count_jobs_rpcs_agents_and_lines(
    metered: ApiProcess, shared_agent: AgentProcess
) -> None:
    url = metrics_url(metered)
    client = metered.new_user()
    env_id = ready_environment(client, f"m{uuid.uuid4().hex[:8]}", ["acme-core"])
    install = client.install(env_id, ["acme-utils"])
    watch_is_open = _watch_open_while_running(client, url, install.id)
    assert client.wait(install.id).status == common_pb2.JOB_STATUS_COMPLETED
    with pytest.raises(grpc.RpcError):
        client.get_env(str(uuid.uuid4()))

    # A call that fails is timed just after its status went out: poll for that one too.
    samples = eventually(
        url,
        lambda s: (
            value(s, "darb_jobs_total", type="install", status="completed") == 1
            and value(s, RPC_COUNT, method=GET_ENV_METHOD, code="NOT_FOUND") == 1
        ),
    )
    assert watch_is_open
    assert value(samples, "darb_jobs_total", type="create", status="completed") == 1
    assert value(samples, "darb_jobs_total", type="install", status="completed") == 1
    for job_type in ("create", "install"):
        count = value(samples, "darb_job_duration_seconds_count", type=job_type, status="completed")
        assert count == 1
    assert value(samples, "darb_job_dispatch_latency_seconds_count") == 2
    assert value(samples, "darb_agent_up", agent=shared_agent.addr) == 1
    assert value(samples, RPC_COUNT, method=CREATE_METHOD, code="OK") == 1
    assert value(samples, RPC_COUNT, method=GET_ENV_METHOD, code="NOT_FOUND") == 1
    watches = value(samples, RPC_COUNT, method=WATCH_METHOD, code="OK")
    assert watches is not None and watches >= 2
    assert (value(samples, "darb_log_lines_total") or 0) > 0

    # The job gauges are refreshed from the database every few seconds.
    drained = eventually(url, lambda s: _drained(s) == DRAINED)
    assert _drained(drained) == DRAINED


DRAINED = (0, 0, 0)


def _drained(samples: Samples) -> tuple[float | None, ...]:
    """Open watch streams, pending jobs, running installs."""
    return (
        value(samples, "darb_watch_streams"),
        value(samples, "darb_job_queue_depth"),
        value(samples, "darb_jobs_active", type="install", status="running"),
    )


def _watch_open_while_running(client: Client, url: str, job_id: str) -> bool:
    """Whether an open WatchJob stream shows in ``darb_watch_streams``. Only checkable
    while the job runs (the stream ends with it), so a job already over counts as shown."""
    stream = client.watch(job_id)
    next(stream)  # the first message: the stream is open on the server
    streams = value(scrape(url), "darb_watch_streams")
    shown = streams == 1 or client.get_job(job_id).status in TERMINAL
    stream.cancel()
    return shown


def test_rpcs_of_every_process_are_counted(
    own_database: str, api_factory: Callable[..., ApiProcess]
) -> None:
    """With DARB_API_PROCESSES=2 the kernel spreads connections over both processes; the
    primary's /metrics adds up the RPCs each of them served."""
    api = api_factory(own_database, DARB_METRICS_ADDR="127.0.0.1:0", DARB_API_PROCESSES="2")
    url = metrics_url(api)
    token = api.new_user().token
    calls = 24
    for _ in range(calls):  # a connection each, so that both processes serve some
        client = Client(grpc.insecure_channel(api.addr), token=token)
        with pytest.raises(grpc.RpcError):
            client.get_env(str(uuid.uuid4()))
        client.channel.close()

    def counted(samples: Samples) -> float | None:
        return value(samples, RPC_COUNT, method=GET_ENV_METHOD, code="NOT_FOUND")

    samples = eventually(url, lambda s: counted(s) == calls, timeout=10)
    assert counted(samples) == calls
    # Gauges that only the primary sets read as its value, not one per process.
    assert value(samples, "darb_job_queue_depth") == 0
    assert value(samples, "darb_watch_streams") == 0


def test_cancelled_jobs_are_counted_pending_or_running(
    metered: ApiProcess, shared_agent: AgentProcess
) -> None:
    """A pending job ends in CancelJob itself, not in the dispatcher: it counts too."""
    url = metrics_url(metered)
    client = metered.new_user()
    env_id = ready_environment(client, f"m{uuid.uuid4().hex[:8]}", ["acme-core"])
    shared_agent.evict_cached("acme-big")  # a slow install, for the next one to queue behind
    running = client.install(env_id, ["acme-big"])
    pending = client.install(env_id, ["acme-tool"])
    for job in (pending, running):
        client.call(client.jobs.CancelJob, jobs_pb2.CancelJobRequest(id=job.id))
    for job in (pending, running):
        assert client.wait(job.id).status == common_pb2.JOB_STATUS_CANCELLED

    cancelled = ("darb_jobs_total", frozenset({("type", "install"), ("status", "cancelled")}))
    samples = eventually(url, lambda s: s.get(cancelled) == 2)
    assert samples.get(cancelled) == 2
    assert f"job ended job_id={pending.id} environment_id={env_id} type=install" in (
        metered.log_text()
    )


def test_job_start_and_end_are_logged_with_ids(
    metered: ApiProcess, shared_agent: AgentProcess
) -> None:
    client = metered.new_user()
    created = client.create(f"m{uuid.uuid4().hex[:8]}", ["acme-core"])
    env_id, job_id = created.environment.id, created.job.id
    assert client.wait(job_id).status == common_pb2.JOB_STATUS_COMPLETED
    request = environments_pb2.DeleteEnvironmentRequest(id=env_id)
    delete = client.call(client.envs.DeleteEnvironment, request).job
    assert client.wait(delete.id).status == common_pb2.JOB_STATUS_COMPLETED

    log = metered.log_text()
    ids = f"job_id={job_id} environment_id={env_id}"
    started = rf"job started {ids} type=create agent={re.escape(shared_agent.addr)} waited=\S+s"
    assert re.search(rf"{started} specs=acme-core\n", log), log
    ended = rf"job ended {ids} type=create status=completed agent=\S+ duration=\S+s\n"
    assert re.search(ended, log), log
    assert f"job ended job_id={delete.id} environment_id={env_id} type=delete" in log
    assert ADMIN_PASSWORD not in log and client.token not in log


def test_parse_addr() -> None:
    assert parse_addr("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_addr(":9464") == ("0.0.0.0", 9464)
    assert parse_addr("[::1]:9464") == ("::1", 9464)
    for bad in ("localhost", "host:port", "host:70000"):
        with pytest.raises(ValueError, match="DARB_METRICS_ADDR"):
            parse_addr(bad)
