"""Which executor agents answer: a periodic probe of each, and the agent lease.

An environment lives on one agent's disk (``environments.executor``), so its jobs can only
run there. The monitor decides two things from its probes: where a *new* environment may
go (an agent whose last probe answered), and when work on an agent is *lost* (it has not
answered for ``DARB_AGENT_LEASE_SECONDS``). A stream that breaks is not enough to call an
agent lost before the lease ends, and a stream that stays open is not proof of life: a
frozen or partitioned agent keeps its TCP connection open but stops answering probes.

A probe's answer also carries the identity of the agent's data directory (``data_id``).
A new one is handed to ``on_identity`` (the rebuilds of an agent whose disk was emptied
or replaced, ``scheduling/rebuilds.py``): once per new value and process, again after a
handler that failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable

from services.api.metrics import Metrics
from services.api.scheduling.executor_client import ExecutorClient

log = logging.getLogger(__name__)

# Probes run at least this often, so that a short lease is noticed in time.
MAX_PROBE_INTERVAL = 5.0
MIN_PROBE_TIMEOUT = 1.0
# A new environment goes to an agent that answered this recently without a probe of its
# own: on a busy system the last job's result is as fresh as a probe, which would add a
# round trip to every create. A create that then finds the agent gone is moved (see
# Dispatcher._supervise).
RECENT_ANSWER = 2.0

# Told (address, data_id) when an agent answers with a data directory identity this
# process has not seen from it yet.
IdentityHandler = Callable[[str, str], Awaitable[None]]


class AgentMonitor:
    """Probes every known agent; new addresses (of environments bound to an agent that
    is no longer configured) join the probe set when a job needs them."""

    def __init__(
        self,
        client: ExecutorClient,
        addresses: Iterable[str],
        lease: float,
        metrics: Metrics,
        on_identity: IdentityHandler | None = None,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._on_identity = on_identity
        self._data_ids: dict[str, str] = {}  # handled: the last identity of each agent
        self.lease = lease
        self.interval = min(lease / 3, MAX_PROBE_INTERVAL)
        self._configured = list(dict.fromkeys(addresses))
        now = time.monotonic()
        # Optimistic until the first probe: an agent is not lost before it was asked.
        self._last_ok = {addr: now for addr in self._configured}
        self._up = {addr: True for addr in self._configured}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Probes once before returning, so the first new environment already avoids an
        agent that is down."""
        await self._probe_all()
        self._task = asyncio.create_task(self._run(), name="darb-agent-probes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def heard_from(self, addr: str) -> None:
        """``addr`` just answered (a job's result): alive as of now."""
        self._last_ok[addr] = time.monotonic()
        self._up[addr] = True

    def refused(self, addr: str) -> None:
        """``addr`` refused a connection: not to be trusted without a new probe."""
        self._up[addr] = False

    async def choose_for_new_environment(self, current: str, trust_recent: bool) -> str:
        """``current`` if it answered within ``RECENT_ANSWER`` (when ``trust_recent``) or
        answers a probe now, else a random configured agent that answered its last one;
        ``current`` when none does (the job then waits for it until the lease says it is
        lost). Not trusting the last periodic probe keeps an agent that died a moment ago
        from getting new environments."""
        answered = time.monotonic() - self._last_ok.get(current, -RECENT_ANSWER)
        if trust_recent and self._up.get(current) and answered < RECENT_ANSWER:
            return current
        if await self._probe(current):
            return current
        healthy = [addr for addr in self._configured if addr != current and self._up[addr]]
        return random.choice(healthy) if healthy else current

    @property
    def configured(self) -> tuple[str, ...]:
        """The agents of ``DARB_EXECUTORS``."""
        return tuple(self._configured)

    async def answers(self, addr: str) -> bool:
        """Whether ``addr`` answers a probe now."""
        return await self._probe(addr)

    async def choose_other(self, exclude: Iterable[str]) -> str | None:
        """A configured agent outside ``exclude`` that answers a probe now, preferring
        those whose last probe answered; None if none does."""
        others = [addr for addr in self._configured if addr not in set(exclude)]
        random.shuffle(others)
        others.sort(key=lambda addr: not self._up.get(addr))
        for addr in others:
            if await self._probe(addr):
                return addr
        return None

    @property
    def silence(self) -> str:
        """Why an agent counts as lost, for the job's error message."""
        return f"no answer for over {self.lease:g} s, DARB_AGENT_LEASE_SECONDS"

    async def wait_lost(self, addr: str) -> None:
        """Returns once ``addr`` has not answered a probe for longer than the agent lease,
        counted from the call at the earliest: a job that starts on an agent that was down
        (and may just have come back) gets the whole lease."""
        if addr not in self._last_ok:
            self._last_ok[addr] = time.monotonic()
            self._up[addr] = True
        since = time.monotonic()
        while time.monotonic() - max(self._last_ok[addr], since) <= self.lease:
            await asyncio.sleep(self.interval / 2)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._probe_all()

    async def _probe_all(self) -> None:
        await asyncio.gather(*(self._probe(addr) for addr in list(self._last_ok)))

    async def _probe(self, addr: str) -> bool:
        data_id = await self._client.probe(addr, max(self.interval, MIN_PROBE_TIMEOUT))
        ok = data_id is not None
        if ok:
            self._last_ok[addr] = time.monotonic()
        if ok != self._up.get(addr):
            if ok:
                log.info("executor agent %s answers", addr)
            else:
                log.warning("executor agent %s does not answer", addr)
        self._up[addr] = ok
        self._metrics.agent_up.labels(addr).set(1 if ok else 0)
        if data_id:  # empty from an agent older than data directory identities
            await self._identified(addr, data_id)
        return ok

    async def _identified(self, addr: str, data_id: str) -> None:
        """Hands a new identity of ``addr``'s data directory to the handler; one that
        fails (e.g. the database is down) is tried again at the next probe."""
        if self._on_identity is None or self._data_ids.get(addr) == data_id:
            return
        try:
            await self._on_identity(addr, data_id)
        except Exception:
            log.exception("agent %s: recording its data directory identity failed", addr)
            return
        self._data_ids[addr] = data_id
