"""``make bench``: run every benchmark against real processes, print one table, and
write the same table to docs/benchmarks.md.

``python -m benchmarks --quick`` runs the control-plane figures with small counts, and
``--only <stack>`` one stack of them; neither writes the document: they check the
harness, they do not measure.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import psycopg
import rattler
import sqlalchemy

from benchmarks import api_bench, embedded_start, executor_bench, sweep_bench
from benchmarks.stack import WORKER_CONCURRENCY
from benchmarks.stats import Row, target_met
from shared.version import __version__
from testkit.postgres import admin_conninfo

STACKS = ("api", "builtin", "logs", "two-agents", "web", "embedded")
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
# Measurements behind design choices and earlier runs, kept by hand; appended to DOC.
DESIGN_NOTES = Path(__file__).resolve().parent / "design_notes.md"
HISTORY = Path(__file__).resolve().parent / "history.md"


def postgres_version() -> str:
    with psycopg.connect(admin_conninfo()) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]).split()[0] if row else "?"


def machine() -> str:
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores, {memory_gib:.0f} GiB; Python {platform.python_version()},"
        f" darb {__version__}, PostgreSQL {postgres_version()}, py-rattler"
        f" {rattler.__version__}, grpcio {grpc.__version__}, SQLAlchemy {sqlalchemy.__version__},"
        f" psycopg {psycopg.__version__}"
    )


def table(rows: list[Row]) -> str:
    lines = ["| figure | value | target | met |", "| --- | ---: | --- | --- |"]
    lines += [f"| {r.figure} | {r.value} | {r.target} | {r.verdict} |" for r in rows]
    return "\n".join(lines)


def executor_rows() -> list[Row]:
    """The agent-only rows of executor_bench, judged where their target is a plain bound."""
    return [
        Row(f"agent only: {figure}", value, target, target_met(value, target))
        for figure, value, target in [*executor_bench.main(), *sweep_bench.main()]
    ]


def document(rows: list[Row], notes: list[str], minutes: float) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "# Benchmarks\n\n"
        "Reproduce with `make bench`: PostgreSQL (the embedded server, on a Unix socket, unless\n"
        "DARB_TEST_POSTGRES names another), executor agents and the control plane run as\n"
        "separate processes on loopback, with local conda channels (testkit/channel.py).\n"
        "Lines for the log figures come from a stand-in `pixi` (benchmarks/standin.py) run by\n"
        "the agent's real `cli` engine. Other work on the machine makes the figures noisy.\n\n"
        f"Last run: {stamp}, {minutes:.1f} minutes; {machine()};"
        f" DARB_WORKER_CONCURRENCY={WORKER_CONCURRENCY}.\n\n"
        f"{table(rows)}\n\n"
        "## Notes from this run\n\n" + "".join(f"- {note}\n" for note in notes) + "\n"
        "## How each figure is measured\n\n"
        "- **agent only** rows: benchmarks/executor_bench.py, a create sent straight to one\n"
        f"  agent vs py-rattler alone, {executor_bench.ROUNDS} rounds that alternate the two"
        " (medians; the added time is the median of the paired differences); the sweep row:\n"
        f"  benchmarks/sweep_bench.py, one SweepPackageCache call to a real agent over"
        f" {sweep_bench.PACKAGES:,} cached packages (median of {sweep_bench.ROUNDS}).\n"
        + api_bench.METHOD
        + "- **make run** rows: benchmarks/embedded_start.py, "
        + embedded_start.METHOD.format(rounds=embedded_start.ROUNDS)
        + "\n\n"
        + DESIGN_NOTES.read_text()
        + "\n"
        + HISTORY.read_text()
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="small counts; writes no document")
    parser.add_argument(
        "--only", action="append", choices=STACKS, help="run only this stack; writes no document"
    )
    parser.add_argument(
        "--keep", type=Path, help="work in this directory and keep it (the services' logs)"
    )
    arguments = parser.parse_args()
    partial = arguments.quick or bool(arguments.only)
    started = time.monotonic()
    rows = [] if partial else executor_rows()
    sizes = api_bench.QUICK if arguments.quick else api_bench.Sizes()
    with tempfile.TemporaryDirectory(prefix="darb-bench-") as scratch:
        where = arguments.keep or Path(scratch)
        report = api_bench.main(where, sizes, set(arguments.only or ()))
        rows += report.rows
        if not arguments.only or "embedded" in arguments.only:
            rows += embedded_start.main(where)
    minutes = (time.monotonic() - started) / 60
    print(f"\n{table(rows)}\n")
    print("".join(f"- {note}\n" for note in report.notes))
    print(machine())
    if not partial:
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(document(rows, report.notes, minutes))
        print(f"written to {DOC}")


if __name__ == "__main__":
    main()
