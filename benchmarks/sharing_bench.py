"""Sharing figures: GetEnvironment by a caller whose role comes from a group against the
owner's own, in alternating rounds of one run, and a filtered ListEnvironments over
10,000 environments a user sees through a group."""

from __future__ import annotations

import asyncio
import statistics
import uuid

from benchmarks import api_bench  # which imports this module: its names are read late
from benchmarks.stack import AioClient, Stack
from benchmarks.stats import Row, ms, percentile, run_load
from darb.v1 import common_pb2, environments_pb2, groups_pb2

ROUNDS = 3
ROUND_SECONDS = 3.0
LIST_CALLS = 400
LIST_FILTER = "role = VIEWER AND status = READY"


async def _share_with_group(owner: AioClient, env_id: str, usernames: list[str]) -> str:
    """A new group of ``usernames``, bound to the environment as VIEWER."""
    name = f"bench-{uuid.uuid4().hex[:10]}"
    await owner.groups.CreateGroup(
        groups_pb2.CreateGroupRequest(name=name), metadata=owner.metadata
    )
    for username in usernames:
        request = groups_pb2.AddGroupMemberRequest(group=name, username=username)
        await owner.groups.AddGroupMember(request, metadata=owner.metadata)
    if env_id:
        policy = await owner.envs.GetEnvironmentPolicy(
            environments_pb2.GetEnvironmentPolicyRequest(environment_id=env_id),
            metadata=owner.metadata,
        )
        binding = environments_pb2.Binding(role=common_pb2.ROLE_VIEWER, members=[f"group:{name}"])
        policy.policy.bindings.append(binding)
        request = environments_pb2.SetEnvironmentPolicyRequest(
            environment_id=env_id, policy=policy.policy
        )
        await owner.envs.SetEnvironmentPolicy(request, metadata=owner.metadata)
    return name


async def shared_get(stack: Stack, clients: int) -> list[Row]:
    """Rounds of ``clients`` connections reading one environment: all the owner's, then
    each a different group member's, alternately; the medians of their rates compared."""
    [(_, owner_token)] = stack.new_users(1)
    members = stack.new_users(clients)
    owner = AioClient(stack.api.addr, owner_token)
    env_id = (
        await api_bench.create_environment(owner, "shared-get", [api_bench.SMALL_SPEC])
    ).environment_id
    usernames = [await _username(stack, user_id) for user_id, _ in members]
    await _share_with_group(owner, env_id, usernames)
    as_owner = [AioClient(stack.api.addr, owner_token) for _ in range(clients)]
    as_members = [AioClient(stack.api.addr, token) for _, token in members]
    rates: dict[str, list[float]] = {"owner": [], "member": []}
    for _ in range(ROUNDS):
        for who, group in (("owner", as_owner), ("member", as_members)):
            result, _meter = await api_bench.get_environment_load(
                stack, group, [env_id] * clients, ROUND_SECONDS
            )
            if result.errors:
                raise RuntimeError(f"GetEnvironment as {who}: {result.errors[:3]}")
            rates[who].append(result.rate)
    for client in [owner, *as_owner, *as_members]:
        await client.close()
    owner_rate, member_rate = statistics.median(rates["owner"]), statistics.median(rates["member"])
    ratio = member_rate / owner_rate
    return [
        Row(
            f"GetEnvironment of a shared environment, {clients} clients: owner / group"
            " member (RPS, medians of 3 alternating rounds)",
            f"{owner_rate:,.0f} / {member_rate:,.0f}",
        ),
        Row("  group member / owner (ratio)", f"{ratio:.2f}", "≥ 0.9", ratio >= 0.9),
    ]


async def _username(stack: Stack, user_id: str) -> str:
    def read() -> str:
        with stack.sql() as conn:
            row = conn.execute("SELECT username FROM users WHERE id = %s", (user_id,)).fetchone()
            assert row is not None
            return str(row[0])

    return await asyncio.to_thread(read)


def _bind_all(stack: Stack, owner_id: str, group: str) -> None:
    """Binds the group as VIEWER on every environment of the owner, straight in the
    database."""
    with stack.sql() as conn:
        conn.execute(
            "INSERT INTO environment_members (environment_id, member_key, group_id, role)"
            " SELECT e.id, 'group:' || g.id, g.id, 1 FROM environments AS e, groups AS g"
            " WHERE e.owner_id = %s AND g.name = %s",
            (owner_id, group),
        )
        conn.execute("ANALYZE environment_members")


async def shared_list(stack: Stack, channel: str, count: int) -> list[Row]:
    """First page of ListEnvironments filtered by role and status, for a user who sees
    ``count`` environments of another user through a group."""
    [(owner_id, owner_token), (member_id, token)] = stack.new_users(2)
    await asyncio.to_thread(api_bench.insert_environments, stack, owner_id, count, channel)
    owner = AioClient(stack.api.addr, owner_token)
    group = await _share_with_group(owner, "", [await _username(stack, member_id)])
    await asyncio.to_thread(_bind_all, stack, owner_id, group)
    client = AioClient(stack.api.addr, token)
    request = environments_pb2.ListEnvironmentsRequest(filter=LIST_FILTER)
    first = await client.envs.ListEnvironments(request, metadata=client.metadata)
    if len(first.environments) != 50 or first.environments[0].role != common_pb2.ROLE_VIEWER:
        raise RuntimeError(f"the filtered listing is not what was set up: {first}")
    result = await run_load(
        lambda _c, _n: client.envs.ListEnvironments(request, metadata=client.metadata),
        clients=1,
        seconds=20,
        max_calls=LIST_CALLS,
    )
    for each in (owner, client):
        await each.close()
    p99 = percentile(result.latencies, 99)
    return [
        Row(
            f"ListEnvironments filtered ({LIST_FILTER}), first page, {count:,} environments"
            " visible through a group, p50 / p99 (ms)",
            f"{ms(percentile(result.latencies, 50))} / {ms(p99)}",
            "p99 ≤ 20",
            p99 <= 0.020 and not result.errors,
        )
    ]
