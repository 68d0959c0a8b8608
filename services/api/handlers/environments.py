"""EnvironmentService: environment CRUD and package changes, each change queued as a job."""

from __future__ import annotations

import random

from sqlalchemy.orm import Session

from darb.v1 import common_pb2
from darb.v1 import environments_pb2 as pb
from darb.v1 import environments_pb2_grpc as pb_grpc
from services.api import diffs, filters, imports, payloads
from services.api.events import JOBS_CHANNEL, EventBus
from services.api.handlers import convert, paging, policies, rebuilds
from services.api.handlers.rpc import unary
from services.api.ids import parse_id
from services.api.records import PackageRow
from services.api.repo import access, creates, environments, jobs, versions
from services.api.repo.models import Environment, Job, Role, User
from services.api.state import AppState, CachedEnvironment
from shared.config import ApiLimits, ApiSettings
from shared.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, refusing
from shared.manifests import parse_manifest
from shared.platforms import validate_platforms
from shared.specs import (
    parse_specs,
    resolve_channels,
    validate_channel,
    validate_package_name,
)
from shared.validation import validate_environment_name

PACKAGE_MANAGERS = ("pixi",)


def _version_number(value: int, field: str) -> int:
    if value < 0:
        raise InvalidArgument(f"{field} must not be negative", field)
    return value


def _packages_in_request(packages: list[str], limits: ApiLimits) -> list[str]:
    """Refuses an oversized list before any of it is parsed."""
    if len(packages) > limits.max_packages_per_request:
        raise ResourceExhausted(
            f"the request names {len(packages)} packages, the limit "
            f"(DARB_MAX_PACKAGES_PER_REQUEST) is {limits.max_packages_per_request}"
        )
    return packages


def _package_names(names: list[str]) -> list[str]:
    if not names:
        raise InvalidArgument("at least one package name is required")
    validated = [validate_package_name(name) for name in names]
    if len(set(validated)) != len(validated):
        raise InvalidArgument("package names must not repeat")
    return validated


async def _create(
    state: AppState, caller: User, payload: payloads.CreatePayload, executor: str
) -> tuple[Environment, Job]:
    environment = environments.new(caller.id, payload.name, "pixi", payload.channels, executor)
    job = jobs.new(environment.id, caller.id, payload)
    notify = state.bus.notify_target(JOBS_CHANNEL)
    await creates.create_environment(state.db, environment, job, state.settings.limits, notify)
    return environment, job


def _submit(
    session: Session,
    bus: EventBus,
    caller: User,
    environment_id: str,
    payload: payloads.Payload,
    limits: ApiLimits,
) -> Job:
    """``jobs.queue`` and the NOTIFY that wakes the dispatchers, in one transaction."""
    job = jobs.queue(session, caller, environment_id, payload, limits)
    bus.notify_in(session, JOBS_CHANNEL)
    return job


def _create_payload(
    name: str, request: pb.CreateEnvironmentRequest, settings: ApiSettings
) -> payloads.CreatePayload:
    """A plain create (specs to solve), or an import from the request's files (which
    names the field it refuses itself)."""
    imported = imports.from_request(request, settings)
    if imported is not None:
        _packages_in_request(imported.packages, settings.limits)
        return payloads.CreatePayload(
            name,
            imported.channels,
            imported.packages,
            imported.platforms,
            imported.lockfile,
            imported.source,
        )
    with refusing("channels"):
        channels = resolve_channels(list(request.channels), settings.channels)
    packages = _packages_in_request(list(request.packages), settings.limits)
    with refusing("packages"):
        specs = parse_specs(packages, settings.channels)
    with refusing("platforms"):
        platforms = list(validate_platforms(list(request.platforms)))
    return payloads.CreatePayload(name, channels, [spec.text for spec in specs], platforms)


def _rollback_target(
    session: Session, caller: User, environment_id: str, version: int, settings: ApiSettings
) -> None:
    """Refuses a rollback to a version that does not exist, or whose channels the
    allowlist no longer admits (naming the channel)."""
    environment = environments.get_visible(session, caller, environment_id, Role.EDITOR)
    target = versions.of(session, environment, version)
    locked = [row[3] for row in target.packages]
    for channel in [*parse_manifest(target.manifest).channels, *locked]:
        try:
            validate_channel(channel, settings.channels)
        except InvalidArgument:
            raise FailedPrecondition(
                f"version {version} uses channel {channel!r}, which is no longer allowed"
                " (DARB_ALLOWED_CHANNELS)"
            ) from None


def _export(session: Session, caller: User, environment_id: str) -> Environment:
    environment = environments.get_visible(session, caller, environment_id)
    if not environment.manifest:
        raise FailedPrecondition(
            f"environment {environment.name!r} has no manifest yet (it is {environment.status})"
        )
    return environment


def _packages(
    session: Session, caller: User, environment_id: str, platform: str
) -> list[PackageRow]:
    environment = environments.get_visible(session, caller, environment_id)
    if not platform or platform == imports.host_platform():
        return environments.packages(session, environment_id)
    return diffs.packages(versions.of(session, environment, 0), platform)


