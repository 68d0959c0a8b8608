"""The agent's operation streams carry structured progress between the log lines: the
phase, and packages and bytes done of total (the builtin engine's reports)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from darb.executor.v1 import executor_pb2 as pb
from services.executor.builtin_worker import progress as worker_progress
from testkit.agent import AgentProcess
from testkit.channel import ACME_BIG

from .helpers import REQUESTS, new_id

SOLVING = pb.OPERATION_PHASE_SOLVING
DOWNLOADING = pb.OPERATION_PHASE_DOWNLOADING
LINKING = pb.OPERATION_PHASE_LINKING
WRITING_LOCK = pb.OPERATION_PHASE_WRITING_LOCK
REMOVING = pb.OPERATION_PHASE_REMOVING
MARK = "\x1e"


def run(agent: AgentProcess, method: str, **fields: Any) -> tuple[list[Any], pb.OperationResult]:
    """The stream's messages in order: progress reports and lines, then the result."""
    stream = getattr(agent.stub(), method)(
        REQUESTS[method](**fields), metadata=agent.metadata, timeout=180
    )
    events: list[Any] = []
    result = None
    for message in stream:
        kind = message.WhichOneof("event")
        assert result is None, f"a {kind} came after the result"
        if kind == "result":
            result = message.result
        elif kind == "progress":
            events.append(message.progress)
        else:
            events.extend(message.log_lines.lines)
    assert result is not None
    return events, result


def reports(events: list[Any]) -> list[pb.Progress]:
    return [event for event in events if isinstance(event, pb.Progress)]


def phases(progress: list[pb.Progress]) -> list[int]:
    """The phases in the order they came, each run of one phase once."""
    runs: list[int] = []
    for report in progress:
        if not runs or runs[-1] != report.phase:
            runs.append(report.phase)
    return runs


def last_of(progress: list[pb.Progress], phase: int) -> pb.Progress:
    return [report for report in progress if report.phase == phase][-1]


def test_create_install_and_delete_report_their_phases_and_counts(
    agent_factory: Callable[..., AgentProcess],
) -> None:
    agent = agent_factory()  # its own package cache: acme-big is fetched, not cached
    environment_id = new_id()
    events, result = run(
        agent, "CreateEnvironment", environment_id=environment_id, name="p", packages=["acme-core"]
    )
    assert result.success, result.error
    created = reports(events)
    assert phases(created) == [SOLVING, DOWNLOADING, LINKING, WRITING_LOCK], created
    assert last_of(created, LINKING).packages_done == last_of(created, LINKING).packages_total == 1

    events, result = run(
        agent, "InstallPackages", environment_id=environment_id, packages=["acme-big"]
    )
    assert result.success, result.error
    progress = reports(events)
    assert phases(progress) == [SOLVING, DOWNLOADING, LINKING, WRITING_LOCK], progress
    downloading = [report for report in progress if report.phase == DOWNLOADING]
    total = downloading[0].bytes_total
    assert total > ACME_BIG.size_bytes  # the archive of the ~80 MB payload
    assert all(report.bytes_total == total for report in downloading)
    done = [report.bytes_done for report in downloading]
    assert done == sorted(done) and done[0] == 0, done
    assert last_of(progress, LINKING).bytes_done == total  # every byte in before linking
    linked = last_of(progress, LINKING)
    assert linked.packages_done == linked.packages_total == 1, linked
    times = [report.time.ToNanoseconds() for report in progress]
    assert times == sorted(times) and times[0] > 0
    # Reports travel beside the log, not in it; the log still names the work.
    lines = [event for event in events if isinstance(event, pb.LogLine)]
    assert not [line.text for line in lines if line.text.startswith(MARK)]
    assert any("acme-big" in line.text for line in lines)
    # Reports keep their place among the lines: the lock is written after WRITING_LOCK.
    writing = next(i for i, e in enumerate(events) if getattr(e, "phase", 0) == WRITING_LOCK)
    wrote = next(i for i, e in enumerate(events) if getattr(e, "text", "") == "wrote pixi.lock")
    assert writing < wrote

    events, result = run(agent, "DeleteEnvironment", environment_id=environment_id)
    assert result.success, result.error
    removed = reports(events)
    assert phases(removed) == [REMOVING], removed
    assert removed[-1].packages_done == removed[-1].packages_total == 2, removed


def test_an_install_from_the_cache_reports_no_download(
    agent_factory: Callable[..., AgentProcess],
) -> None:
    agent = agent_factory()
    first, second = new_id(), new_id()
    for environment_id in (first, second):
        events, result = run(
            agent, "CreateEnvironment", environment_id=environment_id, name="p",
            packages=["acme-utils"],
        )  # fmt: skip
        assert result.success, result.error
    progress = reports(events)  # the second create: both packages are in the cache
    assert phases(progress) == [SOLVING, LINKING, WRITING_LOCK], progress
    assert last_of(progress, LINKING).packages_done == 2
    assert all(report.bytes_total == 0 for report in progress)


def test_the_worker_throttles_reports_but_sends_every_phase_change_and_the_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    written: list[str] = []
    monkeypatch.setattr(worker_progress, "log", written.append)
    reports = worker_progress.Progress(interval=60)
    for done in range(100):
        reports.report(worker_progress.Phase.DOWNLOADING, nbytes=(done, 100))
    reports.report(worker_progress.Phase.LINKING, (0, 1), (100, 100))
    reports.report(worker_progress.Phase.LINKING, (1, 1), (100, 100))
    assert len(written) == 3  # the first, the phase's last before the next phase, LINKING
    reports.flush()
    parsed = [worker_progress.parse(line) for line in written]
    assert [(r.phase, r.packages_done, r.bytes_done) for r in parsed if r] == [
        (DOWNLOADING, 0, 0),
        (DOWNLOADING, 0, 99),
        (LINKING, 0, 100),
        (LINKING, 1, 100),
    ]
    assert worker_progress.parse("solving acme-core") is None
