"""``darb.Client``: the control plane's gRPC API as plain Python calls and dataclasses.

Every call has a deadline (``timeout``) so a dead network never hangs the caller; a
job watch is a chain of such calls, each resuming after the last line it saw.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

import grpc

from darb import errors
from darb.models import (
    AgentSweep,
    Drain,
    Environment,
    EnvironmentVersion,
    Export,
    Group,
    Job,
    JobStatus,
    LogLine,
    Package,
    Policy,
    Progress,
    Role,
    Usage,
    User,
    VersionDiff,
    member,
)
from darb.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    environments_pb2,
    environments_pb2_grpc,
    groups_pb2,
    groups_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    users_pb2,
    users_pb2_grpc,
)
from shared.errors import InvalidArgument
from shared.roles import PERMISSIONS
from shared.validation import validate_environment_name, validate_username

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 30.0
# The deadline of the admin calls that wait for every agent's disk: the control plane
# gives an agent up to 120 s to measure its disk, 90 s to sweep its package cache.
DISK_TIMEOUT = 150.0
# A watch retries this many consecutive failed attempts (no event received) before giving up.
WATCH_RETRIES = 6
WATCH_BACKOFF_CAP = 5.0
# Watching from past the last possible line yields status changes only.
STATUS_ONLY = 2**63 - 1
# share/unshare read, modify and write the policy; a concurrent change (ABORTED) makes
# them start over, at most this many times in all.
POLICY_ATTEMPTS = 5

Page = TypeVar("Page")
Item = TypeVar("Item")


class Client:
    """A connection to the control plane; use it as a context manager to close it.

    ``tls=True`` uses a TLS channel that verifies the server with ``root_certificates``
    (PEM bytes; the system's roots when None) and, for servers that require client
    certificates, presents ``certificate_chain`` and ``private_key``; otherwise the
    channel is plain. ``timeout`` (seconds) bounds every call.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        token: str | None = None,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._token = token or ""
        if tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates, private_key, certificate_chain
            )
            self._channel = grpc.secure_channel(address, credentials)
        else:
            self._channel = grpc.insecure_channel(address)
        self._auth = auth_pb2_grpc.AuthServiceStub(self._channel)
        self._users = users_pb2_grpc.UserServiceStub(self._channel)
        environments_stub = environments_pb2_grpc.EnvironmentServiceStub(self._channel)
        self.environments = Environments(self, environments_stub)
        self.packages = Packages(self, environments_stub)
        self.jobs = Jobs(self, jobs_pb2_grpc.JobServiceStub(self._channel))
        self.groups = Groups(self, groups_pb2_grpc.GroupServiceStub(self._channel))
        self.admin = Admin(self, admin_pb2_grpc.AdminServiceStub(self._channel))

    def __repr__(self) -> str:
        # Never the token.
        return f"darb.Client(address={self.address!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    @property
    def token(self) -> str | None:
        """The bearer token sent with every call, from the constructor or ``login``."""
        return self._token or None

    def login(self, username: str, password: str) -> User:
        """Trades the credentials for a token, which later calls then send."""
        request = auth_pb2.LoginRequest(username=username, password=password)
        response = self._call(self._auth.Login, request)
        self._token = response.token
        return User.from_proto(response.user)

    def logout(self) -> None:
        """Ends the session: the server refuses the token from now on, and this client
        sends none."""
        self._call(self._auth.Logout, auth_pb2.LogoutRequest())
        self._token = ""

    def whoami(self) -> User:
        """The user the token belongs to."""
        response = self._call(self._users.GetCurrentUser, users_pb2.GetCurrentUserRequest())
        return User.from_proto(response.user)

    def _call(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        """One unary call with the token and a deadline (``timeout``, default the
        client's); failures become ``darb.errors``."""
        if timeout is None:
            timeout = self.timeout
        try:
            return method(request, metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None

    @property
    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._token}"),) if self._token else ()

    def _pages(
        self,
        method: Callable[..., Page],
        make_request: Callable[[str], Any],
        items: Callable[[Page], Iterable[Item]],
    ) -> Iterator[Item]:
        """Every item of a paged list call, fetching the next page only when needed."""
        token = ""
        while True:
            response = self._call(method, make_request(token))
            yield from items(response)
            token = response.next_page_token
            if not token:
                return


class Environments:
    """``client.environments``: create, inspect, export and delete environments, and
    read, compare and roll back their versions."""

    def __init__(self, client: Client, stub: environments_pb2_grpc.EnvironmentServiceStub) -> None:
        self._client = client
        self._stub = stub

    def create(
        self,
        name: str,
        packages: Iterable[str] = (),
        channels: Iterable[str] = (),
        package_manager: str = "pixi",
        *,
        manifest: str = "",
        lockfile: str = "",
        environment_yml: str = "",
        platforms: Iterable[str] = (),
    ) -> tuple[Environment, Job]:
        """Records the environment and queues its create job; returns both. A name the
        service would refuse is refused here (``InvalidArgument``) without a call.

        An import gives ``manifest`` (a pixi.toml text, installed exactly as ``lockfile``
        locks it when that is given, solved otherwise) or ``environment_yml`` (a conda
        environment.yml text) instead of ``packages`` and ``channels``. ``platforms`` are
        conda platforms to lock besides the agent's own (e.g. ``osx-arm64``).
        """
        request = environments_pb2.CreateEnvironmentRequest(
            name=_valid_name(name),
            packages=list(packages),
            channels=list(channels),
            package_manager=package_manager,
            manifest=manifest,
            lockfile=lockfile,
            environment_yml=environment_yml,
            platforms=list(platforms),
        )
        response = self._client._call(self._stub.CreateEnvironment, request)
        return Environment.from_proto(response.environment), Job.from_proto(response.job)

    def get(self, environment_id: str) -> Environment:
        request = environments_pb2.GetEnvironmentRequest(id=environment_id)
        return Environment.from_proto(
            self._client._call(self._stub.GetEnvironment, request).environment
        )

    def list(self, page_size: int = 0, filter: str = "") -> Iterator[Environment]:
        """Every live environment the caller may see, by name, across all pages.

        ``filter`` is an AIP-160 filter the server applies: restrictions joined by
        ``AND``, each ``field = value`` or ``field != value`` on ``name``, ``owner`` (a
        username or ``me``), ``status`` (``READY``, ...), ``role`` (``VIEWER``,
        ``EDITOR``, ``OWNER``) and ``shared`` (``true``: others' environments shared
        with you), e.g. ``owner != me AND role = EDITOR``. ``quote`` makes a value safe
        to put in one.
        """
        for message in self._client._pages(
            self._stub.ListEnvironments,
            lambda token: environments_pb2.ListEnvironmentsRequest(
                page_size=page_size, page_token=token, filter=filter
            ),
            lambda response: response.environments,
        ):
            yield Environment.from_proto(message)

    def resolve(self, name_or_id: str) -> Environment:
        """The environment with this id or, failing that, the caller's own of this name;
        ``owner/name`` names another user's (shared with the caller), in one call."""
        if _is_uuid(name_or_id):
            try:
                return self.get(name_or_id)
            except errors.NotFound:
                pass
        owner, _, name = name_or_id.rpartition("/")
        _valid_name(name)
        if owner:
            try:
                validate_username(owner)
            except InvalidArgument as exc:
                raise errors.InvalidArgument(str(exc)) from None
        who = quote(owner) if owner else "me"
        found = self.list(filter=f"name = {quote(name)} AND owner = {who}")
        # The server filters; checking again costs nothing and keeps an older server,
        # which ignores filters, from answering with another environment.
        matches = [env for env in found if env.name == name and env.owner == (owner or env.owner)]
        if not matches:
            raise errors.NotFound(f"no environment named {name_or_id!r}")
        if len(matches) > 1:  # names are unique per owner: a server that says otherwise
            ids = ", ".join(env.id for env in matches)
            raise errors.InvalidArgument(
                f"{len(matches)} environments are named {name_or_id!r} ({ids}); use an id"
            )
        return matches[0]

    def delete(self, environment_id: str) -> Job:
        """Queues the delete job and returns it."""
        request = environments_pb2.DeleteEnvironmentRequest(id=environment_id)
        return Job.from_proto(self._client._call(self._stub.DeleteEnvironment, request).job)

    def export(self, environment_id: str) -> Export:
        """The current pixi.toml and pixi.lock texts."""
        request = environments_pb2.ExportEnvironmentRequest(id=environment_id)
        response = self._client._call(self._stub.ExportEnvironment, request)
        return Export(manifest=response.manifest, lockfile=response.lockfile)

    def versions(self, environment_id: str, page_size: int = 0) -> Iterator[EnvironmentVersion]:
        """Every version of the environment, newest first, across all pages; without
        their texts (``manifest`` and ``lockfile`` are empty: see ``version``)."""
        for message in self._client._pages(
            self._stub.ListEnvironmentVersions,
            lambda token: environments_pb2.ListEnvironmentVersionsRequest(
                environment_id=environment_id, page_size=page_size, page_token=token
            ),
            lambda response: response.versions,
        ):
            yield EnvironmentVersion.from_proto(message)

    def version(self, environment_id: str, version: int = 0) -> EnvironmentVersion:
        """One version with its pixi.toml and pixi.lock texts; 0 is the current one."""
        request = environments_pb2.GetEnvironmentVersionRequest(
            environment_id=environment_id, version=version
        )
        response = self._client._call(self._stub.GetEnvironmentVersion, request)
        return EnvironmentVersion.from_proto(response.version)

    def rollback(self, environment_id: str, version: int) -> Job:
        """Queues a job that installs exactly the lock of an earlier ``version`` (which
        makes a new version) and returns it."""
        request = environments_pb2.RollbackEnvironmentRequest(
            environment_id=environment_id, version=version
        )
        return Job.from_proto(self._client._call(self._stub.RollbackEnvironment, request).job)

    def rebuild(self, environment_id: str) -> Job:
        """Admins: queues a job that installs the current version's lock again, as is, on
        the environment's agent (or another, if that agent is gone) and returns it."""
        request = environments_pb2.RebuildEnvironmentRequest(environment_id=environment_id)
        return Job.from_proto(self._client._call(self._stub.RebuildEnvironment, request).job)

    def move(self, environment_id: str, agent: str) -> Job:
        """Admins: queues a job that rebuilds the environment on ``agent`` (one of the
        control plane's DARB_EXECUTORS), binds it there and frees its old directory."""
        request = environments_pb2.MoveEnvironmentRequest(
            environment_id=environment_id, agent=agent
        )
        return Job.from_proto(self._client._call(self._stub.MoveEnvironment, request).job)

    def diff(
        self, environment_id: str, from_version: int, to_version: int = 0, platform: str = ""
    ) -> VersionDiff:
        """What changed from ``from_version`` to ``to_version`` (0: the current one), for
        ``platform`` (one of the environment's; empty: the agent's)."""
        request = environments_pb2.DiffEnvironmentVersionsRequest(
            environment_id=environment_id,
            from_version=from_version,
            to_version=to_version,
            platform=platform,
        )
        return VersionDiff.from_proto(
            self._client._call(self._stub.DiffEnvironmentVersions, request)
        )

    # Sharing

    def policy(self, environment_id: str) -> Policy:
        """Who may do what with the environment (any role may read it)."""
        request = environments_pb2.GetEnvironmentPolicyRequest(environment_id=environment_id)
        return Policy.from_proto(
            self._client._call(self._stub.GetEnvironmentPolicy, request).policy
        )

    def set_policy(self, environment_id: str, policy: Policy) -> Policy:
        """Replaces the policy whole (owners only) and returns it as stored, with its new
        etag. ``darb.errors.Aborted`` if ``policy.etag`` is no longer the current one
        (someone changed it since it was read); an empty etag overwrites whatever is
        there."""
        request = environments_pb2.SetEnvironmentPolicyRequest(
            environment_id=environment_id, policy=policy.to_proto()
        )
        return Policy.from_proto(
            self._client._call(self._stub.SetEnvironmentPolicy, request).policy
        )

    def share(self, environment_id: str, who: str, role: Role | str = Role.VIEWER) -> Policy:
        """Gives ``who`` (``user:NAME``, ``group:NAME``, ``allAuthenticatedUsers``, or a
        bare username) exactly ``role`` on the environment; returns the new policy.

        Reads, modifies and writes the policy with its etag, starting over when someone
        else changed it in between (up to ``POLICY_ATTEMPTS`` times in all).
        """
        granted = _role(role)
        canonical = _member(who)
        return self._update_policy(
            environment_id, lambda policy: policy.with_member(canonical, granted)
        )

    def unshare(self, environment_id: str, who: str) -> Policy:
        """Takes every role ``who`` has on the environment away; returns the new policy.
        ``darb.errors.NotFound`` if the policy does not name them."""
        canonical = _member(who)

        def without(policy: Policy) -> Policy:
            if policy.role_of(canonical) is None:
                raise errors.NotFound(f"{canonical} has no role on environment {environment_id}")
            return policy.without_member(canonical)

        return self._update_policy(environment_id, without)

    def _update_policy(self, environment_id: str, change: Callable[[Policy], Policy]) -> Policy:
        for attempt in range(1, POLICY_ATTEMPTS + 1):
            policy = self.policy(environment_id)
            try:
                return self.set_policy(environment_id, change(policy))
            except errors.Aborted:
                if attempt == POLICY_ATTEMPTS:
                    raise
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    def permissions(
        self, environment_id: str, permissions: Iterable[str] = PERMISSIONS
    ) -> frozenset[str]:
        """Which of ``permissions`` (default: all of ``PERMISSIONS``) the caller holds on
        the environment."""
        request = environments_pb2.TestEnvironmentPermissionsRequest(
            environment_id=environment_id, permissions=list(permissions)
        )
        response = self._client._call(self._stub.TestEnvironmentPermissions, request)
        return frozenset(response.permissions)


class Groups:
    """``client.groups``: named sets of users, which policies name as ``group:NAME``.
    Any user may create a group and manages the groups they created."""

    def __init__(self, client: Client, stub: groups_pb2_grpc.GroupServiceStub) -> None:
        self._client = client
        self._stub = stub

    def create(self, name: str) -> Group:
        """An empty group, managed by the caller."""
        request = groups_pb2.CreateGroupRequest(name=name)
        return Group.from_proto(self._client._call(self._stub.CreateGroup, request).group)

    def delete(self, name: str) -> None:
        """Deletes the group and every policy binding that names it."""
        self._client._call(self._stub.DeleteGroup, groups_pb2.DeleteGroupRequest(name=name))

    def get(self, name: str) -> Group:
        """The group, if the caller manages it or belongs to it (or is an admin)."""
        request = groups_pb2.GetGroupRequest(name=name)
        return Group.from_proto(self._client._call(self._stub.GetGroup, request).group)

    def list(self, page_size: int = 0) -> Iterator[Group]:
        """The groups the caller manages or belongs to (every group, for admins), by
        name, across all pages."""
        for message in self._client._pages(
            self._stub.ListGroups,
            lambda token: groups_pb2.ListGroupsRequest(page_size=page_size, page_token=token),
            lambda response: response.groups,
        ):
            yield Group.from_proto(message)

    def add_member(self, group: str, username: str) -> None:
        """Adds a user (``bob`` or ``user:bob``); adding a member again is no error."""
        request = groups_pb2.AddGroupMemberRequest(group=group, username=_username(username))
        self._client._call(self._stub.AddGroupMember, request)

    def remove_member(self, group: str, username: str) -> None:
        """Removes a user; ``darb.errors.NotFound`` if they are not in the group."""
        request = groups_pb2.RemoveGroupMemberRequest(group=group, username=_username(username))
        self._client._call(self._stub.RemoveGroupMember, request)

    def members(self, group: str, page_size: int = 0) -> Iterator[str]:
        """The group's members' usernames, sorted, across all pages."""
        for username in self._client._pages(
            self._stub.ListGroupMembers,
            lambda token: groups_pb2.ListGroupMembersRequest(
                group=group, page_size=page_size, page_token=token
            ),
            lambda response: response.usernames,
        ):
            yield str(username)


class Packages:
    """``client.packages``: change and list what an environment holds."""

    def __init__(self, client: Client, stub: environments_pb2_grpc.EnvironmentServiceStub) -> None:
        self._client = client
        self._stub = stub

    def install(self, environment_id: str, specs: Iterable[str]) -> Job:
        """Queues a job installing (or changing) packages by match spec; returns it."""
        request = environments_pb2.InstallPackagesRequest(
            environment_id=environment_id, packages=list(specs)
        )
        return Job.from_proto(self._client._call(self._stub.InstallPackages, request).job)

    def remove(self, environment_id: str, names: Iterable[str]) -> Job:
        """Queues a job removing packages by name; returns it."""
        request = environments_pb2.RemovePackagesRequest(
            environment_id=environment_id, packages=list(names)
        )
        return Job.from_proto(self._client._call(self._stub.RemovePackages, request).job)

    def list(self, environment_id: str, platform: str = "") -> list[Package]:
        """What is installed now, by name; for another of the environment's
        ``platforms``, what its current lock holds for that platform."""
        request = environments_pb2.ListPackagesRequest(
            environment_id=environment_id, platform=platform
        )
        response = self._client._call(self._stub.ListPackages, request)
        return [Package.from_proto(message) for message in response.packages]


class Jobs:
    """``client.jobs``: inspect, follow and cancel jobs."""

    def __init__(self, client: Client, stub: jobs_pb2_grpc.JobServiceStub) -> None:
        self._client = client
        self._stub = stub

    def get(self, job_id: str, logs: bool = True) -> Job:
        """The job with its whole log so far (``logs=False``: without it, ``logs`` "")."""
        view = jobs_pb2.JOB_VIEW_FULL if logs else jobs_pb2.JOB_VIEW_BASIC
        request = jobs_pb2.GetJobRequest(id=job_id, view=view)
        return Job.from_proto(self._client._call(self._stub.GetJob, request).job)

    def list(self, environment_id: str | None = None, page_size: int = 0) -> Iterator[Job]:
        """The caller's jobs (of one environment if given), newest first, across all pages."""
        for message in self._client._pages(
            self._stub.ListJobs,
            lambda token: jobs_pb2.ListJobsRequest(
                environment_id=environment_id or "", page_size=page_size, page_token=token
            ),
            lambda response: response.jobs,
        ):
            yield Job.from_proto(message)

    def cancel(self, job_id: str) -> Job:
        """Cancels a pending job at once, or asks a running one to stop; returns the job."""
        request = jobs_pb2.CancelJobRequest(id=job_id)
        return Job.from_proto(self._client._call(self._stub.CancelJob, request).job)

    def watch(self, job_id: str, after_seq: int = 0) -> Iterator[LogLine | Job | Progress]:
        """Yields the job's log lines after ``after_seq``, its status changes (as ``Job``)
        and its progress reports (as ``Progress``) as they happen; the last event is always
        the ended job. Callers that want only some kinds check with ``isinstance``.

        A dropped connection or an expired deadline reopens the stream after the last line
        seen, so no line is lost or repeated.
        """
        yield from _Watch(self._client, self._stub, job_id, after_seq).events(None)

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Blocks until the job ends and returns it with its log.

        Raises ``darb.errors.DeadlineExceeded`` if it has not ended after ``timeout`` s.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        watch = _Watch(self._client, self._stub, job_id, STATUS_ONLY)
        for _ in watch.events(deadline):
            pass
        return self.get(job_id)


class Admin:
    """``client.admin``: operate the deployment's agents. Admins only: anyone else gets
    ``darb.errors.PermissionDenied``. (An environment's rebuild and move are
    ``client.environments.rebuild`` and ``.move``.)"""

    def __init__(self, client: Client, stub: admin_pb2_grpc.AdminServiceStub) -> None:
        self._client = client
        self._stub = stub

    def drain(self, agent: str) -> Drain:
        """Queues a move job for every live environment bound to ``agent`` (its address,
        host:port), each to another agent of the control plane's DARB_EXECUTORS, and
        rebinds at once those with nothing on disk; an environment already moving is not
        moved twice. ``darb.errors.FailedPrecondition`` if there is no other agent."""
        request = admin_pb2.DrainAgentRequest(agent=agent)
        return Drain.from_proto(self._client._call(self._stub.DrainAgent, request))

    def usage(self, timeout: float = DISK_TIMEOUT) -> Usage:
        """Each agent's disk (its environments, its package cache, what is free) and
        each owner's environments; ``timeout`` is this call's deadline, as every agent
        is measured first."""
        request = admin_pb2.GetUsageRequest()
        return Usage.from_proto(self._client._call(self._stub.GetUsage, request, timeout))

    def sweep_package_cache(
        self, agent: str = "", timeout: float = DISK_TIMEOUT
    ) -> list[AgentSweep]:
        """Removes, on ``agent`` (empty: every configured agent), the cached packages no
        environment links to that are older than the agent's DARB_PKG_CACHE_MAX_AGE; one
        result per agent. ``darb.errors.NotFound`` for an agent not in DARB_EXECUTORS."""
        request = admin_pb2.SweepPackageCacheRequest(agent=agent)
        response = self._client._call(self._stub.SweepPackageCache, request, timeout)
        return [AgentSweep.from_proto(message) for message in response.agents]


class _Watch:
    """One logical watch made of as many WatchJob calls as the network needs."""

    def __init__(
        self, client: Client, stub: jobs_pb2_grpc.JobServiceStub, job_id: str, after_seq: int
    ) -> None:
        self.client = client
        self._stub = stub
        self.job_id = job_id
        self.last_seq = after_seq
        self.status: JobStatus | None = None
        self.final: Job | None = None
        self.failures = 0

    def events(self, deadline: float | None) -> Iterator[LogLine | Job | Progress]:
        while True:
            timeout = self._attempt_timeout(deadline)
            try:
                yield from self._attempt(timeout)
            except grpc.RpcError as exc:
                self._recover(exc)
                continue
            if self.final is not None:
                return

    def _attempt_timeout(self, deadline: float | None) -> float:
        if deadline is None:
            return self.client.timeout
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise errors.DeadlineExceeded(f"job {self.job_id} has not ended in time")
        return min(remaining, self.client.timeout)

    def _attempt(self, timeout: float) -> Iterator[LogLine | Job | Progress]:
        request = jobs_pb2.WatchJobRequest(id=self.job_id, after_seq=self.last_seq)
        stream = self._stub.WatchJob(request, metadata=self.client._metadata, timeout=timeout)
        try:
            for event in stream:
                self.failures = 0
                if event.HasField("log_lines"):  # a batch: what the job printed together
                    for line in event.log_lines.lines:
                        if line.seq > self.last_seq:
                            self.last_seq = line.seq
                            yield LogLine.from_proto(line)
                elif event.HasField("job"):
                    yield from self._status(Job.from_proto(event.job))
                elif event.HasField("progress") and self.final is None:
                    yield Progress.from_proto(event.progress)
                # Any other (newer) kind of event is not for this SDK: skipped.
        finally:
            stream.cancel()
        if self.final is not None:
            yield self.final

    def _status(self, job: Job) -> Iterator[Job]:
        """Yields a changed status, holding back the terminal one: on a reopened stream
        the server sends the status before the lines that are still to come."""
        if job.status.terminal:
            self.final = job
        elif job.status != self.status:
            self.status = job.status
            yield job

    def _recover(self, exc: grpc.RpcError) -> None:
        """Returns if the watch should reopen (after a pause), raises otherwise."""
        code = exc.code() if isinstance(exc, grpc.Call) else None
        if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise errors.from_rpc_error(exc) from None
        # An attempt that received events just ran out its deadline: reopen at once.
        self.failures += 1
        if self.failures > WATCH_RETRIES:
            raise errors.from_rpc_error(exc) from None
        if self.failures > 1 or code == grpc.StatusCode.UNAVAILABLE:
            time.sleep(min(0.25 * 2 ** (self.failures - 1), WATCH_BACKOFF_CAP))


def quote(value: str) -> str:
    """``value`` as a quoted AIP-160 filter value: in double quotes, with ``\\`` and
    ``"`` escaped by a backslash."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _member(who: str) -> str:
    try:
        return member(who)
    except ValueError as exc:
        raise errors.InvalidArgument(str(exc)) from None


def _role(role: Role | str) -> Role:
    try:
        parsed = Role(str(role).upper().removeprefix("ROLE_"))
    except ValueError:
        parsed = Role.UNSPECIFIED
    if parsed == Role.UNSPECIFIED:
        raise errors.InvalidArgument(f"{role!r} is not a role: use viewer, editor or owner")
    return parsed


def _username(who: str) -> str:
    return who.removeprefix("user:")


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _valid_name(name: str) -> str:
    """The service's own name rule (``shared.validation``), as an SDK error."""
    try:
        return validate_environment_name(name)
    except InvalidArgument as exc:
        raise errors.InvalidArgument(str(exc)) from None
