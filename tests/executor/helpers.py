"""Calling the agent from tests: run an operation stream and collect what it sent."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from rattler import LockFile, PrefixRecord

from darb.executor.v1 import executor_pb2 as pb
from testkit.agent import AgentProcess

REQUESTS = {
    "CreateEnvironment": pb.CreateEnvironmentRequest,
    "InstallPackages": pb.InstallPackagesRequest,
    "RemovePackages": pb.RemovePackagesRequest,
    "DeleteEnvironment": pb.DeleteEnvironmentRequest,
    "ApplyLock": pb.ApplyLockRequest,
}


@dataclass
class Outcome:
    lines: list[pb.LogLine]
    result: pb.OperationResult
    progress: list[pb.Progress] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)

    def versions(self) -> dict[str, str]:
        return {package.name: package.version for package in self.result.packages}


def stream_lines(stream: Iterable[Any]) -> Iterator[pb.LogLine]:
    """The log lines of an operation stream, one by one, out of their batches."""
    for message in stream:
        yield from message.log_lines.lines


def new_id() -> str:
    return str(uuid.uuid4())


def call(agent: AgentProcess, method: str, timeout: float = 120, **fields: object) -> Outcome:
    """Run one streaming operation to its end; checks the stream's shape on the way."""
    stream = getattr(agent.stub(), method)(
        REQUESTS[method](**fields), metadata=agent.metadata, timeout=timeout
    )
    lines: list[pb.LogLine] = []
    results: list[pb.OperationResult] = []
    progress: list[pb.Progress] = []
    for message in stream:
        kind = message.WhichOneof("event")
        assert not results, f"a message ({kind}) came after the result"
        if kind == "log_lines":
            assert message.log_lines.lines, "a batch of lines is never empty"
            lines.extend(message.log_lines.lines)
        elif kind == "progress":
            progress.append(message.progress)
        else:
            results.append(message.result)
    assert len(results) == 1, "every stream ends with exactly one result"
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
    return Outcome(lines, results[0], progress)


def call_when_idle(agent: AgentProcess, method: str, wait: float = 30, **fields: object) -> Outcome:
    """``call``, retried while the agent answers ABORTED (it is still repairing the
    environment after a cancelled operation)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return call(agent, method, **fields)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.ABORTED or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def create(
    agent: AgentProcess, *packages: str, environment_id: str | None = None
) -> tuple[str, Outcome]:
    environment_id = environment_id or new_id()
    outcome = call(
        agent,
        "CreateEnvironment",
        environment_id=environment_id,
        name="demo",
        packages=list(packages),
    )
    return environment_id, outcome


def status_of(error: grpc.RpcError) -> grpc.StatusCode:
    return error.code()  # type: ignore[no-any-return]


def workspace_dir(agent: AgentProcess, environment_id: str) -> Path:
    return agent.data_dir / "environments" / environment_id


def prefix_versions(prefix: Path) -> dict[str, str]:
    """What is really installed in a prefix, from its conda-meta records."""
    records = [PrefixRecord.from_path(p) for p in (prefix / "conda-meta").glob("*.json")]
    return {record.name.normalized: str(record.version) for record in records}


Build = tuple[str, str, str, str]  # name, version, build, subdir


def installed_builds(prefix: Path) -> set[Build]:
    """What is really installed in a prefix, build for build, from conda-meta."""
    records = [PrefixRecord.from_path(p) for p in (prefix / "conda-meta").glob("*.json")]
    return {(r.name.normalized, str(r.version), str(r.build), r.subdir) for r in records}


def locked_builds(lockfile: Path) -> dict[str, set[Build]]:
    """Platform -> the builds a pixi.lock holds for it in its default environment."""
    lock = LockFile.from_path(lockfile)
    environment = lock.environment("default")
    assert environment is not None
    return {
        platform.name: {
            (r.name.normalized, str(r.version), str(r.build), r.subdir)
            for r in environment.conda_repodata_records_for_platform(platform) or []
        }
        for platform in lock.platforms()
    }


def manifest_dependencies(text: str) -> dict[str, object]:
    import tomllib

    return dict(tomllib.loads(text).get("dependencies", {}))


def dump(outcome: Outcome) -> str:
    return json.dumps({"error": outcome.result.error, "log": outcome.text[-2000:]})
