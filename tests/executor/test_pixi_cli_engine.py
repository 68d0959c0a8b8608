"""The ``cli`` engine: how it builds pixi's arguments and how it handles the process.

There is no pixi binary on these machines, so most tests put a stand-in ``pixi`` script
on PATH (it records its arguments, prints to both streams and misbehaves on request).
That fakes only the external tool; the agent, gRPC and process handling are real. The
last test runs the real pixi and is skipped where pixi is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest

from darb.executor.v1 import executor_pb2 as pb
from services.executor.engines.base import Operation
from services.executor.engines.builtin import BuiltinEngine
from services.executor.engines.pixi_cli import PixiCliEngine
from services.executor.workspace import DataLayout
from testkit.processes import group_members
from tests.executor.helpers import call, create, new_id, stream_lines, workspace_dir
from tests.executor.test_agent_lifecycle import PID_LINE, wait_until

# Like pixi: ``add``/``remove`` edit pixi.toml, "solve" (a pause), write pixi.lock in pixi's
# v6 format (one noarch package per dependency name), then install it; ``install --frozen``
# installs the lock that is there. Installing writes the prefix's conda-meta records one by
# one, STEP seconds apart, and drops those the lock no longer has. acme-fail fails before
# the lock, acme-slow hangs (with a child) before it, acme-breaks fails after one record.
FAKE_PIXI = textwrap.dedent(
    """\
    import hashlib, json, os, re, subprocess, sys, time
    from pathlib import Path

    import yaml

    STEP = 0.4
    CHANNEL = "file:///fake-channel/"

    def names(manifest):
        lines = manifest.read_text().split("[dependencies]")[1].splitlines()
        return [re.match(r"[\\w.-]+", line).group() for line in lines if line.strip()]

    def write_lock(root, dependencies):
        urls = [f"{CHANNEL}noarch/{name}-1.0-h0_0.tar.bz2" for name in sorted(dependencies)]
        digests = {url: hashlib.sha256(url.encode()).hexdigest() for url in urls}
        packages = [
            {
                "conda": url, "subdir": "noarch", "sha256": digest, "md5": digest[:32],
                "license": "BSD-3-Clause", "size": 1000 + int(digest[:4], 16),
                "timestamp": 1700000000000,
            }
            for url, digest in digests.items()
        ]
        listed = {"linux-64": [{"conda": url} for url in urls]}
        default = {"channels": [{"url": CHANNEL}], "packages": listed}
        lock = {"version": 6, "environments": {"default": default}, "packages": packages}
        (root / "pixi.lock").write_text(yaml.safe_dump(lock, sort_keys=False))

    def link(root, fail_after):
        if not (root / "pixi.lock").is_file():
            return
        lock = yaml.safe_load((root / "pixi.lock").read_text())
        entries = lock["environments"]["default"]["packages"].get("linux-64", [])
        files = [entry["conda"].rsplit("/", 1)[1] for entry in entries]
        wanted = {re.sub(r"(\\.tar\\.bz2|\\.conda)$", ".json", name) for name in files}
        meta = root / ".pixi" / "envs" / "default" / "conda-meta"
        meta.mkdir(parents=True, exist_ok=True)
        for record in meta.glob("*.json"):
            if record.name not in wanted:
                record.unlink()
        for linked, record in enumerate(sorted(wanted - set(os.listdir(meta))), 1):
            time.sleep(STEP)
            (meta / record).write_text(json.dumps({"fn": record}))
            if linked == fail_after:
                print("error: linking failed", file=sys.stderr, flush=True)
                sys.exit(5)

    args = sys.argv[1:]
    with open(os.environ["FAKE_PIXI_LOG"], "a") as log:
        log.write(json.dumps(args) + "\\n")
    if args[0] == "init":
        root = Path(args[-1])
        root.mkdir(parents=True)
        (root / "pixi.toml").write_text("[workspace]\\nname = 'x'\\n\\n[dependencies]\\n")
        print("created workspace", flush=True)
        sys.exit(0)
    manifest = Path(args[args.index("--manifest-path") + 1])
    specs = args[args.index("--") + 1:] if "--" in args else []
    if args[0] == "add":
        with manifest.open("a") as out:
            out.write("".join(f'{s} = "*"\\n' for s in specs))
    if args[0] == "install" and "acme-fail" in manifest.read_text():
        print("error: acme-fail is not in pixi.lock", file=sys.stderr, flush=True)
        sys.exit(4)
    for i in range(3):
        print(f"out {i}", flush=True)
        print(f"err {i}", file=sys.stderr, flush=True)
    if "acme-fail" in specs:
        print("error: acme-fail cannot be solved", file=sys.stderr, flush=True)
        sys.exit(3)
    if "acme-slow" in specs:
        subprocess.Popen(["sleep", "60"])
        time.sleep(60)
    if args[0] in ("add", "remove"):
        time.sleep(STEP)
        removed = set(specs) if args[0] == "remove" else set()
        write_lock(manifest.parent, set(names(manifest)) - removed)
    link(manifest.parent, 1 if "acme-breaks" in specs else 0)
    """
)


def install_fake_pixi(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in ``pixi`` in its own bin directory, and the file it records calls in."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "pixi-calls.jsonl"
    bin_dir.mkdir()
    script = bin_dir / "pixi"
    script.write_text(f"#!{sys.executable}\n{FAKE_PIXI}")  # the venv's: it has PyYAML
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    calls.touch()
    return bin_dir, calls


@pytest.fixture
def fake_pixi(tmp_path: Path) -> tuple[Path, Path]:
    return install_fake_pixi(tmp_path)


def recorded(calls: Path) -> list[list[str]]:
    return [json.loads(line) for line in calls.read_text().splitlines()]


def cli_agent(agent_factory, fake_pixi):
    bin_dir, calls = fake_pixi
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return agent_factory(DARB_PIXI_ENGINE="auto", PATH=path, FAKE_PIXI_LOG=str(calls))


def test_commands_put_user_specs_after_a_double_dash(tmp_path):
    layout = DataLayout(tmp_path)
    engine = PixiCliEngine(layout, "/usr/bin/pixi", BuiltinEngine(layout, "linux-64"))
    workspace = layout.workspace(new_id())
    manifest = str(workspace.manifest)
    platforms = ("linux-64", "osx-arm64")
    create_op = Operation(
        "create", workspace, "demo", ("file:///c",), ("acme-core >=1",), platforms=platforms
    )
    assert engine.commands(create_op) == [
        [
            "/usr/bin/pixi",
            "init",
            "--format",
            "pixi",
            "--channel",
            "file:///c",
            "--platform",
            "linux-64",
            "--platform",
            "osx-arm64",
            str(workspace.root),
        ],
        ["/usr/bin/pixi", "add", "--manifest-path", manifest, "--", "acme-core >=1"],
    ]
    remove_op = Operation("remove", workspace, specs=("acme-core",))
    assert engine.commands(remove_op) == [
        ["/usr/bin/pixi", "remove", "--manifest-path", manifest, "--", "acme-core"]
    ]
    restore_op = Operation("restore", workspace)
    assert engine.commands(restore_op) == [
        ["/usr/bin/pixi", "install", "--manifest-path", manifest, "--frozen"]
    ]


def test_auto_picks_pixi_and_streams_both_output_streams(agent_factory, fake_pixi, channel_url):
    agent = cli_agent(agent_factory, fake_pixi)
    info = agent.stub().GetInfo(pb.GetInfoRequest(), metadata=agent.metadata)
    assert info.engine == "cli" and set(info.engines) == {"builtin", "cli"}
    environment_id, outcome = create(agent, "acme-core >=1")
    assert outcome.result.success, outcome.result.error
    root = workspace_dir(agent, environment_id)
    assert recorded(fake_pixi[1]) == [
        ["init", "--format", "pixi", "--channel", channel_url, "--platform", "linux-64", str(root)],
        ["add", "--manifest-path", str(root / "pixi.toml"), "--", "acme-core >=1"],
    ]
    texts = {(line.stream, line.text) for line in outcome.lines}
    assert (pb.LOG_STREAM_STDOUT, "out 2") in texts and (pb.LOG_STREAM_STDERR, "err 2") in texts
    assert 'acme-core >=1 = "*"' in outcome.result.manifest


def test_a_failing_pixi_reports_its_stderr_and_restores_the_manifest(agent_factory, fake_pixi):
    agent = cli_agent(agent_factory, fake_pixi)
    environment_id, _ = create(agent, "acme-core")
    manifest = workspace_dir(agent, environment_id) / "pixi.toml"
    before = manifest.read_text()
    outcome = call(agent, "InstallPackages", environment_id=environment_id, packages=["acme-fail"])
    assert not outcome.result.success
    assert "code 3" in outcome.result.error and "acme-fail cannot be solved" in outcome.result.error
    assert manifest.read_text() == before
    assert recorded(fake_pixi[1])[-1] == ["install", "--manifest-path", str(manifest), "--frozen"]


def test_cancel_kills_pixi_and_its_children_and_restores(agent_factory, fake_pixi):
    agent = cli_agent(agent_factory, fake_pixi)
    environment_id, _ = create(agent, "acme-core")
    manifest = workspace_dir(agent, environment_id) / "pixi.toml"
    before = manifest.read_text()
    request = pb.InstallPackagesRequest(environment_id=environment_id, packages=["acme-slow"])
    stream = agent.stub().InstallPackages(request, metadata=agent.metadata, timeout=60)
    pid = None
    for line in stream_lines(stream):
        if match := PID_LINE.search(line.text):
            pid = int(match.group(1))
        if line.text == "err 2":
            break
    assert pid and wait_until(lambda: len(group_members(pid)) >= 2, 5), "pixi and its sleep"
    started = time.monotonic()
    stream.cancel()
    assert wait_until(lambda: not group_members(pid), 2.0)
    assert time.monotonic() - started < 2.0
    assert wait_until(lambda: manifest.read_text() == before, 10)
    with pytest.raises(grpc.RpcError):
        list(stream)


def test_apply_writes_darbs_manifest_and_the_lock_then_installs_it_frozen(
    agent_factory, fake_pixi, shared_agent
):
    _, source = create(shared_agent, "acme-core")  # the builtin engine makes a real lock
    agent = cli_agent(agent_factory, fake_pixi)

    def apply(environment_id: str, spec: str):
        fields = {"name": "demo", "platforms": ["linux-64"], "lockfile": source.result.lockfile}
        return call(agent, "ApplyLock", environment_id=environment_id, packages=[spec], **fields)

    environment_id = new_id()
    outcome = apply(environment_id, "acme-core")
    assert outcome.result.success, outcome.result.error
    root = workspace_dir(agent, environment_id)
    applied = (source.result.manifest, source.result.lockfile)
    assert ((root / "pixi.toml").read_text(), (root / "pixi.lock").read_text()) == applied
    install = ["install", "--manifest-path", str(root / "pixi.toml"), "--frozen"]
    assert recorded(fake_pixi[1]) == [install]
    assert not (root / ".darb" / "dirty").exists()

    failed = apply(environment_id, "acme-fail")
    assert not failed.result.success and "acme-fail is not in pixi.lock" in failed.result.error
    assert ((root / "pixi.toml").read_text(), (root / "pixi.lock").read_text()) == applied
    assert recorded(fake_pixi[1])[-2:] == [install, install]  # the failed one, the restore

    new = new_id()
    failed_new = apply(new, "acme-fail")
    assert not failed_new.result.success
    assert not workspace_dir(agent, new).exists()


@pytest.mark.skipif(shutil.which("pixi") is None, reason="pixi is not installed on this host")
def test_real_pixi_creates_an_environment(agent_factory):
    agent = agent_factory(DARB_PIXI_ENGINE="cli")
    _, outcome = create(agent, "acme-utils")
    assert outcome.result.success, outcome.result.error
    assert {p.name for p in outcome.result.packages} == {"acme-core", "acme-utils"}


QUICK_PIXI = """#!/bin/bash
exec 0<&-
if [ "$1" = init ]; then
    root="${@: -1}"
    mkdir -p "$root"
    printf '[workspace]\\nname = "x"\\n\\n[dependencies]\\n' > "$root/pixi.toml"
fi
"""


def test_a_command_that_exits_without_reading_its_input_is_no_error(agent_factory, tmp_path):
    """``pixi init`` reads no input and may exit before the agent has written it."""
    bin_dir = tmp_path / "quick-bin"
    bin_dir.mkdir()
    script = bin_dir / "pixi"
    script.write_text(QUICK_PIXI)
    script.chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    agent = agent_factory(DARB_PIXI_ENGINE="cli", PATH=path)
    for _ in range(20):
        _, outcome = create(agent, "acme-core")
        assert outcome.result.success, outcome.result.error
