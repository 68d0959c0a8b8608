"""AdminService.DrainAgent, and DARB_DRAIN at start: every environment bound to an
agent moves to the others (move jobs, ``scheduling/rebuilds.py``)."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from darb.v1 import admin_pb2 as pb
from services.api.events import JOBS_CHANNEL
from services.api.handlers import convert
from services.api.handlers.rpc import unary
from services.api.repo import rebuilds
from services.api.repo.models import Job, User
from services.api.state import AppState
from shared.errors import InvalidArgument, PermissionDenied

log = logging.getLogger(__name__)

MAX_AGENT_CHARS = 255


def require_admin(caller: User, rpc: str) -> None:
    if not caller.is_admin:
        raise PermissionDenied(f"{rpc} needs the admin role")


def validate_agent(agent: str) -> str:
    agent = agent.strip()
    if not agent or len(agent) > MAX_AGENT_CHARS or any(c.isspace() for c in agent):
        raise InvalidArgument("agent must be an agent's address (host:port)")
    return agent


def targets(state: AppState, agent: str) -> list[str]:
    """Where a drained agent's environments may go: the configured agents but it and
    those of DARB_DRAIN."""
    settings = state.settings
    return [addr for addr in settings.executors if addr != agent and addr not in settings.drain]


async def drain(state: AppState, caller_id: str, agent: str) -> tuple[list[Job], int]:
    """Queues the moves in one transaction, with the NOTIFY that wakes the dispatchers."""

    def queue(session: Session, caller_id: str, agent: str, to: list[str]) -> tuple[list[Job], int]:
        queued = rebuilds.drain(session, caller_id, agent, to)
        state.bus.notify_in(session, JOBS_CHANNEL)
        return queued

    queued, rebound = await state.db.run(queue, caller_id, agent, targets(state, agent))
    state.bus.environment_changed_here(None)
    state.bus.jobs_available.set()
    return queued, rebound


async def drain_at_start(state: AppState) -> None:
    """DARB_DRAIN: drains each listed agent once at start (an environment already moving
    is not moved twice, so every control plane may do it)."""
    if not state.settings.drain:
        return
    admin = await state.db.read(rebuilds.admin_id, state.settings.admin_username)
    for agent in state.settings.drain:
        queued, rebound = await drain(state, admin, agent)
        log.info(
            "DARB_DRAIN: %d environments of agent %s move to other agents (%d rebound)",
            *(len(queued), agent, rebound),
        )


class DrainRpcs:
    """AdminService.DrainAgent; ``handlers/admin.py`` makes the service of it."""

    state: AppState

    @unary()
    async def DrainAgent(
        self, request: pb.DrainAgentRequest, caller: User
    ) -> pb.DrainAgentResponse:
        require_admin(caller, "DrainAgent")
        agent = validate_agent(request.agent)
        queued, rebound = await drain(self.state, caller.id, agent)
        jobs = [convert.job(job, created_by_username=caller.username) for job in queued]
        return pb.DrainAgentResponse(jobs=jobs, rebound=rebound)
