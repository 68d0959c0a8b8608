"""Job progress in the SDK and the CLI, without a server: the watch turns progress
events into ``darb.Progress``, and the CLI draws them (rich's bar on a terminal, the
spinner's text bar, or a plain line per phase) without ever putting them on a piped
stdout."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
import rich  # noqa: F401  # in requirements.lock: missing, the venv is broken (no skip)

import darb
from darb import cli, terminal
from darb.client import Client
from darb.models import JobPhase, Progress
from darb.v1 import common_pb2, jobs_pb2
from tests.sdk.conftest import SLOW_PACKAGE_BYTES, Cli


class Tty(io.StringIO):
    """A captured stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def _progress(phase: JobPhase, *counts: int) -> Progress:
    packages_done, packages_total, bytes_done, bytes_total = (*counts, 0, 0, 0, 0)[:4]
    return Progress(phase, packages_done, packages_total, bytes_done, bytes_total, None)


DOWNLOADING = _progress(JobPhase.DOWNLOADING, 0, 0, 3_200_000, 7_100_000)
LINKING = _progress(JobPhase.LINKING, 4, 9)


# The SDK's watch


class _Stream:
    def __init__(self, events: list[jobs_pb2.WatchJobResponse]) -> None:
        self.events = events

    def __iter__(self) -> Iterator[jobs_pb2.WatchJobResponse]:
        return iter(self.events)

    def cancel(self) -> None:
        pass


class _Stub:
    """A JobService whose WatchJob answers with the given events."""

    def __init__(self, events: list[jobs_pb2.WatchJobResponse], job: common_pb2.Job) -> None:
        self.events = events
        self.job = job

    def WatchJob(self, request: Any, **kwargs: Any) -> _Stream:
        return _Stream(self.events)

    def GetJob(self, request: Any, **kwargs: Any) -> jobs_pb2.GetJobResponse:
        return jobs_pb2.GetJobResponse(job=self.job)


def _job(status: int) -> common_pb2.Job:
    return common_pb2.Job(id="job-1", status=status, type=common_pb2.JOB_TYPE_CREATE_ENVIRONMENT)


def _events() -> list[jobs_pb2.WatchJobResponse]:
    line = common_pb2.LogLine(seq=1, text="solving acme-core")
    progress = common_pb2.JobProgress(
        phase=common_pb2.JOB_PHASE_DOWNLOADING, bytes_done=3_200_000, bytes_total=7_100_000
    )
    progress.time.FromSeconds(1_700_000_000)
    return [
        jobs_pb2.WatchJobResponse(job=_job(common_pb2.JOB_STATUS_RUNNING)),
        jobs_pb2.WatchJobResponse(log_lines=jobs_pb2.LogLines(lines=[line])),
        jobs_pb2.WatchJobResponse(progress=progress),
        jobs_pb2.WatchJobResponse(
            progress=common_pb2.JobProgress(
                phase=common_pb2.JOB_PHASE_LINKING, packages_done=4, packages_total=9
            )
        ),
        jobs_pb2.WatchJobResponse(job=_job(common_pb2.JOB_STATUS_COMPLETED)),
    ]


@pytest.fixture
def fake_client() -> Iterator[Client]:
    client = Client("127.0.0.1:1")
    client.jobs._stub = _Stub(_events(), _job(common_pb2.JOB_STATUS_COMPLETED))  # type: ignore[assignment]
    yield client
    client.close()


def test_watch_yields_progress_events_in_order(fake_client: Client) -> None:
    events = list(fake_client.jobs.watch("job-1"))
    kinds = [type(event).__name__ for event in events]
    assert kinds == ["Job", "LogLine", "Progress", "Progress", "Job"]
    downloading, linking = events[2], events[3]
    assert isinstance(downloading, darb.Progress) and isinstance(linking, darb.Progress)
    assert (downloading.phase, downloading.bytes_done, downloading.bytes_total) == (
        darb.JobPhase.DOWNLOADING,
        3_200_000,
        7_100_000,
    )
    assert downloading.time is not None and downloading.fraction == pytest.approx(32 / 71)
    assert (linking.phase, linking.packages_done, linking.packages_total) == (
        darb.JobPhase.LINKING,
        4,
        9,
    )
    assert linking.time is None
    # wait() reads past them to the ended job.
    assert fake_client.jobs.wait("job-1").status == darb.JobStatus.COMPLETED


