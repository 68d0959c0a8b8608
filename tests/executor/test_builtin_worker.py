"""The builtin engine, run as a child process exactly as the agent runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import rattler

from services.executor.builtin_worker.install import link_config
from services.executor.workspace import Workspace
from testkit.channel import PREFIX_PLACEHOLDER
from testkit.kit import PIXI_SCHEMA as SCHEMA

REPO = Path(__file__).resolve().parents[2]
# Re-creates a prefix from pixi.lock alone. In a subprocess ending in os._exit: after an
# async rattler call the interpreter sometimes crashes at exit.
REINSTALL_SCRIPT = """
import asyncio, os, sys, rattler
lock = rattler.LockFile.from_path(sys.argv[1])
records = lock.environment("default").conda_repodata_records_for_platform(lock.platforms()[0])
asyncio.run(rattler.install(records, target_prefix=sys.argv[2], cache_dir=sys.argv[3],
                            show_progress=False))
os._exit(0)
"""


@pytest.fixture
def channel(channel_url: str) -> str:
    return channel_url


@dataclass
class Outcome:
    returncode: int
    result: dict[str, Any] | None
    stdout: str
    stderr: str


@dataclass
class Data:
    """A data directory as the agent lays it out, and a way to run the worker on it."""

    root: Path
    channel: str

    def workspace(self, environment_id: str) -> Workspace:
        return Workspace.of(self.root, environment_id)

    def request(self, op: str, environment_id: str, **fields: Any) -> dict[str, Any]:
        fields.setdefault("channels", [self.channel])
        return {
            "op": op,
            "workspace": str(self.workspace(environment_id).root),
            "cache_dir": str(self.root / "pkgs"),
            "repodata_cache_dir": str(self.root / "repodata"),
            "trash_dir": str(self.root / "trash"),
            "platform": "linux-64",
            **fields,
        }

    def start(self, op: str, environment_id: str, **fields: Any) -> subprocess.Popen[str]:
        """Start the worker in its own process group, as the agent does."""
        Path(self.result).unlink(missing_ok=True)
        proc = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            start_new_session=True,
        )
        assert proc.stdin is not None
        with proc.stdin:
            proc.stdin.write(json.dumps(self.request(op, environment_id, **fields)))
        return proc

    def run(self, op: str, environment_id: str, **fields: Any) -> Outcome:
        result_path = Path(self.result)
        result_path.unlink(missing_ok=True)
        request = json.dumps(self.request(op, environment_id, **fields))
        done = subprocess.run(
            self.command, input=request, capture_output=True, text=True, cwd=REPO, timeout=120
        )
        result = json.loads(result_path.read_text()) if result_path.exists() else None
        return Outcome(done.returncode, result, done.stdout, done.stderr)

    def ok(self, op: str, environment_id: str, **fields: Any) -> Outcome:
        outcome = self.run(op, environment_id, **fields)
        assert outcome.result == {"success": True, "error": ""}, outcome.stderr
        assert outcome.returncode == 0
        assert outcome.stderr == ""
        return outcome

    def create(self, *specs: str, name: str = "demo") -> str:
        environment_id = str(uuid.uuid4())
        self.ok("create", environment_id, name=name, specs=list(specs))
        return environment_id

    @property
    def result(self) -> str:
        return str(self.root / "result.json")

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "services.executor.builtin_worker", "--result", self.result]


@pytest.fixture
def data(tmp_path: Path, channel: str) -> Data:
    (tmp_path / "data").mkdir()
    return Data(tmp_path / "data", channel)


def installed(prefix: Path) -> dict[str, str]:
    """Package name -> "version build" from the prefix's conda-meta records."""
    records = [json.loads(p.read_text()) for p in (prefix / "conda-meta").glob("*.json")]
    return {r["name"]: f"{r['version']} {r['build']}" for r in records}


def locked(ws: Workspace) -> dict[str, str]:
    lock = rattler.LockFile.from_path(ws.lockfile)
    env = lock.environment("default")
    assert env is not None
    records = env.conda_repodata_records_for_platform(lock.platforms()[0]) or []
    return {r.name.normalized: f"{r.version} {r.build}" for r in records}


