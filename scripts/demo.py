"""``make demo``: the manual flow with the ``darb`` CLI against the running service.

conda-forge may be out of reach, so the demo first builds a small local channel (the
test suite's acme-* packages) in ``$DARB_DEMO_CHANNEL_DIR`` (default
``$DARB_DATA_DIR/demo-channel``, the directory ``make run`` allows). Then it logs in,
creates an environment and follows its job, installs, lists and removes a package, and
deletes the environment, printing each command and its output. The first failing step
ends the demo with a non-zero exit code.

The address is ``$DARB_API_ADDR`` (default 127.0.0.1:50051) and the account
``$DARB_ADMIN_USERNAME`` / ``$DARB_ADMIN_PASSWORD`` (default admin / password123, the
development defaults of ``make run``).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEV_PASSWORD = "password123"


class StepFailed(Exception):
    pass


def channel_dir() -> Path:
    data_dir = Path(os.environ.get("DARB_DATA_DIR", ROOT / "data"))
    return Path(os.environ.get("DARB_DEMO_CHANNEL_DIR", data_dir / "demo-channel")).resolve()


def build_demo_channel(directory: Path) -> str:
    """The channel's URL, building it first unless an earlier run did."""
    if (directory / "noarch" / "repodata.json").is_file():
        print(f"==> demo channel: {directory} (already built)", flush=True)
        return directory.as_uri()
    print(f"==> building the demo channel in {directory}", flush=True)
    # testkit is installed with the project (make venv); imported here, when it is needed.
    from testkit.channel import build_channel, standard_packages

    return build_channel(directory, standard_packages())


def darb(*args: str, stdin: str | None = None, expect: str = "") -> str:
    """Runs one CLI command with its output shown live; fails the step on a non-zero
    exit or when ``expect`` is missing from its standard output."""
    print(f"\n==> darb {' '.join(args)}", flush=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "darb", *args],
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    if stdin is not None:
        assert process.stdin is not None
        process.stdin.write(stdin)
        process.stdin.close()
    assert process.stdout is not None
    lines = []
    for line in process.stdout:  # echoed as it comes: a followed job's log streams live
        print(line, end="", flush=True)
        lines.append(line)
    stdout = "".join(lines)
    if process.wait() != 0:
        raise StepFailed(f"`darb {' '.join(args)}` exited with {process.returncode}")
    if expect not in stdout:
        raise StepFailed(f"`darb {' '.join(args)}` did not print {expect!r}")
    return stdout


def run_flow(channel_url: str) -> None:
    username = os.environ.get("DARB_ADMIN_USERNAME") or "admin"
    password = os.environ.get("DARB_ADMIN_PASSWORD") or DEV_PASSWORD
    name = f"demo-{secrets.token_hex(3)}"
    darb("login", "--username", username, stdin=f"{password}\n", expect="Logged in")
    darb("whoami", expect=username)
    darb("env", "create", name, "-p", "acme-core", "-c", channel_url, expect=name)
    darb("pkg", "add", name, "acme-utils")
    darb("pkg", "ls", name, expect="acme-utils")
    darb("pkg", "rm", name, "acme-utils")
    listed = darb("pkg", "ls", name, expect="acme-core")
    if "acme-utils" in listed:
        raise StepFailed("acme-utils is still installed after `darb pkg rm`")
    darb("env", "delete", name)
    if name in darb("env", "list"):
        raise StepFailed(f"{name} is still listed after `darb env delete`")


def main() -> int:
    try:
        run_flow(build_demo_channel(channel_dir()))
    except StepFailed as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        return 1
    print("\ndemo passed: login, create, install, list, remove and delete all worked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