def test_a_job_carries_its_last_progress() -> None:
    message = _job(common_pb2.JOB_STATUS_RUNNING)
    assert darb.Job.from_proto(message).progress is None
    message.progress.phase = common_pb2.JOB_PHASE_SOLVING
    message.created_by_username = "bob"
    job = darb.Job.from_proto(message)
    assert job.progress == _progress(JobPhase.SOLVING) and job.created_by_username == "bob"


# What the CLI draws


def test_progress_lines() -> None:
    assert terminal.progress_line(DOWNLOADING) == (
        "downloading [#########-----------]  45% 3.2 MB/7.1 MB"
    )
    assert terminal.progress_line(LINKING) == "linking [#########-----------]  44% 4/9 packages"
    assert terminal.progress_line(_progress(JobPhase.SOLVING)) == "solving"
    assert terminal.progress_line(_progress(JobPhase.WRITING_LOCK)) == "writing lock"
    unknown_total = _progress(JobPhase.DOWNLOADING, 0, 0, 1500, 0)
    assert terminal.progress_line(unknown_total) == "downloading 1.5 kB"
    assert _progress(JobPhase.LINKING, 12, 9).fraction == 1.0  # never past the end


def test_rich_bar_on_a_terminal_stdout() -> None:
    stdout, stderr = Tty(), io.StringIO()
    with terminal.JobDisplay("job-1", "RUNNING", stdout, stderr, use_rich=True) as display:
        assert display.interactive
        display.print("solving acme-core")
        display.progress(DOWNLOADING)
        display._bar.bar.refresh()  # type: ignore[union-attr]  # drawn now, not at 10 Hz
        drawn = stdout.getvalue()
        display.progress(LINKING)
        display._bar.bar.refresh()  # type: ignore[union-attr]
    shown = stdout.getvalue()
    assert "solving acme-core" in shown
    assert "downloading" in drawn and "45%" in drawn and "3.2 MB/7.1 MB" in drawn
    assert "━" in drawn  # the bar itself
    assert "linking" in shown and "4/9 packages" in shown
    assert stderr.getvalue() == ""  # no spinner besides the bar


def test_spinner_text_bar_on_a_terminal_stderr() -> None:
    stdout, stderr = io.StringIO(), Tty()
    with terminal.JobDisplay("job-1", "RUNNING", stdout, stderr, use_rich=False) as display:
        display.progress(DOWNLOADING)
        display.print("a log line")
    assert stdout.getvalue() == "a log line\n"
    assert "RUNNING downloading [#########-----------]  45% 3.2 MB/7.1 MB" in stderr.getvalue()


def test_plain_lines_when_nothing_is_a_terminal() -> None:
    stdout, stderr = io.StringIO(), io.StringIO()
    with terminal.JobDisplay("job-1", "RUNNING", stdout, stderr) as display:
        assert not display.interactive
        for progress in (DOWNLOADING, DOWNLOADING, LINKING):
            display.progress(progress)
        display.print("a log line")
    assert stdout.getvalue() == "a log line\n"
    # One line for the first phase; the next phase change came within the second.
    assert stderr.getvalue() == "job job-1: downloading\n"

    stderr = io.StringIO()
    display = terminal.JobDisplay("job-2", "RUNNING", io.StringIO(), stderr)
    display.PLAIN_INTERVAL = 0
    for progress in (DOWNLOADING, DOWNLOADING, LINKING):
        display.progress(progress)
    assert stderr.getvalue().splitlines() == ["job job-2: downloading", "job job-2: linking"]


