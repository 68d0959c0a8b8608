"""``python -m benchmarks.profile``: where the control plane spends its CPU under the
GetEnvironment and CreateEnvironment loads of ``make bench``.

Needs py-spy (``.venv/bin/pip install py-spy``; deliberately not a project dependency).
py-spy samples the control plane's process from outside while the same 16-client load
runs; its raw stacks are written next to a summary of the most expensive frames, by
self time (the line on top of the stack) and by total time (anywhere on the stack).
Profiling slows the process down, so its rates are not the benchmark's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks import api_bench
from benchmarks.stack import AioClient, Stack, running_stack, unused_address
from testkit.channel import many_packages_channel

# py-spy installs next to the interpreter, which is not on PATH under `.venv/bin/python`.
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
OUR_CODE = ("services/", "shared/")


def package_of(frame: str) -> str:
    """``sqlalchemy`` for ``f (sqlalchemy/orm/session.py:12)``, ``libc.so.6`` for native."""
    where = frame.rpartition(" (")[2].rstrip(")")
    return where.split("/", 1)[0].split(":", 1)[0] or "?"


def top_frames(raw: Path, count: int) -> tuple[int, dict[str, list[tuple[str, int]]]]:
    """Samples, and the ``count`` heaviest entries by self time per package, by self time
    per frame, and by total time per darb frame.

    py-spy's raw format is one collapsed stack per line: ``frame;frame;… samples``.
    """
    packages: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        frames = stack.split(";")
        weight = int(number)
        samples += weight
        packages[package_of(frames[-1])] += weight
        own[frames[-1]] += weight
        for frame in set(frames):
            if any(part in frame for part in OUR_CODE):
                total[frame] += weight
    tops = {
        "self, by package or library": packages.most_common(count),
        "self, by line": own.most_common(count),
        "total, darb's own lines (services/, shared/)": total.most_common(count),
    }
    return samples, tops


def summary(name: str, raw: Path, count: int = 20) -> str:
    samples, tops = top_frames(raw, count)
    lines = [f"== {name}: {samples} samples holding the GIL (py-spy --native, 100 Hz)"]
    for title, entries in tops.items():
        lines.append(f"-- {title}")
        lines += [f"{100 * n / samples:5.1f}%  {frame}" for frame, n in entries]
    return "\n".join(lines)


async def profiled(stack: Stack, load: str, seconds: float, out: Path) -> Path:
    """Runs one load for ``seconds`` with py-spy recording the control plane."""
    accounts = stack.new_users(api_bench.CLIENTS)
    clients = [AioClient(stack.api.addr, token) for _, token in accounts]
    raw = out / f"{load}.txt"
    command = [PY_SPY, "record", "--pid", str(stack.api_pid), "--format", "raw"]
    command += ["--duration", str(round(seconds)), "--output", str(raw), "--gil", "--native"]
    if load == "GetEnvironment":
        jobs = [await api_bench.create_environment(c, "profiled", ["pkg-000"]) for c in clients]
        ids = [job.environment_id for job in jobs]
        spy = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=(out / f"{load}-py-spy.log").open("w")
        )
        await api_bench.get_environment_load(stack, clients, ids, seconds)
    else:
        spy = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=(out / f"{load}-py-spy.log").open("w")
        )
        per_client = math.ceil((seconds + 1) * 1000 / api_bench.CREATES_PER_USER / len(clients))
        tokens = stack.insert_users(per_client * len(clients))
        creators = api_bench.Accounts(tokens, len(clients))
        await api_bench.create_load(stack, clients, creators, seconds)
    await asyncio.to_thread(spy.wait)
    for client in clients:
        await client.close()
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "darb-profile")
    parser.add_argument("--seconds", type=float, default=10)
    arguments = parser.parse_args()
    if not Path(PY_SPY).is_file():
        sys.exit("py-spy is not on PATH: .venv/bin/pip install py-spy")
    arguments.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="darb-profile-") as scratch:
        channel, _ = many_packages_channel(Path(scratch) / "channel", 1)
        with running_stack(Path(scratch), channel, agents=0, executors=unused_address()) as stack:
            for load in ("GetEnvironment", "CreateEnvironment"):
                raw = asyncio.run(profiled(stack, load, arguments.seconds, arguments.out))
                text = summary(load, raw)
                (arguments.out / f"{load}-top.txt").write_text(text + "\n")
                print(text, flush=True)
    print(f"raw stacks and summaries in {arguments.out}")


if __name__ == "__main__":
    main()
