"""``make bench``: run every benchmark against real processes, print one table, and
write the same table to docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path

import grpc
import rattler

from benchmarks import executor_bench
from shared.version import __version__

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def machine() -> str:
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores, {memory_gib:.0f} GiB, Python {platform.python_version()}, "
        f"darb {__version__}, py-rattler {rattler.__version__}, grpcio {grpc.__version__}"
    )


def table(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| figure | value | target |", "| --- | ---: | --- |"]
    lines += [f"| {figure} | {value} | {target} |" for figure, value, target in rows]
    return "\n".join(lines)


def main() -> None:
    rows = executor_bench.main()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(
        "# Benchmarks\n\n"
        "Reproduce with `make bench` (real agent process on loopback, local conda channel).\n\n"
        f"Last run: {stamp}; {machine()}.\n\n"
        "## Executor agent\n\n"
        f"{table(rows)}\n"
    )
    print(f"\n{machine()}\nwritten to {DOC}")


if __name__ == "__main__":
    main()
