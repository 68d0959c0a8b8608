"""Following a child's output: a cancel ends the follow and the child's process group,
however full the child's pipes are."""

from __future__ import annotations

import asyncio
import sys

from services.executor.process import FLOW_CONTROL, REAP_SECONDS, follow_group, spawn_in_group
from testkit.processes import group_members

CHATTY = "while True: print('x' * 1000)"


async def cancel_a_follow_without_room() -> tuple[bool, int]:
    """Follow a child printing without end to a consumer that never makes room, cancel
    it once the pipes are full; whether the follow ended in time, and the child's pid."""
    never = asyncio.Event()
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def follow() -> int:
        FLOW_CONTROL.set(never.wait)
        process = await spawn_in_group([sys.executable, "-c", CHATTY])
        started.set_result(process.pid)
        return await follow_group(process, emit=lambda line: None)

    task = asyncio.ensure_future(follow())
    pid = await started
    await asyncio.sleep(0.5)  # the pipe reader waits for room; the pipes fill up
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=REAP_SECONDS + 2)
    if not done:  # a second cancel breaks out of the wait, so the loop can close
        task.cancel()
        await asyncio.wait({task}, timeout=1)
    return bool(done), pid


def test_a_cancel_ends_a_child_whose_reader_waits_for_room() -> None:
    # A loop of our own: asyncio.run would wait forever for a follow that never ends.
    loop = asyncio.new_event_loop()
    try:
        ended, pid = loop.run_until_complete(cancel_a_follow_without_room())
    finally:
        loop.close()
    assert ended, "the follow still waited for the killed child"
    assert not group_members(pid)
