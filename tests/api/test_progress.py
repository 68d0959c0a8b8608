"""Structured job progress end to end: the agent's reports reach WatchJob as
``progress`` events while the job runs, and GetJob returns the last one, in any control
plane process (the stored copy).

rattler reports bytes only for packages it downloads (a ``file://`` package counts as a
whole once extracted), so the large package here comes from a channel served over HTTP
on loopback, slowly enough that its download takes seconds.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from darb.v1 import common_pb2
from testkit.agent import AgentProcess
from testkit.channel import PackageSpec, build_channel, served_slowly
from testkit.control_plane import TERMINAL, ApiProcess, Client

LARGE_BYTES = 12 * 1024 * 1024  # about 6 s to download at served_slowly's rate
ORDER = [
    common_pb2.JOB_PHASE_SOLVING,
    common_pb2.JOB_PHASE_DOWNLOADING,
    common_pb2.JOB_PHASE_LINKING,
    common_pb2.JOB_PHASE_WRITING_LOCK,
]
DOWNLOADING = common_pb2.JOB_PHASE_DOWNLOADING


@pytest.fixture(scope="module")
def http_channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("http-channel")
    build_channel(
        directory,
        [
            PackageSpec("acme-small", "1.0", files={"share/acme-small/README": b"small\n"}),
            PackageSpec("acme-large", "1.0", size_bytes=LARGE_BYTES),
        ],
    )
    with served_slowly(directory) as url:
        yield url
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def start_api(
    own_database: str,
    api_factory: Callable[..., ApiProcess],
    agent_factory: Callable[..., AgentProcess],
    http_channel: str,
    channel_url: str,
) -> Callable[[], ApiProcess]:
    """Control planes on one database of this test, with one agent of its own (its own
    package cache: the large package is always downloaded), both allowing the HTTP
    channel."""
    allowed = f"{channel_url},{http_channel}"
    agent = agent_factory(DARB_ALLOWED_CHANNELS=allowed)
    return lambda: api_factory(own_database, executors=agent.addr, DARB_ALLOWED_CHANNELS=allowed)


def _environment(client: Client, name: str, channel: str) -> str:
    created = client.create(name, ["acme-small"], [channel])
    job = client.wait(created.job.id, timeout=120)
    assert job.status == common_pb2.JOB_STATUS_COMPLETED, job.error
    return str(created.environment.id)


def _watch(client: Client, job_id: str) -> list[Any]:
    return list(client.watch(job_id, timeout=240))


def _phases(progress: list[common_pb2.JobProgress]) -> list[int]:
    runs: list[int] = []
    for report in progress:
        if not runs or runs[-1] != report.phase:
            runs.append(report.phase)
    return runs


def _check_download(progress: list[common_pb2.JobProgress]) -> None:
    """Rising bytes before the download ended: several counts strictly between 0 and
    the total, never going back."""
    downloading = [report for report in progress if report.phase == DOWNLOADING]
    assert downloading, progress
    total = downloading[-1].bytes_total
    assert total > LARGE_BYTES
    done = [report.bytes_done for report in downloading]
    assert done == sorted(done), done
    assert len({value for value in done if 0 < value < total}) >= 3, done


def test_watch_relays_rising_progress_and_get_job_returns_the_last(
    start_api: Callable[[], ApiProcess], http_channel: str
) -> None:
    client = start_api().admin()
    environment_id = _environment(client, "progress-watch", http_channel)
    job = client.install(environment_id, ["acme-large"])
    events = _watch(client, job.id)

    assert events[-1].HasField("job") and events[-1].job.status in TERMINAL
    assert events[-1].job.status == common_pb2.JOB_STATUS_COMPLETED, events[-1].job.error
    progress = [event.progress for event in events if event.HasField("progress")]
    phases = _phases(progress)
    assert phases == sorted(phases, key=ORDER.index), phases  # in order, none repeated
    assert phases[-3:] == ORDER[1:], phases  # the solve may end before the watch begins
    _check_download(progress)
    times = [report.time.ToNanoseconds() for report in progress]
    assert times == sorted(times) and len(set(times)) == len(times)
    linked = [report for report in progress if report.phase == common_pb2.JOB_PHASE_LINKING][-1]
    assert linked.packages_done == linked.packages_total == 1, linked
    # Every progress event came while the job ran: before the terminal status.
    statuses = [i for i, event in enumerate(events) if event.HasField("job")]
    last_progress = max(i for i, event in enumerate(events) if event.HasField("progress"))
    assert last_progress < statuses[-1]

    finished = client.get_job(job.id)
    assert finished.HasField("progress"), "a job that ended keeps its last progress"
    assert finished.progress == progress[-1]
    assert finished.progress.phase == common_pb2.JOB_PHASE_WRITING_LOCK


def test_another_control_plane_returns_the_stored_progress(
    start_api: Callable[[], ApiProcess], http_channel: str
) -> None:
    """Two control planes on one database: whichever runs the job, GetJob and WatchJob
    of the other read its progress from the table while it runs."""
    clients = [start_api().admin(), start_api().admin()]
    environment_id = _environment(clients[0], "progress-shared", http_channel)
    job = clients[0].install(environment_id, ["acme-large"])
    watched: list[list[Any]] = [[], []]
    threads = [
        threading.Thread(target=lambda i=i: watched[i].extend(_watch(clients[i], job.id)))
        for i in range(2)
    ]
    for thread in threads:
        thread.start()
    seen: list[list[common_pb2.JobProgress]] = [[], []]
    deadline = time.monotonic() + 240
    while True:
        got = [client.get_job(job.id) for client in clients]
        if all(each.status in TERMINAL for each in got):
            break
        for index, each in enumerate(got):
            if each.status == common_pb2.JOB_STATUS_RUNNING and each.HasField("progress"):
                seen[index].append(each.progress)
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for thread in threads:
        thread.join(timeout=60)

    assert got[0].status == common_pb2.JOB_STATUS_COMPLETED, got[0].error
    for index in range(2):
        downloading = [p for p in seen[index] if p.phase == DOWNLOADING]
        total = LARGE_BYTES
        assert any(total // 100 < p.bytes_done < p.bytes_total for p in downloading), (
            index,
            seen[index],
        )
        progress = [event.progress for event in watched[index] if event.HasField("progress")]
        _check_download(progress)
    assert got[0].progress == got[1].progress
    assert got[0].progress.phase == common_pb2.JOB_PHASE_WRITING_LOCK