def _diff(
    session: Session, caller: User, request: pb.DiffEnvironmentVersionsRequest
) -> diffs.VersionDiff:
    environment_id = parse_id(request.environment_id, "environment_id")
    environment = environments.get_visible(session, caller, environment_id, deleted=True)
    old = versions.of(session, environment, request.from_version, texts=False)
    new = versions.of(session, environment, request.to_version, texts=False)
    return diffs.diff(old, new, request.platform)


class EnvironmentService(pb_grpc.EnvironmentServiceServicer):
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def _queue(
        self, caller: User, environment_id: str, payload: payloads.Payload
    ) -> common_pb2.Job:
        limits = self.state.settings.limits
        bus = self.state.bus
        job = await self.state.db.run(_submit, bus, caller, environment_id, payload, limits)
        bus.environment_changed_here(environment_id)  # a delete marked it DELETING
        bus.jobs_available.set()  # other processes heard the commit's NOTIFY
        return convert.job(job, created_by_username=caller.username)

    @unary()
    async def CreateEnvironment(
        self, request: pb.CreateEnvironmentRequest, caller: User
    ) -> pb.CreateEnvironmentResponse:
        with refusing("name"):
            name = validate_environment_name(request.name)
        manager = request.package_manager or "pixi"
        if manager not in PACKAGE_MANAGERS:
            raise InvalidArgument(
                f"package_manager {manager[:40]!r} is not supported; use one of {PACKAGE_MANAGERS}",
                "package_manager",
            )
        payload = _create_payload(name, request, self.state.settings)
        settings = self.state.settings
        executor = random.choice(
            [addr for addr in settings.executors if addr not in settings.drain]
            or settings.executors
        )
        environment, job = await _create(self.state, caller, payload, executor)
        self.state.bus.jobs_available.set()  # other processes heard the commit's NOTIFY
        return pb.CreateEnvironmentResponse(
            environment=convert.environment(environment, caller.username, Role.OWNER),
            job=convert.job(job, created_by_username=caller.username),
        )

    @unary()
    async def GetEnvironment(
        self, request: pb.GetEnvironmentRequest, caller: User
    ) -> pb.GetEnvironmentResponse:
        environment_id = parse_id(request.id, "id")
        cache = self.state.environments
        cached = cache.get(environment_id)
        if cached is None or caller.id not in cached.roles:
            generation = cache.generation
            row = await self.state.db.fetch_one(
                environments.VISIBLE, id=environment_id, user=caller.id
            )
            role = None if row is None else access.caller_role(caller, row.role)
            access.require(role, Role.VIEWER, environment_id)
            assert row is not None and role is not None
            if cache.generation == generation:
                cached = cache.get(environment_id) or CachedEnvironment(row)
                cached.roles[caller.id] = role
                cache.put(environment_id, cached, generation)
            else:
                cached = CachedEnvironment(row, {caller.id: role})
        return _answer(cached, cached.roles[caller.id])

    @unary()
    async def ListEnvironments(
        self, request: pb.ListEnvironmentsRequest, caller: User
    ) -> pb.ListEnvironmentsResponse:
        size = paging.page_size(request.page_size)
        with refusing("filter"):
            restrictions = filters.parse(request.filter)
        after = paging.decode(request.page_token, (str, str, str)) or ["", "", request.filter]
        if after[2] != request.filter:
            raise InvalidArgument("page_token belongs to another filter", "page_token")
        key = (after[0], after[1])
        rows = await self.state.db.read(environments.page, caller, restrictions, key, size + 1)
        token = ""
        if len(rows) > size:
            token = paging.encode([rows[size - 1].name, rows[size - 1].id, request.filter])
        return pb.ListEnvironmentsResponse(
            environments=[convert.environment(row, row.owner, row.role) for row in rows[:size]],
            next_page_token=token,
        )

    @unary()
    async def DeleteEnvironment(
        self, request: pb.DeleteEnvironmentRequest, caller: User
    ) -> pb.DeleteEnvironmentResponse:
        environment_id = parse_id(request.id, "id")
        job = await self._queue(caller, environment_id, payloads.DeletePayload())
        return pb.DeleteEnvironmentResponse(job=job)

    @unary()
    async def InstallPackages(
        self, request: pb.InstallPackagesRequest, caller: User
    ) -> pb.InstallPackagesResponse:
        environment_id = parse_id(request.environment_id, "environment_id")
        settings = self.state.settings
        packages = _packages_in_request(list(request.packages), settings.limits)
        with refusing("packages"):
            specs = parse_specs(packages, settings.channels)
        payload = payloads.InstallPayload([spec.text for spec in specs])
        job = await self._queue(caller, environment_id, payload)
        return pb.InstallPackagesResponse(job=job)

    @unary()
    async def RemovePackages(
        self, request: pb.RemovePackagesRequest, caller: User
    ) -> pb.RemovePackagesResponse:
        environment_id = parse_id(request.environment_id, "environment_id")
        packages = _packages_in_request(list(request.packages), self.state.settings.limits)
        with refusing("packages"):
            payload = payloads.RemovePayload(_package_names(packages))
        job = await self._queue(caller, environment_id, payload)
        return pb.RemovePackagesResponse(job=job)

    @unary()
    async def ListPackages(
        self, request: pb.ListPackagesRequest, caller: User
    ) -> pb.ListPackagesResponse:
        environment_id = parse_id(request.environment_id, "environment_id")
        with refusing("platform"):
            rows = await self.state.db.read(_packages, caller, environment_id, request.platform)
        return pb.ListPackagesResponse(packages=[convert.package(row) for row in rows])

    @unary()
    async def ExportEnvironment(
        self, request: pb.ExportEnvironmentRequest, caller: User
    ) -> pb.ExportEnvironmentResponse:
        environment_id = parse_id(request.id, "id")
        row = await self.state.db.read(_export, caller, environment_id)
        return pb.ExportEnvironmentResponse(manifest=row.manifest, lockfile=row.lockfile)

    @unary()
    async def ListEnvironmentVersions(
        self, request: pb.ListEnvironmentVersionsRequest, caller: User
    ) -> pb.ListEnvironmentVersionsResponse:
        environment_id = parse_id(request.environment_id, "environment_id")
        size = paging.page_size(request.page_size)
        after = paging.decode(request.page_token, (int,))
        below = after[0] if after else None
        rows = await self.state.db.read(versions.page, caller, environment_id, below, size + 1)
        token = paging.encode([rows[size - 1].version]) if len(rows) > size else ""
        return pb.ListEnvironmentVersionsResponse(
            versions=[convert.version(row) for row in rows[:size]], next_page_token=token
        )

    @unary()
    async def GetEnvironmentVersion(
        self, request: pb.GetEnvironmentVersionRequest, caller: User
    ) -> pb.GetEnvironmentVersionResponse:
        environment_id = parse_id(request.environment_id, "environment_id")
        version = _version_number(request.version, "version")
        row = await self.state.db.read(versions.get, caller, environment_id, version)
        return pb.GetEnvironmentVersionResponse(version=convert.version(row, texts=True))

    @unary()
    async def RollbackEnvironment(
        self, request: pb.RollbackEnvironmentRequest, caller: User
    ) -> pb.RollbackEnvironmentResponse:
        environment_id = parse_id(request.environment_id, "environment_id")
        version = _version_number(request.version, "version")
        if version == 0:
            raise InvalidArgument("version is required (1, 2, ...)", "version")
        settings = self.state.settings
        await self.state.db.read(_rollback_target, caller, environment_id, version, settings)
        job = await self._queue(caller, environment_id, payloads.RollbackPayload(version))
        return pb.RollbackEnvironmentResponse(job=job)

    @unary()
    async def DiffEnvironmentVersions(
        self, request: pb.DiffEnvironmentVersionsRequest, caller: User
    ) -> pb.DiffEnvironmentVersionsResponse:
        _version_number(request.from_version, "from_version")
        _version_number(request.to_version, "to_version")
        with refusing("platform"):
            result = await self.state.db.read(_diff, caller, request)
        return convert.version_diff(result)

    @unary()
    async def GetEnvironmentPolicy(
        self, request: pb.GetEnvironmentPolicyRequest, caller: User
    ) -> pb.GetEnvironmentPolicyResponse:
        environment_id = parse_id(request.environment_id, "environment_id")
        policy = await self.state.db.read(policies.get, caller, environment_id)
        return pb.GetEnvironmentPolicyResponse(policy=policy)

    @unary()
    async def SetEnvironmentPolicy(
        self, request: pb.SetEnvironmentPolicyRequest, caller: User
    ) -> pb.SetEnvironmentPolicyResponse:
        policy = await self.state.db.run(policies.set_policy, caller, request)
        self.state.bus.environment_changed_here(request.environment_id)
        return pb.SetEnvironmentPolicyResponse(policy=policy)

    @unary()
    async def TestEnvironmentPermissions(
        self, request: pb.TestEnvironmentPermissionsRequest, caller: User
    ) -> pb.TestEnvironmentPermissionsResponse:
        held = await self.state.db.read(policies.test, caller, request)
        return pb.TestEnvironmentPermissionsResponse(permissions=held)

    @unary()
    async def RebuildEnvironment(
        self, request: pb.RebuildEnvironmentRequest, caller: User
    ) -> pb.RebuildEnvironmentResponse:
        job = await rebuilds.rebuild(self.state, caller, request.environment_id)
        return pb.RebuildEnvironmentResponse(job=job)

    @unary()
    async def MoveEnvironment(
        self, request: pb.MoveEnvironmentRequest, caller: User
    ) -> pb.MoveEnvironmentResponse:
        job = await rebuilds.move(self.state, caller, request.environment_id, request.agent)
        return pb.MoveEnvironmentResponse(job=job)


def _answer(cached: CachedEnvironment, role: Role) -> pb.GetEnvironmentResponse:
    """The cached answer for callers of ``role``, made once per role."""
    answer = cached.answers.get(role)
    if answer is None:
        environment = convert.environment(cached.row, cached.row.owner, role)
        answer = cached.answers[role] = pb.GetEnvironmentResponse(environment=environment)
    return answer
