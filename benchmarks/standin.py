"""A stand-in ``pixi`` for the log benchmarks, driven by the agent's ``cli`` engine.

The builtin engine prints a few lines per package, far too few to measure log
throughput, so these benchmarks put this script on the agent's PATH as ``pixi``: ``init``
writes a manifest, ``add`` prints as many lines as its "package specs" ask for. Only the
tool is a stand-in; the agent, the control plane, PostgreSQL and the watchers are real.

Specs are ``name-value`` words: ``lines-N`` prints N lines, ``pace-R`` at R lines per
second (as fast as it can without it), ``gate-T`` first waits for the file
``$BENCH_GATE_DIR/T`` so the watchers are subscribed before the first line, ``raw-HEX``
prints those bytes as one line (for tests of awkward output). Each line is
``bench <i> <unix time when printed> <padding>``, so a watcher can time the whole path.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

LINE_PREFIX = "bench "
GATE_DIR_VARIABLE = "BENCH_GATE_DIR"

SCRIPT = """\
#!{python} -S
import os, sys, time

def write_all(data):
    while data:
        data = data[os.write(1, data):]

def wait_for(path):
    deadline = time.time() + 120
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.002)

args = sys.argv[1:]
if args[0] == "init":
    os.makedirs(args[-1], exist_ok=True)
    with open(os.path.join(args[-1], "pixi.toml"), "w") as manifest:
        manifest.write("[workspace]\\nname = 'bench'\\n\\n[dependencies]\\n")
    sys.exit(0)
options = dict(spec.rsplit("-", 1) for spec in args[args.index("--") + 1:])
if "raw" in options:
    write_all(bytes.fromhex(options["raw"]) + b"\\n")
if "gate" in options:
    wait_for(os.path.join(os.environ["{gate_dir}"], options["gate"]))
total, pace = int(options.get("lines", "0")), float(options.get("pace", "0"))
chunk = max(1, int(pace / 200)) if pace else 1000
padding = "x" * 48
started, done = time.time(), 0
while done < total:
    count = min(chunk, total - done)
    now = time.time()
    lines = [f"{prefix}{{done + k}} {{now:.6f}} {{padding}}\\n" for k in range(count)]
    write_all("".join(lines).encode())
    done += count
    if pace:
        time.sleep(max(0.0, started + done / pace - time.time()))
"""


def install(bin_dir: Path) -> Path:
    """Writes the stand-in as ``bin_dir/pixi`` and returns the directory for PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "pixi"
    text = SCRIPT.format(python=sys.executable, gate_dir=GATE_DIR_VARIABLE, prefix=LINE_PREFIX)
    script.write_text(text)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def parse(text: str) -> tuple[int, float] | None:
    """The index and print time of a stand-in line; None for the agent's own lines."""
    if not text.startswith(LINE_PREFIX):
        return None
    _, index, printed, _ = text.split(" ", 3)
    return int(index), float(printed)
