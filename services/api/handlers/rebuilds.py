"""EnvironmentService.RebuildEnvironment and MoveEnvironment (admins only): each queues
a job in the environment's queue (``scheduling/rebuilds.py`` runs it)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from darb.v1 import common_pb2
from services.api import payloads
from services.api.events import JOBS_CHANNEL
from services.api.handlers import convert
from services.api.handlers.drains import require_admin, validate_agent
from services.api.ids import parse_id
from services.api.repo import rebuilds
from services.api.repo.models import Job, User
from services.api.state import AppState
from shared.errors import InvalidArgument


async def _queue(
    state: AppState, caller: User, environment_id: str, payload: payloads.Payload
) -> common_pb2.Job:
    def queue(session: Session) -> Job:
        job = rebuilds.queue(session, caller, environment_id, payload)
        state.bus.notify_in(session, JOBS_CHANNEL)
        return job

    job = await state.db.run(queue)
    state.bus.environment_changed_here(environment_id)  # a rebuild made it REBUILDING
    state.bus.jobs_available.set()  # other processes heard the commit's NOTIFY
    return convert.job(job, created_by_username=caller.username)


async def rebuild(state: AppState, caller: User, environment_id: str) -> common_pb2.Job:
    require_admin(caller, "RebuildEnvironment")
    environment_id = parse_id(environment_id, "environment_id")
    return await _queue(state, caller, environment_id, payloads.RebuildPayload())


async def move(state: AppState, caller: User, environment_id: str, agent: str) -> common_pb2.Job:
    require_admin(caller, "MoveEnvironment")
    environment_id = parse_id(environment_id, "environment_id")
    agent = validate_agent(agent)
    if agent not in state.settings.executors:
        raise InvalidArgument(
            f"agent {agent!r} is not one of DARB_EXECUTORS ({', '.join(state.settings.executors)})"
        )
    return await _queue(state, caller, environment_id, payloads.MovePayload(agent))
