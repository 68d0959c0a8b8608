"""AdminService.GetUsage and SweepPackageCache (admins only): the agents' disks, summed
by owner here from the sizes each agent reports per environment."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from darb.v1 import admin_pb2 as pb
from services.api.handlers.rpc import unary
from services.api.repo import disk
from services.api.repo.models import User
from services.api.scheduling.agent_disk import AgentDiskClient, each_agent
from services.api.state import AppState
from shared.errors import NotFound, PermissionDenied


def _require_admin(caller: User, rpc: str) -> None:
    if not caller.is_admin:
        raise PermissionDenied(f"{rpc} needs the admin role")


class UsageRpcs:
    """Mixed into ``handlers.admin.AdminService``."""

    state: AppState

    def _agent_disk(self) -> AgentDiskClient:
        client: AgentDiskClient | None = self.__dict__.get("_agent_disk_client")
        if client is None:  # made on the server's event loop, at the first call
            settings = self.state.settings
            client = AgentDiskClient(settings.agent_token, settings.tls)
            self.__dict__["_agent_disk_client"] = client
        return client

    @unary()
    async def GetUsage(self, request: pb.GetUsageRequest, caller: User) -> pb.GetUsageResponse:
        _require_admin(caller, "GetUsage")
        environments = await self.state.db.read(disk.live_environments)
        # The configured agents, and any agent environments are still bound to.
        agents = list(
            dict.fromkeys([*self.state.settings.executors, *(e.executor for e in environments)])
        )
        answers = await each_agent(agents, self._agent_disk().usage)
        sizes: dict[tuple[str, str], int] = {}
        reachable: set[str] = set()
        response = pb.GetUsageResponse()
        for addr, usage, error in answers:
            if usage is None:
                response.agents.add(agent=addr, reachable=False, error=error)
                continue
            reachable.add(addr)
            for measured in usage.environments:
                sizes[(addr, measured.environment_id)] = measured.bytes
            response.agents.add(
                agent=addr,
                reachable=True,
                environments_bytes=usage.environments_bytes,
                environments=len(usage.environments),
                package_cache_bytes=usage.package_cache_bytes,
                package_cache_packages=usage.package_cache_packages,
                free_bytes=usage.free_bytes,
                total_bytes=usage.total_bytes,
            )
        users: dict[str, Any] = {}
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for environment in environments:
            users[environment.owner_id] = environment.username
            total = totals[environment.owner_id]
            total[0] += 1
            if environment.executor in reachable:
                total[1] += sizes.get((environment.executor, environment.id), 0)
            else:
                total[2] += 1
        for owner_id, username in users.items():
            count, size, unmeasured = totals[owner_id]
            response.users.add(
                user_id=owner_id,
                username=username,
                environments=count,
                bytes=size,
                unmeasured_environments=unmeasured,
            )
        return response

    @unary()
    async def SweepPackageCache(
        self, request: pb.SweepPackageCacheRequest, caller: User
    ) -> pb.SweepPackageCacheResponse:
        _require_admin(caller, "SweepPackageCache")
        agents = list(self.state.settings.executors)
        if request.agent:
            if request.agent not in agents:
                raise NotFound(f"{request.agent!r} is not an agent of DARB_EXECUTORS")
            agents = [request.agent]
        answers = await each_agent(agents, self._agent_disk().sweep)
        response = pb.SweepPackageCacheResponse()
        for addr, swept, error in answers:
            if swept is None:
                response.agents.add(agent=addr, reachable=False, error=error)
                continue
            response.agents.add(
                agent=addr,
                reachable=True,
                packages_removed=swept.packages_removed,
                bytes_freed=swept.bytes_freed,
                packages_in_use=swept.packages_in_use,
                packages_too_young=swept.packages_too_young,
            )
        return response
