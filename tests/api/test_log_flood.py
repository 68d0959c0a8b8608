"""A job that floods its log (the benchmarks' stand-in pixi, run by the agent's real cli
engine): its lines travel in batches that arrive complete and in order, every watcher
gets every line once (also one that joins mid-flood), and a reader that stops reading
holds the printing process back instead of growing the agent's memory."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks import standin
from benchmarks.api_bench import logs_agent_env
from darb.executor.v1 import executor_pb2 as pb
from darb.v1 import common_pb2
from testkit.agent import AgentProcess
from testkit.control_plane import TERMINAL, ApiProcess, watched_lines
from tests.api.faults import rss_kib
from tests.executor.helpers import new_id
from tests.executor.test_agent_lifecycle import PID_LINE


@pytest.fixture
def flood_agent(agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> AgentProcess:
    """An agent whose ``pixi`` is the stand-in: ``lines-N`` and ``pace-R`` specs make it
    print N lines at R lines/s."""
    return agent_factory(**logs_agent_env(tmp_path / "standin"))


def _create(agent: AgentProcess, specs: list[str]) -> Iterator[Any]:
    request = pb.CreateEnvironmentRequest(environment_id=new_id(), name="flood", packages=specs)
    return agent.stub().CreateEnvironment(request, metadata=agent.metadata, timeout=120)


def _printed(texts: list[str]) -> list[int]:
    """The stand-in's line numbers among ``texts`` (the agent's own lines left out)."""
    return [parsed[0] for text in texts if (parsed := standin.parse(text))]


def test_a_flood_reaches_the_control_plane_in_few_complete_ordered_batches(
    flood_agent: AgentProcess,
) -> None:
    total = 50_000
    messages = list(_create(flood_agent, [f"lines-{total}"]))
    assert messages[-1].WhichOneof("event") == "result" and messages[-1].result.success
    events = {message.WhichOneof("event") for message in messages[:-1]}
    assert events <= {"log_lines", "progress"}, events
    batches = [m.log_lines.lines for m in messages[:-1] if m.WhichOneof("event") == "log_lines"]
    assert all(batches), "a batch is never empty"
    lines = [line for batch in batches for line in batch]
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
    assert _printed([line.text for line in lines]) == list(range(total))
    assert len(batches) < total / 20, f"{len(batches)} messages for {total} lines"


def test_a_reader_that_stops_reading_holds_the_printing_process_back(
    flood_agent: AgentProcess,
) -> None:
    """1,000,000 lines (80 MB) unread would take the agent's memory up by hundreds of MB;
    bounded buffers and flow control block the stand-in on its pipe instead."""
    before = rss_kib(flood_agent.process.pid)
    stream = _create(flood_agent, ["lines-1000000"])
    pid = None
    for message in stream:  # read until the stand-in runs, then stop reading
        for line in message.log_lines.lines:
            if (match := PID_LINE.search(line.text)) and "pixi add" in line.text:
                pid = int(match.group(1))
        if pid is not None:
            break
    assert pid is not None
    time.sleep(3)  # unthrottled, the stand-in prints all of it in about this time
    try:
        assert os.path.exists(f"/proc/{pid}"), "the stand-in finished: nothing held it back"
        grown_mb = (rss_kib(flood_agent.process.pid) - before) / 1024
        assert grown_mb < 100, f"the agent grew by {grown_mb:.0f} MB"
    finally:
        stream.cancel()


def test_every_watcher_of_a_flood_gets_every_line_once_also_when_joining_late(
    api_factory: Callable[..., ApiProcess], own_database: str, flood_agent: AgentProcess
) -> None:
    api = api_factory(
        own_database, executors=flood_agent.addr, DARB_MAX_LOG_LINES_PER_JOB="100000000"
    )
    client = api.new_user()
    total = 30_000  # GetJob returns the whole log in one message: under 4 MB
    job = client.create("flood", [f"lines-{total}", "pace-10000"]).job
    seen: dict[str, list[Any]] = {"first": [], "late": [], "resumed": []}

    def watch(key: str, after_seq: int) -> None:
        for event in client.watch(job.id, after_seq=after_seq, timeout=180):
            kind = event.WhichOneof("event")
            seen[key] += list(event.log_lines.lines) if kind == "log_lines" else [event.job]

    threads = {key: threading.Thread(target=watch, args=(key, 0)) for key in ("first", "late")}
    threads["resumed"] = threading.Thread(target=watch, args=("resumed", 12_000))
    threads["first"].start()
    deadline = time.monotonic() + 120
    while len(seen["first"]) < 10_000 and time.monotonic() < deadline:
        time.sleep(0.01)
    ended = [e for e in seen["first"] if isinstance(e, common_pb2.Job) and e.status in TERMINAL]
    assert not ended, "the flood was over before the late watcher joined"
    threads["late"].start()  # mid-flood: the start is stored, the rest is still coming
    threads["resumed"].start()
    for thread in threads.values():
        thread.join(180)
    final = client.get_job(job.id)
    assert final.status == common_pb2.JOB_STATUS_COMPLETED, final.error
    stored = final.logs.split("\n")
    assert len(stored) > total and _printed(stored) == list(range(total))
    for key, first_seq in (("first", 1), ("late", 1), ("resumed", 12_001)):
        events = seen[key]
        lines = [event for event in events if isinstance(event, common_pb2.LogLine)]
        assert [line.seq for line in lines] == list(range(first_seq, len(stored) + 1)), key
        assert [line.text for line in lines] == stored[first_seq - 1 :], key
        assert isinstance(events[-1], common_pb2.Job) and events[-1].status in TERMINAL, key


def test_a_line_with_nul_and_bytes_that_are_not_utf8_is_served_and_stored_alike(
    api_factory: Callable[..., ApiProcess], own_database: str, flood_agent: AgentProcess
) -> None:
    """PostgreSQL text cannot hold NUL: the line would never be stored, and the job never
    end. The agent writes U+FFFD for it, as for bytes that are not UTF-8."""
    api = api_factory(own_database, executors=flood_agent.addr)
    client = api.new_user()
    printed = "before\0after \xff end".encode("latin-1")
    job = client.create("awkward", [f"raw-{printed.hex()}"]).job
    watched = [line.text for line in watched_lines(client.watch(job.id, timeout=60))]
    final = client.get_job(job.id)
    assert final.status == common_pb2.JOB_STATUS_COMPLETED, final.error
    expected = "before\ufffdafter \ufffd end"
    assert expected in watched
    assert expected in final.logs.split("\n")
