"""The admin commands of ``darb``: rebuild or move an environment, drain an agent, and
the agents' disk usage and package-cache sweep. The server refuses them to anyone but an
admin (PERMISSION_DENIED, shown as the usual ``darb: error:`` line).

``darb.cli`` registers them (``add_env_parsers``, ``add_parsers``) and lends its
helpers: the session, job following and the command groups.
"""

from __future__ import annotations

import argparse

from darb import cli
from darb.models import AgentSweep, AgentUsage, Drain, Usage
from darb.terminal import print_json, print_table, size

AGENT_HELP = "an agent's address (host:port), as in the control plane's DARB_EXECUTORS"


# Commands: environments


def cmd_env_rebuild(args: argparse.Namespace) -> int:
    with cli._session(args) as client:
        environment = client.environments.resolve(args.env)
        job = client.environments.rebuild(environment.id)
        print(
            f"Rebuilding {environment.name} ({environment.id}) from version"
            f" {environment.current_version}, job {job.id}"
        )
        return cli._submitted(client, job, args)


def cmd_env_move(args: argparse.Namespace) -> int:
    with cli._session(args) as client:
        environment = client.environments.resolve(args.env)
        job = client.environments.move(environment.id, args.agent)
        print(f"Moving {environment.name} ({environment.id}) to agent {args.agent}, job {job.id}")
        return cli._submitted(client, job, args)


# Commands: agents


def cmd_admin_drain(args: argparse.Namespace) -> int:
    with cli._session(args) as client:
        drain = client.admin.drain(args.agent)
        names = cli._environment_names(client) if drain.jobs and args.output == "text" else {}
    if args.output == "json":
        print_json(drain)
    else:
        _print_drain(args.agent, drain, names)
    return 0


def _print_drain(agent: str, drain: Drain, names: dict[str, str]) -> None:
    print(
        f"Draining agent {agent}: {len(drain.jobs)} move jobs queued,"
        f" {drain.rebound} environments with nothing on disk rebound"
    )
    if drain.jobs:
        print_table(
            ("JOB", "ENVIRONMENT", "STATUS"),
            ((j.id, names.get(j.environment_id, j.environment_id), j.status) for j in drain.jobs),
        )


def cmd_admin_usage(args: argparse.Namespace) -> int:
    with cli._session(args) as client:
        usage = client.admin.usage()
    if args.output == "json":
        print_json(usage)
    else:
        _print_usage(usage)
    return 0


def _print_usage(usage: Usage) -> None:
    """A table of the agents, then one of the users."""
    print_table(
        ("AGENT", "REACHABLE", "ENVS", "ENV SIZE", "CACHE SIZE", "CACHED", "FREE", "TOTAL"),
        (_agent_row(agent) for agent in usage.agents),
    )
    for agent in usage.agents:
        if not agent.reachable:
            print(f"agent {agent.agent}: {agent.error}")
    print()
    print_table(
        ("USER", "ENVS", "SIZE", "UNMEASURED"),
        (
            (u.username, str(u.environments), size(u.bytes), str(u.unmeasured_environments))
            for u in usage.users
        ),
    )


def _agent_row(agent: AgentUsage) -> tuple[str, ...]:
    if not agent.reachable:
        return (agent.agent, "no", *("-",) * 6)
    return (
        agent.agent,
        "yes",
        str(agent.environments),
        size(agent.environments_bytes),
        size(agent.package_cache_bytes),
        f"{agent.package_cache_packages} packages",
        size(agent.free_bytes),
        size(agent.total_bytes),
    )


def cmd_admin_sweep(args: argparse.Namespace) -> int:
    with cli._session(args) as client:
        swept = client.admin.sweep_package_cache(args.agent)
    if args.output == "json":
        print_json(swept)
    else:
        print_table(
            ("AGENT", "REMOVED", "FREED", "IN USE", "TOO YOUNG", "ERROR"),
            (_sweep_row(agent) for agent in swept),
        )
    return 0


def _sweep_row(agent: AgentSweep) -> tuple[str, ...]:
    if not agent.reachable:
        return (agent.agent, *("-",) * 4, agent.error)
    return (
        agent.agent,
        str(agent.packages_removed),
        size(agent.bytes_freed),
        str(agent.packages_in_use),
        str(agent.packages_too_young),
        "-",
    )


# Parser


def add_env_parsers(env: cli._Commands) -> None:
    """``darb env rebuild`` and ``darb env move``."""
    commands = {
        name: env.add(name, run, summary, wait=True)
        for name, run, summary in (
            (
                "rebuild",
                cmd_env_rebuild,
                "admins: install an environment's current lock again, as is, on its agent",
            ),
            (
                "move",
                cmd_env_move,
                "admins: rebuild an environment on another agent and free its old directory",
            ),
        )
    }
    for command in commands.values():
        command.add_argument("env", metavar="ENV", help=cli.ENV_HELP)
    commands["move"].add_argument("agent", metavar="AGENT", help=AGENT_HELP)


def add_parsers(top: cli._Commands) -> None:
    """``darb admin drain|usage|sweep``."""
    admin = top.group_parser("admin", "admins: drain agents, see their disks, sweep their caches")
    admin.add(
        "drain",
        cmd_admin_drain,
        "move every environment of an agent to the others (a move job each)",
        output=True,
    ).add_argument("agent", metavar="AGENT", help=AGENT_HELP)
    admin.add(
        "usage",
        cmd_admin_usage,
        "show each agent's disk and what each user's environments use",
        output=True,
    )
    admin.add(
        "sweep",
        cmd_admin_sweep,
        "remove the cached packages no environment uses that are old enough",
        output=True,
    ).add_argument(
        "agent", metavar="AGENT", nargs="?", default="", help=f"{AGENT_HELP} (default: every one)"
    )
