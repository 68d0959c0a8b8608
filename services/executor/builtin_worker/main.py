"""The worker's entry point: read the request, run it, write the result, exit."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import tomllib
import traceback
from pathlib import Path

from rattler.exceptions import (
    CanonicalMatchSpecError,
    FetchRepoDataError,
    GatewayError,
    InstallerError,
    InvalidMatchSpecError,
    InvalidPackageNameError,
    LinkError,
    ParseCondaLockError,
    TransactionError,
)

from services.executor import builtin_worker
from services.executor.builtin_worker.install import prepare
from services.executor.builtin_worker.operations import HANDLERS
from services.executor.builtin_worker.output import flush_output, flush_periodically, warn
from services.executor.builtin_worker.progress import PROGRESS
from services.executor.builtin_worker.request import Request, WorkerError

# Failures a user can cause or fix: reported by their message alone, without a traceback.
EXPECTED_ERRORS: dict[type[BaseException], str] = {
    GatewayError: "cannot read the channels",
    FetchRepoDataError: "cannot read the channels",
    InstallerError: "cannot install the packages",
    LinkError: "cannot install the packages",
    TransactionError: "cannot install the packages",
    InvalidMatchSpecError: "invalid package spec",
    CanonicalMatchSpecError: "invalid package spec",
    InvalidPackageNameError: "invalid package name",
    ParseCondaLockError: "cannot read pixi.lock",
    tomllib.TOMLDecodeError: "cannot read pixi.toml",
}


def error_message(exc: BaseException) -> str | None:
    """The user-facing message of an expected failure, None for a bug."""
    if isinstance(exc, WorkerError):
        return str(exc)
    for kind, headline in EXPECTED_ERRORS.items():
        if isinstance(exc, kind):
            return f"{headline}: {str(exc).strip()}"
    return None


def run(stdin_text: str) -> str | None:
    """Run the request; return None on success or the error message."""
    try:
        request = Request.from_json(json.loads(stdin_text))
        asyncio.run(HANDLERS[request.op](request))
        return None
    except json.JSONDecodeError as exc:
        return f"invalid request: {exc}"
    except Exception as exc:
        message = error_message(exc)
        if message is None:
            flush_output()  # the traceback goes straight to stderr: keep the order
            traceback.print_exc()
            message = f"internal error: {type(exc).__name__}: {exc}"
        return message


def write_result(path: Path, error: str | None) -> None:
    result = {"success": error is None, "error": error or ""}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=builtin_worker.__doc__.splitlines()[0])
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()
    prepare()
    request = sys.stdin.read()  # a spare worker waits here, started ahead of time
    threading.Thread(target=flush_periodically, daemon=True).start()
    error = run(request)
    PROGRESS.flush()  # the last report, if the throttle held it back
    if error is not None:
        warn(f"error: {error}")
    flush_output()
    write_result(args.result, error)
    # Skip interpreter teardown: after an async rattler call it crashes often enough to
    # matter (SIGSEGV, or SIGABRT in PyGILState_Release; see docs/benchmarks.md), which
    # would turn a finished operation into a crash in the agent's eyes.
    os._exit(0 if error is None else 1)
