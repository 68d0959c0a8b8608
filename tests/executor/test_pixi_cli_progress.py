"""The ``cli`` engine's progress: phase, packages and bytes done of total, read from the
lock pixi writes and the records it leaves in the prefix's ``conda-meta``.

The stand-in ``pixi`` (``test_pixi_cli_engine.FAKE_PIXI``) writes a v6 pixi.lock and then
one conda-meta record every ``STEP`` (0.4) seconds, as pixi's installer does per package;
the agent polls every 0.25 s, so a create of three packages passes through 1 and 2 done.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.executor.builtin_worker.progress import INTERVAL, Report
from services.executor.engines.base import Operation
from services.executor.engines.builtin import BuiltinEngine
from services.executor.engines.pixi_cli import PixiCliEngine
from services.executor.engines.pixi_progress import locked_sizes
from services.executor.workspace import DataLayout
from testkit.agent import AgentProcess
from tests.executor.helpers import create, new_id, workspace_dir
from tests.executor.test_pixi_cli_engine import cli_agent, install_fake_pixi
from tests.executor.test_progress import DOWNLOADING, LINKING, SOLVING, phases, reports, run


@pytest.fixture
def fake_pixi(tmp_path: Path) -> tuple[Path, Path]:
    return install_fake_pixi(tmp_path)


V6_LOCK = """\
version: 6
environments:
  default:
    channels:
    - url: https://conda.example/acme/
    indexes:
    - https://pypi.org/simple
    packages:
      linux-64:
      - conda: https://conda.example/acme/linux-64/acme-core-1.2.0-h1_3.conda
      - conda: https://conda.example/acme/noarch/acme-docs-2024a-pyh0_0.tar.bz2
      - pypi: https://files.example/acme_py-1.0-py3-none-any.whl
      osx-arm64:
      - conda: https://conda.example/acme/osx-arm64/acme-core-1.2.0-h2_3.conda
packages:
- conda: https://conda.example/acme/linux-64/acme-core-1.2.0-h1_3.conda
  build_number: 3
  sha256: 1dd3fffd892081df9726d7eb7e0dea6198962ba775bd88842135a4ddb4deb3c9
  md5: a9f577daf3de00bca7c3c76c0ecbd1de
  license: BSD-3-Clause
  size: 28948
  timestamp: 1770939786096
- conda: https://conda.example/acme/noarch/acme-docs-2024a-pyh0_0.tar.bz2
  sha256: ba3fee6dc4e1ee8eece28152ddeb3af8fa7b626cf526a12bebd19e465de95e99
  md5: ed31b909bc178fc027544353b6afaf0a
  license: MIT
  timestamp: 1768998151847
- conda: https://conda.example/acme/osx-arm64/acme-core-1.2.0-h2_3.conda
  build_number: 3
  sha256: 0b75d45f0bba3e95dc693336fa51f40ea28c980131fec438afb7ce6118ed05f6
  md5: d2ffd7602c02f2b316fd921d39876885
  license: BSD-3-Clause
  size: 260182
  timestamp: 1771350215188
- pypi: https://files.example/acme_py-1.0-py3-none-any.whl
  name: acme-py
  version: '1.0'
  sha256: f0d6047e1d9abc57971e98a8cad89fd171378eada21dced091fa9e8f4052a000
