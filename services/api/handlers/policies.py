"""The policy RPCs of EnvironmentService: read, replace whole (with an etag), and test
which permissions the caller holds."""

from __future__ import annotations

from sqlalchemy.orm import Session

from darb.v1 import environments_pb2 as pb
from services.api.ids import parse_id
from services.api.repo import access, policies
from services.api.repo.models import Environment, Role, User
from shared.errors import Aborted, FailedPrecondition, InvalidArgument, ResourceExhausted
from shared.roles import NEEDED_ROLE

MAX_MEMBERS = 1000


def _message(session: Session, environment: Environment) -> pb.Policy:
    by_role: dict[Role, list[str]] = {}
    for role, member in policies.members(session, environment.id):
        by_role.setdefault(role, []).append(member)
    bindings = [
        pb.Binding(role=f"ROLE_{role.name}", members=sorted(by_role[role]))
        for role in sorted(by_role, reverse=True)
    ]
    return pb.Policy(bindings=bindings, etag=policies.etag(environment))


def get(session: Session, caller: User, environment_id: str) -> pb.Policy:
    environment, _ = access.environment(session, caller, environment_id)
    return _message(session, environment)


def _requested(policy: pb.Policy) -> dict[str, Role]:
    """Member -> role as asked; a member named twice keeps the higher role."""
    roles: dict[str, Role] = {}
    for binding in policy.bindings:
        if binding.role not in (Role.VIEWER, Role.EDITOR, Role.OWNER):
            raise InvalidArgument("every binding needs a role: ROLE_VIEWER, _EDITOR or _OWNER")
        for member in binding.members:
            roles[member] = max(roles.get(member, Role.VIEWER), Role(binding.role))
    if len(roles) > MAX_MEMBERS:
        raise ResourceExhausted(f"a policy holds at most {MAX_MEMBERS} members")
    for member in roles:
        if not member.startswith((policies.USER_PREFIX, policies.GROUP_PREFIX)) and (
            member != policies.EVERYONE
        ):
            raise InvalidArgument(
                f"policy member {member[:80]!r}: write user:<username>, group:<name>"
                f" or {policies.EVERYONE}"
            )
    return roles


def set_policy(
    session: Session, caller: User, request: pb.SetEnvironmentPolicyRequest
) -> pb.Policy:
    environment_id = parse_id(request.environment_id, "environment_id")
    roles = _requested(request.policy)
    environment, _ = access.environment(
        session, caller, environment_id, Role.OWNER, for_update=True
    )
    if request.policy.etag and request.policy.etag != policies.etag(environment):
        raise Aborted(
            "the policy changed since it was read (its etag is not the current one);"
            " read it again and reapply the change"
        )
    if not any(
        role == Role.OWNER and member != policies.EVERYONE for member, role in roles.items()
    ):
        raise FailedPrecondition("the policy must keep at least one user or group as owner")
    resolved = policies.resolve(session, list(roles))
    policies.replace(session, environment, {resolved[name]: role for name, role in roles.items()})
    return _message(session, environment)


def test(
    session: Session, caller: User, request: pb.TestEnvironmentPermissionsRequest
) -> list[str]:
    environment_id = parse_id(request.environment_id, "environment_id")
    for permission in request.permissions:
        if permission not in NEEDED_ROLE:
            raise InvalidArgument(
                f"unknown permission {permission[:80]!r}; known: {', '.join(NEEDED_ROLE)}"
            )
    _, role = access.environment(session, caller, environment_id)
    return [name for name in request.permissions if role >= NEEDED_ROLE[name]]
