"""What the CLI prints: tables, JSON, key/value blocks, version diffs and the job
spinner."""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TextIO

from darb.models import Package, PackageChange, RequestedSpecChange, VersionDiff


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


class Spinner:
    """A ``| RUNNING 12s`` line redrawn on stderr while a job runs, only if stderr is a
    terminal; ``print`` writes a line above it without tearing it."""

    FRAMES = "|/-\\"
    INTERVAL = 0.1

    def __init__(self, status: str, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.status = status
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

    def print(self, text: str) -> None:
        with self._lock:
            self._clear()
            print(text, flush=True)
            self._draw()

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            with self._lock:
                self._frame += 1
                self._draw()

    def _draw(self) -> None:
        if self.enabled:
            frame = self.FRAMES[self._frame % len(self.FRAMES)]
            self.stream.write(f"\r{frame} {self.status} {self.elapsed:.0f}s\033[K")
            self.stream.flush()

    def _clear(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()