"""


def test_the_lock_gives_the_platforms_conda_records_and_their_sizes(tmp_path: Path) -> None:
    """pixi's v6 lock (name, version and build from the file name; a package without a
    size; a PyPI package, which has no conda-meta record; another platform)."""
    lock = tmp_path / "pixi.lock"
    lock.write_text(V6_LOCK)
    assert locked_sizes(lock, "linux-64") == {
        "acme-core-1.2.0-h1_3.json": 28948,
        "acme-docs-2024a-pyh0_0.json": 0,
    }
    assert locked_sizes(lock, "osx-arm64") == {"acme-core-1.2.0-h2_3.json": 260182}
    lock.write_text(V6_LOCK[:300])  # cut short, as while a writer is not done with it
    assert locked_sizes(lock, "linux-64") is None


def lock_sizes(text: str) -> list[int]:
    """The archive sizes a lock lists (every package of these locks is the host's)."""
    return [package["size"] for package in yaml.safe_load(text)["packages"]]


def check_rising(progress: list[Any], sizes: list[int], before: int) -> None:
    """Solving first, without totals; then the lock's totals, and packages done rising
    from what the prefix had ``before`` to all of them, by the record."""
    assert progress and progress[0].phase == SOLVING, progress
    assert progress[0].packages_total == progress[0].bytes_total == 0
    assert phases(progress) in ([SOLVING, LINKING], [SOLVING, DOWNLOADING, LINKING]), progress
    counted = [report for report in progress if report.phase != SOLVING]
    assert {(r.packages_total, r.bytes_total) for r in counted} == {(len(sizes), sum(sizes))}
    done = [report.packages_done for report in counted]
    assert done == sorted(done) and done[-1] == len(sizes), done
    assert any(before < value < len(sizes) for value in done), done  # seen while it rose
    assert progress[-1].bytes_done == sum(sizes)
    times = [report.time.ToNanoseconds() for report in progress]
    assert times == sorted(times) and times[0] > 0


def test_a_cli_create_and_install_report_phases_and_rising_counts(
    agent_factory: Callable[..., AgentProcess], fake_pixi: tuple[Path, Path]
) -> None:
    agent = cli_agent(agent_factory, fake_pixi)
    environment_id = new_id()
    events, result = run(
        agent, "CreateEnvironment", environment_id=environment_id, name="p",
        packages=["acme-a", "acme-b", "acme-c"],
    )  # fmt: skip
    assert result.success, result.error
    check_rising(reports(events), lock_sizes(result.lockfile), before=0)

    events, result = run(
        agent, "InstallPackages", environment_id=environment_id, packages=["acme-d", "acme-e"]
    )
    assert result.success, result.error
    sizes = lock_sizes(result.lockfile)
    assert len(sizes) == 5
    check_rising(reports(events), sizes, before=3)


def test_an_apply_reports_the_packages_of_the_lock_it_installs(
    agent_factory: Callable[..., AgentProcess],
    fake_pixi: tuple[Path, Path],
    shared_agent: AgentProcess,
) -> None:
    """``pixi install --frozen`` installs the lock darb wrote: no solve, totals at once."""
    _, source = create(shared_agent, "acme-utils")  # the builtin engine's lock: 2 packages
    agent = cli_agent(agent_factory, fake_pixi)
    events, result = run(
        agent, "ApplyLock", environment_id=new_id(), name="demo", platforms=["linux-64"],
        packages=["acme-utils"], lockfile=source.result.lockfile,
    )  # fmt: skip
    assert result.success, result.error
    progress = reports(events)
    sizes = lock_sizes(source.result.lockfile)
    assert phases(progress) in ([LINKING], [DOWNLOADING, LINKING]), progress
    assert {(r.packages_total, r.bytes_total) for r in progress} == {(2, sum(sizes))}
    assert [report.packages_done for report in progress][-1] == 2
    assert progress[-1].bytes_done == sum(sizes)


def test_a_failed_install_reports_how_far_it_came_before_its_error(
    agent_factory: Callable[..., AgentProcess], fake_pixi: tuple[Path, Path]
) -> None:
    agent = cli_agent(agent_factory, fake_pixi)
    environment_id, _ = create(agent, "acme-a")
    events, result = run(
        agent, "InstallPackages", environment_id=environment_id,
        packages=["acme-b", "acme-breaks"],
    )  # fmt: skip
    assert not result.success and "code 5" in result.error, result.error
    progress = reports(events)
    assert progress[-1].phase == LINKING  # acme-b linked, then pixi failed
    assert (progress[-1].packages_done, progress[-1].packages_total) == (2, 3), progress
    # The failed change was undone: the prefix is the committed lock's again.
    meta = workspace_dir(agent, environment_id) / ".pixi" / "envs" / "default" / "conda-meta"
    assert sorted(path.name for path in meta.iterdir()) == ["acme-a-1.0-h0_0.json"]


def test_the_poller_ends_with_its_command_failed_or_cancelled(
    fake_pixi: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine in this process (the stand-in pixi is a real child): once ``run`` has
    returned or was cancelled, no task of it is left and no report comes any more."""
    bin_dir, calls = fake_pixi
    monkeypatch.setenv("FAKE_PIXI_LOG", str(calls))
    layout = DataLayout(tmp_path / "data")
    layout.prepare()
    engine = PixiCliEngine(layout, str(bin_dir / "pixi"), BuiltinEngine(layout, "linux-64"))
    asyncio.run(_fail_then_cancel(engine, layout))


async def _fail_then_cancel(engine: PixiCliEngine, layout: DataLayout) -> None:
    def creating(*specs: str) -> Operation:
        workspace = layout.workspace(new_id())
        return Operation("create", workspace, "demo", ("file:///c",), specs, ("linux-64",))

    sent: list[Report] = []
    error = await engine.run(creating("acme-a", "acme-breaks"), lambda line: None, sent.append)
    assert error and "code 5" in error, error
    assert (sent[-1].phase, sent[-1].packages_done, sent[-1].packages_total) == (LINKING, 1, 2)
    await _assert_quiet(sent)

    sent.clear()
    work = asyncio.ensure_future(
        engine.run(creating("acme-a", "acme-b", "acme-c"), lambda line: None, sent.append)
    )
    deadline = time.monotonic() + 20
    while not any(report.packages_done for report in sent):
        assert time.monotonic() < deadline and not work.done(), sent
        await asyncio.sleep(0.05)
    work.cancel()
    with pytest.raises(asyncio.CancelledError):
        await work
    assert sent[-1].packages_done < 3  # stopped half-way
    await _assert_quiet(sent)


async def _assert_quiet(sent: list[Report]) -> None:
    count = len(sent)
    await asyncio.sleep(4 * INTERVAL)
    assert len(sent) == count, sent[count:]
    assert asyncio.all_tasks() == {asyncio.current_task()}
