"""``make demo`` (scripts/demo.py) end to end against the real stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from testkit.control_plane import ADMIN_PASSWORD, ApiProcess
from testkit.processes import PROJECT_ROOT
from tests.sdk.conftest import Channels, cli_env

DEMO = PROJECT_ROOT / "scripts" / "demo.py"


def _demo(tmp_path: Path, address: str, channels: Channels) -> subprocess.CompletedProcess[str]:
    env = cli_env(tmp_path, address)
    env.update(
        DARB_DEMO_CHANNEL_DIR=str(channels.demo_dir),
        DARB_ADMIN_USERNAME="admin",
        DARB_ADMIN_PASSWORD=ADMIN_PASSWORD,
    )
    return subprocess.run(
        [sys.executable, str(DEMO)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )


def test_demo_builds_its_channel_and_runs_the_flow(
    tmp_path: Path, api: ApiProcess, channels: Channels
) -> None:
    first = _demo(tmp_path, api.addr, channels)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"building the demo channel in {channels.demo_dir}" in first.stdout
    for step in ("login", "env create", "pkg add", "pkg ls", "pkg rm", "env delete"):
        assert f"==> darb {step}" in first.stdout
    assert "linking acme-utils" in first.stdout  # the followed job's log
    assert first.stdout.rstrip().endswith(
        "demo passed: login, create, install, list, remove and delete all worked"
    )

    again = _demo(tmp_path, api.addr, channels)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "(already built)" in again.stdout


def test_demo_fails_when_a_step_fails(tmp_path: Path, channels: Channels) -> None:
    result = _demo(tmp_path, "127.0.0.1:1", channels)
    assert result.returncode == 1
    assert "demo FAILED: `darb login --username admin` exited with 1" in result.stderr
    assert "darb: error: cannot reach the darb API at 127.0.0.1:1" in result.stderr
