"""What the CLI prints: tables, JSON, key/value blocks, version diffs, and the job
spinner and progress bar."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TextIO

from darb.models import (
    JobPhase,
    Package,
    PackageChange,
    Progress,
    RequestedSpecChange,
    VersionDiff,
)


def when(value: datetime | None) -> str:
    """A timestamp in the reader's local time, to the second."""
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def print_json(value: Any) -> None:
    """A dataclass (or a list of them) as JSON whose keys are the proto field names."""
    if isinstance(value, list):
        data: Any = [dataclasses.asdict(item) for item in value]
    else:
        data = dataclasses.asdict(value)
    print(json.dumps(data, indent=2, default=_json_default))


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    rows = [list(row) for row in rows]
    widths = [
        max([len(header), *(len(row[i]) for row in rows)]) for i, header in enumerate(headers)
    ]
    for row in [list(headers), *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def print_fields(fields: Iterable[tuple[str, str]]) -> None:
    fields = list(fields)
    width = max(len(key) for key, _ in fields) + 1
    for key, value in fields:
        print(f"{key + ':':<{width}} {value}")


def arrow() -> str:
    """``→``, or ``->`` where standard output cannot encode it."""
    try:
        "→".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "->"
    return "→"


def diff_lines(diff: VersionDiff) -> list[str]:
    """A version diff for people: the installed packages (``+ name version``, ``- name
    version``, ``~ name old → new``), then the requested specs the same way; each
    section by name."""
    if diff.empty:
        return ["no differences"]
    packages = [
        *((p.name, f"+ {_package(p)}") for p in diff.added),
        *((p.name, f"- {_package(p)}") for p in diff.removed),
        *((c.name, f"~ {_package_change(c)}") for c in diff.changed),
    ]
    requested = [
        *((s.name, f"+ {s.spec}") for s in diff.requested_added),
        *((s.name, f"- {s.spec}") for s in diff.requested_removed),
        *((c.name, f"~ {_spec_change(c)}") for c in diff.requested_changed),
    ]
    lines = []
    for title, entries in (("packages", packages), ("requested (the manifest)", requested)):
        lines.append(f"{title}:" if entries else f"{title}: no changes")
        lines.extend(f"  {line}" for _, line in sorted(entries))
    return lines


def _package(package: Package) -> str:
    return f"{package.name} {package.version}"


def _package_change(change: PackageChange) -> str:
    old, new = change.from_version, change.to_version
    if old == new:  # a rebuild: the builds tell them apart
        old, new = f"{old} ({change.from_build})", f"{new} ({change.to_build})"
    return f"{change.name} {old} {arrow()} {new}"


def _spec_change(change: RequestedSpecChange) -> str:
    old, new = (_constraint(change.name, spec) for spec in (change.from_spec, change.to_spec))
    return f"{change.name} {old} {arrow()} {new}"


def _constraint(name: str, spec: str) -> str:
    """A spec without its leading package name (``*`` for any version)."""
    if spec == name:
        return "*"
    return spec.removeprefix(f"{name} ")


def size(count: int) -> str:
    """A byte count for people: ``512 B``, ``3.2 MB``."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def phase_name(progress: Progress) -> str:
    """``downloading``, ``writing lock``, ...; ``working`` for an unknown phase."""
    if progress.phase == JobPhase.UNSPECIFIED:
        return "working"
    return progress.phase.lower().replace("_", " ")


def progress_counts(progress: Progress) -> str:
    """The phase's own count: ``3.2 MB/7.1 MB`` while downloading, ``4/9 packages``
    otherwise; empty when its total is not known."""
    if progress.phase == JobPhase.DOWNLOADING:
        if progress.bytes_total > 0:
            return f"{size(progress.bytes_done)}/{size(progress.bytes_total)}"
        return size(progress.bytes_done) if progress.bytes_done else ""
    if progress.packages_total > 0:
        return f"{progress.packages_done}/{progress.packages_total} packages"
    return ""


def progress_line(progress: Progress, width: int = 20) -> str:
    """``downloading [#########-----------]  45% 3.2 MB/7.1 MB``: the phase, a bar and
    the counts when the total is known, the phase (and any count) otherwise."""
    parts = [phase_name(progress)]
    fraction = progress.fraction
    if fraction is not None:
        filled = round(fraction * width)
        parts.append(f"[{'#' * filled}{'-' * (width - filled)}] {fraction * 100:3.0f}%")
    counts = progress_counts(progress)
    if counts:
        parts.append(counts)
    return " ".join(parts)


class JobDisplay:
    """What the CLI shows while it follows a job: the job's log lines on stdout with,
    on a terminal, a live line of its status, phase and progress.

    With ``rich`` installed and stdout a terminal, that line is rich's progress bar on
    stdout (log lines print above it). Otherwise it is the ``Spinner`` on stderr (when
    stderr is a terminal) with a text bar; when neither is a terminal, a phase change
    is one plain ``job ID: downloading`` line on stderr, at most one a second, so a
    pipe only ever gets log lines on stdout.
    """

    PLAIN_INTERVAL = 1.0

    def __init__(
        self,
        job_id: str,
        status: str,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        use_rich: bool | None = None,
    ) -> None:
        self.job_id = job_id
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self._status = status
        self._phase: JobPhase | None = None
        self._last_plain = -self.PLAIN_INTERVAL
        self._bar: _RichBar | None = None
        if use_rich is None:
            use_rich = _rich_available() and self.stdout.isatty()
        self._spinner = Spinner(status, self.stderr)
        if use_rich:
            self._bar = _RichBar(status, self.stdout)
            self._spinner.enabled = False

    @property
    def interactive(self) -> bool:
        """True when a live line shows the status (status changes need no line)."""
        return self._bar is not None or self._spinner.enabled

    @property
    def elapsed(self) -> float:
        return self._spinner.elapsed

    def __enter__(self) -> JobDisplay:
        self._spinner.__enter__()
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Takes the live line away (again: closing twice is harmless)."""
        if self._bar is not None:
            self._bar.stop()
        self._spinner.__exit__(None, None, None)

    def print(self, text: str) -> None:
        """One log line, on stdout, above the live line."""
        if self._bar is not None:
            self._bar.print(text)
        elif self._spinner.enabled:
            self._spinner.print(text, self.stdout)
        else:
            print(text, file=self.stdout, flush=True)

    @property
    def status(self) -> str:
        return self._status

    @status.setter
    def status(self, status: str) -> None:
        self._status = status
        self._spinner.status = status
        if self._bar is not None:
            self._bar.update_status(status)

    def progress(self, progress: Progress) -> None:
        """The job's latest progress report."""
        if self._bar is not None:
            self._bar.update_progress(progress)
        elif self._spinner.enabled:
            self._spinner.progress = progress
        elif progress.phase != self._phase:
            now = time.monotonic()
            if now - self._last_plain >= self.PLAIN_INTERVAL:
                self._phase = progress.phase
                self._last_plain = now
                print(f"job {self.job_id}: {phase_name(progress)}", file=self.stderr, flush=True)


def _rich_available() -> bool:
    try:
        import rich.progress  # noqa: F401
    except ImportError:
        return False
    return True


class _RichBar:
    """rich's live progress bar: a spinner, the status, the phase, a bar (pulsing while
    the total is unknown), the counts and the elapsed time; gone when the job ends."""

    def __init__(self, status: str, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            SpinnerColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as Bar

        self.console = Console(file=stream, highlight=False)
        self.bar = Bar(
            SpinnerColumn(),
            TextColumn("{task.fields[status]}"),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.task = self.bar.add_task("", total=None, status=status, counts="")

    def start(self) -> None:
        self.bar.start()

    def stop(self) -> None:
        self.bar.stop()

    def print(self, text: str) -> None:
        from rich.text import Text

        self.console.print(Text(text), soft_wrap=True)

    def update_status(self, status: str) -> None:
        self.bar.update(self.task, status=status)

    def update_progress(self, progress: Progress) -> None:
        fraction = progress.fraction
        if fraction is None:
            self.bar.update(self.task, total=None, description=phase_name(progress))
        else:
            self.bar.update(self.task, total=1.0, completed=fraction)
        self.bar.update(
            self.task, description=phase_name(progress), counts=progress_counts(progress)
        )


class Spinner:
    """A ``| RUNNING 12s`` line redrawn on stderr while a job runs, only if stderr is a
    terminal; ``print`` writes a line above it without tearing it. With ``progress``,
    the line also shows the job's latest ``progress`` (``progress_line``)."""

    FRAMES = "|/-\\"
    INTERVAL = 0.1

    def __init__(self, status: str, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.status = status
        self.progress: Progress | None = None
        self.started = time.monotonic()
        self._frame = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Spinner:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()
            with self._lock:
                self._clear()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def print(self, text: str, file: TextIO | None = None) -> None:
        """``text`` on ``file`` (stdout), above the spinner."""
        with self._lock:
            self._clear()
            print(text, file=file or sys.stdout, flush=True)
            self._draw()

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            with self._lock:
                self._frame += 1
                self._draw()

    def _draw(self) -> None:
        if self.enabled:
            frame = self.FRAMES[self._frame % len(self.FRAMES)]
            shown = f" {progress_line(self.progress)}" if self.progress is not None else ""
            line = f"{frame} {self.status}{shown} {self.elapsed:.0f}s"
            # Never wider than the terminal: a wrapped line could not be redrawn in place.
            width = shutil.get_terminal_size().columns - 1
            self.stream.write(f"\r{line[:width]}\033[K")
            self.stream.flush()

    def _clear(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()
