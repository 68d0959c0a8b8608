"""Log storage per job is capped: long lines are cut, long logs keep head and tail, say so,
and the stored lines stay numbered 1, 2, 3, ... for watchers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from darb.v1 import common_pb2
from services.api.joblog.cap import LogCap, cut_line
from services.api.records import LineRow
from shared.config import ApiLimits
from testkit.control_plane import ApiProcess, watched_lines
from testkit.postgres import fresh_database

NOW = datetime(2024, 1, 1, tzinfo=UTC)


def _run(cap: LogCap, count: int) -> list[LineRow]:
    rows = [row for index in range(count) for row in cap.add("stdout", NOW, f"line {index}")]
    return rows + cap.finish()


def test_a_short_log_is_kept_whole() -> None:
    rows = _run(LogCap(ApiLimits(max_log_lines_per_job=10)), 4)
    assert [row.text for row in rows] == [f"line {index}" for index in range(4)]
    assert [row.seq for row in rows] == [1, 2, 3, 4]


def test_a_long_log_keeps_head_and_tail_and_says_how_much_is_left_out() -> None:
    rows = _run(LogCap(ApiLimits(max_log_lines_per_job=10)), 100)
    texts = [row.text for row in rows]
    assert len(rows) == 10
    assert [row.seq for row in rows] == list(range(1, 11))
    assert texts[:4] == ["line 0", "line 1", "line 2", "line 3"]
    assert "more than 4 lines" in texts[4] and "DARB_MAX_LOG_LINES_PER_JOB=10" in texts[4]
    assert texts[5].startswith("... 92 lines omitted") and rows[5].stream == "stderr"
    assert texts[6:] == ["line 96", "line 97", "line 98", "line 99"]


def test_a_log_just_over_the_head_loses_nothing() -> None:
    rows = _run(LogCap(ApiLimits(max_log_lines_per_job=10)), 8)
    texts = [row.text for row in rows]
    assert [row.seq for row in rows] == list(range(1, 10))
    assert [text for text in texts if text.startswith("line")] == [f"line {i}" for i in range(8)]
    assert not any("omitted" in text for text in texts)


def test_the_tail_is_stored_only_at_the_end() -> None:
    cap = LogCap(ApiLimits(max_log_lines_per_job=10))
    live = [row for index in range(50) for row in cap.add("stdout", NOW, f"line {index}")]
    assert len(live) == 5  # the head and the notice; the rest waits for the job's end
    assert [row.seq for row in cap.finish()] == [6, 7, 8, 9, 10]


@pytest.mark.parametrize("text", ["x" * 5000, "é" * 3000, "ok" + "🙂" * 700])
def test_long_lines_are_cut_within_the_limit_with_a_marker(text: str) -> None:
    cut = cut_line(text, 200)
    assert len(cut.encode()) <= 200
    assert cut.endswith("DARB_MAX_LOG_LINE_BYTES=200]")
    assert text.startswith(cut.split(" ... [line cut")[0])
    assert cut_line("short", 200) == "short"


@pytest.fixture
def capped_api(api_factory: Callable[..., ApiProcess]) -> Iterator[ApiProcess]:
    with fresh_database() as url:
        yield api_factory(url, DARB_MAX_LOG_LINES_PER_JOB="10", DARB_MAX_LOG_LINE_BYTES="80")


def test_a_job_stores_and_serves_at_most_the_cap(capped_api: ApiProcess) -> None:
    client = capped_api.new_user()
    created = client.create("capped", ["acme-core", "acme-utils"])
    seqs, texts = [], []
    for line in watched_lines(client.watch(created.job.id)):
        seqs.append(line.seq)
        texts.append(line.text)
    job = client.get_job(created.job.id)
    assert job.status == common_pb2.JOB_STATUS_COMPLETED, job.error
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) <= 10
    assert job.logs.split("\n") == texts
    output = [text for text in texts if not text.startswith("... ")]
    assert all(len(text.encode()) <= 80 for text in output)
    assert any("lines omitted (DARB_MAX_LOG_LINES_PER_JOB=10)" in text for text in texts)
    # A second watcher, reading only from the database, sees exactly the same lines.
    again = [line.text for line in watched_lines(client.watch(created.job.id))]
    assert again == texts
