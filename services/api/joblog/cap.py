"""How much of a job's output is kept: long lines are cut, long logs keep head and tail.

A job that prints without end must not fill the database, nor make ``GetJob.logs`` too big
for one message. The cap sits in front of the numbering, so what is stored is exactly
what watchers see and seqs stay contiguous from 1 with no holes to explain:

- the first ``head`` lines are numbered and stored as they arrive;
- the next line adds a notice that output is held back, and from then on lines go into a
  ring of the last ``tail`` lines, which ``finish`` stores when the job ends, after a
  marker saying how many lines were dropped in between.

So live watchers see the beginning at once and the end when the job ends, and a job
never stores more than ``DARB_MAX_LOG_LINES_PER_JOB`` lines of at most
``DARB_MAX_LOG_LINE_BYTES`` bytes each.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from datetime import datetime

from services.api.records import LineRow
from shared.config import ApiLimits

MARKER_STREAM = "stderr"
# The notice and the omitted-lines marker each take one of the job's lines.
MARKER_LINES = 2


def cut_line(text: str, max_bytes: int) -> str:
    """The line itself if it fits in ``max_bytes`` of UTF-8, else its start and a marker,
    together at most ``max_bytes``."""
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return text
    marker = f" ... [line cut: {len(data)} bytes, DARB_MAX_LOG_LINE_BYTES={max_bytes}]"
    keep = max(max_bytes - len(marker.encode()), 0)
    return data[:keep].decode("utf-8", "ignore") + marker


class LogCap:
    """Numbers one job's lines and decides which are stored (see the module docstring)."""

    def __init__(self, limits: ApiLimits) -> None:
        self._max_lines = limits.max_log_lines_per_job
        self._max_line_bytes = limits.max_log_line_bytes
        # A str of at most this many characters fits in max_line_bytes whatever it holds
        # (a character takes at most 4 bytes of UTF-8), so it need not be encoded to check.
        self._safe_chars = limits.max_log_line_bytes // 4
        room = self._max_lines - MARKER_LINES
        self._head = room // 2
        self._tail: deque[tuple[str, datetime, str]] = deque(maxlen=room - self._head)
        self._next_seq = 1
        self.cut_lines = 0  # how many lines were cut to max_line_bytes
        self._holding = False
        self._omitted = 0

    def extend(self, lines: Iterable[tuple[str, datetime, str]]) -> list[LineRow]:
        """``add`` for many (stream, time, text) lines, with the common case (within the
        head, a short line) inlined: this runs once per line of every job."""
        rows: list[LineRow] = []
        seq, head, safe = self._next_seq, self._head, self._safe_chars
        for stream, time, text in lines:
            if seq > head:
                self._next_seq = seq
                rows += self.add(stream, time, text)
                seq = self._next_seq
                continue
            if len(text) > safe:
                text = self._cut(text)
            rows.append(LineRow(seq, stream, time, text))
            seq += 1
        self._next_seq = seq
        return rows

    def add(self, stream: str, time: datetime, text: str) -> list[LineRow]:
        """The rows to store now for one line of output (none while the tail is held)."""
        if len(text) > self._safe_chars:
            text = self._cut(text)
        if self._next_seq <= self._head:
            return [self._row(stream, time, text)]
        rows = []
        if not self._holding:
            self._holding = True
            rows.append(self._row(MARKER_STREAM, time, self._notice()))
        if len(self._tail) == self._tail.maxlen:
            self._omitted += 1
        self._tail.append((stream, time, text))
        return rows

    def _cut(self, text: str) -> str:
        cut = cut_line(text, self._max_line_bytes)
        self.cut_lines += cut is not text
        return cut

    def finish(self) -> list[LineRow]:
        """The rows still held when the job ends: the omitted-lines marker and the tail."""
        rows = []
        if self._omitted:
            marker = (
                f"... {self._omitted} lines omitted "
                f"(DARB_MAX_LOG_LINES_PER_JOB={self._max_lines}) ..."
            )
            rows.append(self._row(MARKER_STREAM, self._tail[0][1], marker))
        rows += [self._row(*held) for held in self._tail]
        self._tail.clear()
        self._omitted = 0
        return rows

    def _notice(self) -> str:
        return (
            f"... more than {self._head} lines of output: the last {self._tail.maxlen} "
            f"are shown when the job ends (DARB_MAX_LOG_LINES_PER_JOB={self._max_lines}) ..."
        )

    def _row(self, stream: str, time: datetime, text: str) -> LineRow:
        row = LineRow(self._next_seq, stream, time, text)
        self._next_seq += 1
        return row