def test_a_followed_job_through_the_cli_pipes_only_log_lines(
    fake_client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    job = darb.Job.from_proto(_job(common_pb2.JOB_STATUS_PENDING))
    assert cli._follow(fake_client, job) == 0
    out, err = capsys.readouterr()
    assert out == "solving acme-core\n"
    assert err.splitlines() == [
        "job job-1: running",
        "job job-1: downloading",
        "job job-1 completed in " + err.rsplit("completed in ", 1)[1].strip(),
    ]


def test_a_followed_job_on_a_terminal_draws_the_bar(
    fake_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    stdout, stderr = Tty(), io.StringIO()
    monkeypatch.setattr("sys.stdout", stdout)
    monkeypatch.setattr("sys.stderr", stderr)
    drawn: list[str] = []
    real = terminal._RichBar.update_progress

    def update_and_draw(self: terminal._RichBar, progress: Progress) -> None:
        real(self, progress)
        self.bar.refresh()
        drawn.append(stdout.getvalue())

    monkeypatch.setattr(terminal._RichBar, "update_progress", update_and_draw)
    job = darb.Job.from_proto(_job(common_pb2.JOB_STATUS_PENDING))
    assert cli._follow(fake_client, job) == 0
    assert "solving acme-core" in stdout.getvalue()
    assert "downloading" in drawn[0] and "45%" in drawn[0]
    assert "linking" in drawn[1] and "4/9 packages" in drawn[1]
    assert "job job-1 completed in" in stderr.getvalue()
    assert "job job-1: running" not in stderr.getvalue()  # the bar shows the status


# Against the real stack


def _phases(reports: list[Progress]) -> list[JobPhase]:
    """The phases in the order they came, each run of one phase once."""
    runs: list[JobPhase] = []
    for report in reports:
        if not runs or runs[-1] != report.phase:
            runs.append(report.phase)
    return runs


def test_a_job_on_the_real_stack_reports_its_progress(
    client: darb.Client, slow_channel: tuple[str, str]
) -> None:
    url, name = slow_channel
    _, job = client.environments.create("progressing", packages=[name], channels=[url])
    events = list(client.jobs.watch(job.id))
    assert isinstance(events[-1], darb.Job) and events[-1].status == darb.JobStatus.COMPLETED
    reports = [event for event in events if isinstance(event, darb.Progress)]
    assert _phases(reports) == [
        JobPhase.SOLVING,
        JobPhase.DOWNLOADING,
        JobPhase.LINKING,
        JobPhase.WRITING_LOCK,
    ], reports
    downloading = [r for r in reports if r.phase == JobPhase.DOWNLOADING]
    assert downloading[-1].bytes_total > SLOW_PACKAGE_BYTES
    assert [r.bytes_done for r in downloading] == sorted(r.bytes_done for r in downloading)
    linked = [r for r in reports if r.phase == JobPhase.LINKING][-1]
    assert linked.packages_done == linked.packages_total == 1
    assert all(report.time is not None for report in reports)
    # The ended job keeps its last report.
    assert client.jobs.get(job.id).progress == reports[-1]


def test_a_piped_cli_gets_the_phases_on_stderr_only(
    logged_in: Cli, slow_channel: tuple[str, str]
) -> None:
    url, name = slow_channel
    result = logged_in("env", "create", "piped", "-c", url, "-p", name)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.split(", job ")[1].split()[0]
    lines = result.stderr.splitlines()
    shown = [line.split(": ", 1)[1] for line in lines if line.startswith(f"job {job_id}: ")]
    # The statuses and, at most one a second, the phases in their order (the first the
    # watch sees always: solving itself may be over before the CLI starts watching).
    order = ["solving", "downloading", "linking", "writing lock"]
    phases = [line for line in shown if line != "running"]
    assert "running" in shown and phases and set(phases) <= set(order), lines
    assert [order.index(phase) for phase in phases] == sorted(map(order.index, phases)), lines
    assert not any(f"job {job_id}: " in line for line in result.stdout.splitlines())
    assert "━" not in result.stdout and "[#" not in result.stderr  # no bar on a pipe