def dependencies(ws: Workspace) -> dict[str, Any]:
    return tomllib.loads(ws.manifest.read_text())["dependencies"]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime, to prove nothing changed."""
    return {
        str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in root.rglob("*")
    }


def test_create_installs_and_writes_manifest_and_lock_last(data: Data) -> None:
    environment_id = str(uuid.uuid4())
    outcome = data.ok("create", environment_id, name="demo", specs=["acme-extras", "acme-tool"])
    ws = data.workspace(environment_id)
    expected = {n: "1.0 h0_0" for n in ("acme-extras", "acme-tool", "acme-utils")}
    expected["acme-core"] = "1.1 h0_0"
    assert installed(ws.prefix) == expected == locked(ws)
    assert dependencies(ws) == {"acme-extras": "*", "acme-tool": "*"}
    assert not ws.needs_recovery()
    lines = outcome.stdout.splitlines()
    assert "  install   acme-core 1.1 h0_0" in lines
    assert "linking acme-utils 1.0 h0_0" in lines
    assert lines[-2:] == ["wrote pixi.lock", "wrote pixi.toml"]


def test_manifest_validates_against_the_pixi_schema(data: Data) -> None:
    specs = ["acme-core >=1.0,<2", "acme-tool 1.0 h0_0", f"{data.channel}::acme-utils"]
    ws = data.workspace(data.create(*specs, name="0.a_b-c"))
    manifest = tomllib.loads(ws.manifest.read_text())
    jsonschema.validate(manifest, json.loads(SCHEMA.read_text()))
    assert manifest["workspace"] == {
        "name": "0.a_b-c",
        "channels": [data.channel],
        "platforms": ["linux-64"],
    }
    assert manifest["dependencies"] == {
        "acme-core": ">=1.0,<2",
        "acme-tool": {"version": "==1.0", "build": "h0_0"},
        "acme-utils": {"channel": f"{data.channel}/"},
    }


def test_install_upgrades_and_downgrades_keeping_other_packages(data: Data) -> None:
    environment_id = data.create("acme-core 1.0", "acme-tool")
    ws = data.workspace(environment_id)
    tool_meta = (ws.prefix / "conda-meta" / "acme-tool-1.0-h0_0.json").stat().st_mtime_ns

    up = data.ok("install", environment_id, specs=["acme-core >=2"])
    assert "  upgrade   acme-core 1.0 h0_0 -> 2.0 h0_0" in up.stdout.splitlines()
    assert installed(ws.prefix)["acme-core"] == "2.0 h0_0" == locked(ws)["acme-core"]

    down = data.ok("install", environment_id, specs=["acme-core 1.1"])
    assert "  downgrade acme-core 2.0 h0_0 -> 1.1 h0_0" in down.stdout.splitlines()
    assert installed(ws.prefix) == locked(ws) == {"acme-core": "1.1 h0_0", "acme-tool": "1.0 h0_0"}
    assert dependencies(ws) == {"acme-core": "==1.1", "acme-tool": "*"}
    assert (ws.prefix / "share/acme-core/VERSION").read_text() == "1.1\n"
    assert (ws.prefix / "conda-meta" / "acme-tool-1.0-h0_0.json").stat().st_mtime_ns == tool_meta
    assert not ws.needs_recovery()


def test_remove_drops_the_package_and_its_dependencies(data: Data) -> None:
    environment_id = data.create("acme-extras", "acme-tool")
    ws = data.workspace(environment_id)
    outcome = data.ok("remove", environment_id, specs=["acme-extras"])
    assert installed(ws.prefix) == locked(ws) == {"acme-tool": "1.0 h0_0"}
    assert dependencies(ws) == {"acme-tool": "*"}
    assert "  remove    acme-utils 1.0 h0_0" in outcome.stdout.splitlines()
    assert "unlinking acme-extras 1.0 h0_0" in outcome.stdout.splitlines()
    assert not (ws.prefix / "share/acme-utils").exists()


def test_unsolvable_install_fails_with_solver_explanation_and_changes_nothing(data: Data) -> None:
    environment_id = data.create("acme-core")
    ws = data.workspace(environment_id)
    before = snapshot(ws.root)
    outcome = data.run("install", environment_id, specs=["acme-broken"])
    assert outcome.returncode == 1
    assert outcome.result is not None and outcome.result["success"] is False
    error = outcome.result["error"]
    assert error.startswith("cannot solve for linux-64: ")
    assert "acme-broken 1.0 would require" in error and "does-not-exist" in error
    assert "Traceback" not in outcome.stderr
    assert outcome.stderr == f"error: {error}\n"
    assert snapshot(ws.root) == before


def test_missing_channel_fails_cleanly_before_creating_anything(data: Data) -> None:
    environment_id = str(uuid.uuid4())
    missing = (data.root / "no-such-channel").as_uri()
    outcome = data.run("create", environment_id, name="x", channels=[missing], specs=["a"])
    assert outcome.returncode == 1
    assert outcome.result is not None
    assert outcome.result["error"].startswith("cannot read the channels: ")
    assert "Traceback" not in outcome.stderr
    assert not data.workspace(environment_id).root.exists()


def test_bad_request_is_reported_without_traceback(data: Data) -> None:
    outcome = data.run("explode", str(uuid.uuid4()))
    assert outcome.returncode == 1
    assert outcome.result == {"success": False, "error": "invalid request: unknown op 'explode'"}
    assert "Traceback" not in outcome.stderr


def wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_restore_after_kill_rebuilds_the_prefix_from_the_lock(data: Data) -> None:
    environment_id = data.create("acme-core 1.0", "acme-tool")
    ws = data.workspace(environment_id)
    lock_before = ws.lockfile.read_bytes()
    proc = data.start("install", environment_id, specs=["acme-big", "acme-core >=2"])
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("fetching acme-big"):
            break
    else:
        pytest.fail(f"no fetch of acme-big in {lines}: {proc.stderr and proc.stderr.read()}")
    # acme-core is swapped while acme-big is still being extracted (~3 s): kill in between.
    wait_for(lambda: (ws.prefix / "conda-meta" / "acme-core-2.0-h0_0.json").exists())
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    assert proc.stderr is not None
    proc.stderr.close()
    assert not Path(data.result).exists()
    assert ws.needs_recovery()
    assert installed(ws.prefix)["acme-core"] == "2.0 h0_0"

    outcome = data.ok("restore", environment_id)
    assert "rebuilding the prefix from pixi.lock (2 packages)" in outcome.stdout
    assert ws.lockfile.read_bytes() == lock_before
    assert installed(ws.prefix) == locked(ws) == {"acme-core": "1.0 h0_0", "acme-tool": "1.0 h0_0"}
    assert not (ws.prefix / "share/acme-big").exists()
    assert not ws.needs_recovery()


@pytest.mark.parametrize("committed", [True, False])
def test_restore_rolls_forward_only_a_committed_transaction(data: Data, committed: bool) -> None:
    environment_id = data.create("acme-core 1.0")
    ws = data.workspace(environment_id)
    old = {p: p.read_bytes() for p in (ws.manifest, ws.lockfile)}
    data.ok("install", environment_id, specs=["acme-core >=2"])
    # Rebuild the state of a crash between writing COMMIT and the renames.
    ws.txn_dir.mkdir(parents=True)
    for path, content in old.items():
        path.replace(ws.txn_dir / path.name)
        path.write_bytes(content)
    ws.dirty_marker.touch()
    if committed:
        ws.commit_marker.touch()

    outcome = data.ok("restore", environment_id)
    want = "2.0 h0_0" if committed else "1.0 h0_0"
    assert installed(ws.prefix) == locked(ws) == {"acme-core": want}
    assert dependencies(ws)["acme-core"] == (">=2" if committed else "==1.0")
    assert ("rolling forward" in outcome.stdout) is committed
    assert not ws.needs_recovery()


def test_lock_alone_recreates_the_prefix(data: Data, tmp_path: Path) -> None:
    ws = data.workspace(data.create("acme-extras", "acme-tool"))
    prefix = tmp_path / "fresh"
    script = [sys.executable, "-c", REINSTALL_SCRIPT, str(ws.lockfile), str(prefix)]
    subprocess.run([*script, str(tmp_path / "fresh-pkgs")], check=True, timeout=60)
    assert installed(prefix) == installed(ws.prefix) == locked(ws)
    assert (prefix / "share/acme-core/VERSION").read_text() == "1.1\n"


def test_prefix_placeholder_is_replaced_by_the_real_prefix(data: Data) -> None:
    ws = data.workspace(data.create("acme-tool"))
    tool = ws.prefix / "bin" / "acme-tool"
    assert PREFIX_PLACEHOLDER not in tool.read_text()
    assert f"# installed in {ws.prefix}\n" in tool.read_text()
    assert os.access(tool, os.X_OK)
    output = subprocess.run([tool], capture_output=True, text=True, check=True).stdout
    assert output == f"{ws.prefix}\n"


def test_second_environment_hard_links_from_the_package_cache(data: Data) -> None:
    first = data.workspace(data.create("acme-core"))
    second = data.workspace(data.create("acme-core"))
    cache = data.root / "pkgs" / "acme-core-2.0-h0_0"
    files = [root / "share/acme-core/VERSION" for root in (first.prefix, second.prefix, cache)]
    assert len({f.stat().st_ino for f in files}) == 1
    assert files[0].stat().st_nlink == 3


def test_delete_renames_into_trash_then_removes(data: Data) -> None:
    environment_id = data.create("acme-core")
    outcome = data.ok("delete", environment_id)
    assert "removing acme-core 2.0 h0_0" in outcome.stdout.splitlines()
    assert not data.workspace(environment_id).root.exists()
    assert list((data.root / "trash").iterdir()) == []


def test_a_warm_create_installs_what_a_cold_one_did(data: Data) -> None:
    """The second create finds every package in the cache and only links: same packages,
    same files, regular files shared with the cache, prefix-patched ones its own."""
    specs = ("acme-extras", "acme-tool")
    cold, warm = (data.workspace(data.create(*specs)) for _ in range(2))
    assert locked(warm) == locked(cold) == installed(warm.prefix) == installed(cold.prefix)
    files = [
        {str(p.relative_to(ws.prefix)) for p in ws.prefix.rglob("*") if p.is_file()}
        for ws in (cold, warm)
    ]
    assert files[0] == files[1]
    version = "share/acme-core/VERSION"
    assert (warm.prefix / version).stat().st_ino == (cold.prefix / version).stat().st_ino
    tool = (warm.prefix / "bin" / "acme-tool").read_text()
    assert f"# installed in {warm.prefix}\n" in tool
    assert sorted(p.name for p in warm.root.iterdir()) == [".pixi", "pixi.lock", "pixi.toml"]


def test_the_log_tells_a_fetch_from_a_use_of_the_cache(data: Data) -> None:
    """rattler reports both alike; the worker looks at its cache first. A cache entry for
    another archive (its sha256 differs) is fetched again, and logged so."""

    def fetch_lines() -> list[str]:
        """The lines of a new create that say where its one package came from."""
        outcome = data.ok("create", str(uuid.uuid4()), name="c", specs=["acme-core"])
        lines = outcome.stdout.splitlines()
        return [line for line in lines if line.startswith(("fetching ", "using cached "))]

    assert fetch_lines() == ["fetching acme-core 2.0 h0_0"]
    assert fetch_lines() == ["using cached acme-core 2.0 h0_0"]
    lock = data.root / "pkgs" / "acme-core-2.0-h0_0.lock"
    lock.write_bytes(lock.read_bytes()[:8] + bytes(32))
    assert fetch_lines() == ["fetching acme-core 2.0 h0_0"]


def test_link_config_vouches_for_symlinks_only_after_making_one(tmp_path: Path) -> None:
    config = link_config(tmp_path)
    assert config is not None and config.allow_symbolic_links is True
    assert list(tmp_path.iterdir()) == [], "the probe is removed"
    assert link_config(tmp_path / "missing") is None, "rattler is left to find out itself"
