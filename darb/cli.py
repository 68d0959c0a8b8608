"""``darb``: the command line for the darb service, a thin layer over ``darb.Client``.

Mutating commands follow their job (log lines on stdout, a spinner on stderr) and exit 0
only when it completed. Errors are one ``darb: error: ...`` line on stderr and exit 1
(the server's message, after the request field it refuses when it names one:
``darb: error: packages: package spec ...``); usage errors exit 2, and Ctrl-C 130.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from darb import cli_admin, credentials, errors
from darb.client import DEFAULT_ADDRESS, Client, quote
from darb.models import (
    Environment,
    EnvironmentVersion,
    Job,
    JobStatus,
    LogLine,
    Progress,
    Role,
    member,
)
from darb.terminal import (
    JobDisplay,
    Spinner,
    arrow,
    diff_lines,
    print_fields,
    print_json,
    print_table,
    when,
)

ADDRESS_ENV = "DARB_API_ADDR"
ENV_HELP = "name, OWNER/name (another user's) or id"
INTERRUPTED = 130


class CliError(Exception):
    """A failure the CLI itself detects; its message is the whole story."""


# Connection


def _address(args: argparse.Namespace) -> str:
    return args.address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


def _client(args: argparse.Namespace, token: str | None = None) -> Client:
    pem = {
        name: Path(path).read_bytes() if path else None
        for name, path in (
            ("root_certificates", args.ca_file),
            ("certificate_chain", args.cert_file),
            ("private_key", args.key_file),
        )
    }
    tls = args.tls or any(value is not None for value in pem.values())
    return Client(
        _address(args),
        token,
        tls=tls,
        root_certificates=pem["root_certificates"],
        certificate_chain=pem["certificate_chain"],
        private_key=pem["private_key"],
    )


def _session(args: argparse.Namespace) -> Client:
    """A client carrying the token saved by ``darb login`` for this address."""
    address = _address(args)
    login = credentials.load(address)
    if login is None:
        raise CliError(f"not logged in to {address}; run `darb login`")
    return _client(args, login.token)


# Jobs


def _follow(client: Client, job: Job) -> int:
    """Streams the job's log under a spinner (a progress bar once the job reports its
    progress) until it ends; 0 only if it completed."""
    final = job
    with JobDisplay(job.id, job.status) as display:
        try:
            for event in client.jobs.watch(job.id):
                if isinstance(event, LogLine):
                    display.print(event.text)
                    continue
                if isinstance(event, Progress):
                    display.progress(event)
                    continue
                final = event
                display.status = event.status
                if not display.interactive and not event.status.terminal:
                    print(f"job {job.id}: {event.status.lower()}", file=sys.stderr)
        except KeyboardInterrupt:
            display.close()
            print(
                f"darb: stopped following; job {job.id} goes on (`darb job logs {job.id} -f`)",
                file=sys.stderr,
            )
            return INTERRUPTED
    return _report(final, display.elapsed)


def _report(job: Job, elapsed: float) -> int:
    if job.status == JobStatus.COMPLETED:
        print(f"job {job.id} completed in {elapsed:.1f}s", file=sys.stderr)
        return 0
    # The first line only: the details (a solver's explanation) are in the log above.
    reason = f": {job.error.splitlines()[0].rstrip(':')}" if job.error else ""
    print(f"darb: error: job {job.id} {job.status.lower()}{reason}", file=sys.stderr)
    return 1


def _submitted(client: Client, job: Job, args: argparse.Namespace) -> int:
    if args.no_wait:
        print(f"job {job.id} {job.status.lower()}; follow it with `darb job logs {job.id} -f`")
        return 0
    return _follow(client, job)


# Commands: account


def cmd_login(args: argparse.Namespace) -> int:
    username = args.username or _ask_username()
    password = _read_password()
    address = _address(args)
    with _client(args) as client:
        user = client.login(username, password)
        assert client.token is not None
        path = credentials.save(address, credentials.Login(user.username, client.token))
    print(f"Logged in to {address} as {user.username}; the token is saved in {path}")
    return 0


def _ask_username() -> str:
    if not sys.stdin.isatty():
        raise CliError("--username is required when standard input is not a terminal")
    return input("Username: ").strip()


def _read_password() -> str:
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CliError("no password given")
    return password


def cmd_logout(args: argparse.Namespace) -> int:
    """Ends the session on the server, then forgets the saved token (even if the server
    could not be reached, which is then an error: the token stays valid until it expires)."""
    address = _address(args)
    login = credentials.load(address)
    if login is None:
        print(f"Not logged in to {address}")
        return 0
    try:
        with _client(args, login.token) as client:
            client.logout()
    except errors.Unauthenticated:
        pass  # expired or ended already: nothing left to end
    except errors.DarbError as exc:
        credentials.delete(address)
        raise CliError(
            f"the saved token is deleted, but the server did not end the session"
            f" ({_error_message(exc, args)}); the token stays valid until it expires"
        ) from None
    credentials.delete(address)
    print(f"Logged out of {address}")
    return 0


def cmd_whoami(args: argparse.Namespace) -> int:
    with _session(args) as client:
        user = client.whoami()
    if args.output == "json":
        print_json(user)
    else:
        print(f"{user.username}{' (admin)' if user.admin else ''} at {client.address}")
    return 0


# Commands: environments


def cmd_env_create(args: argparse.Namespace) -> int:
    files = _import_files(args)
    with _session(args) as client:
        environment, job = client.environments.create(
            args.name, args.packages, args.channels, platforms=args.platforms, **files
        )
        source = f" from {args.source}" if args.source else ""
        print(f"Creating environment {environment.name} ({environment.id}){source}, job {job.id}")
        return _submitted(client, job, args)


def _import_files(args: argparse.Namespace) -> dict[str, str]:
    """The create request's import texts: ``--from`` is an environment.yml when it ends
    in .yml or .yaml, a pixi.toml otherwise; ``--lock`` is that pixi.toml's pixi.lock."""
    if args.source is None:
        if args.lock:
            raise CliError("--lock needs --from (the pixi.toml it locks)")
        return {}
    if args.packages or args.channels:
        raise CliError("--from takes the packages and channels from the file; drop -p and -c")
    source = Path(args.source)
    if source.suffix.lower() in (".yml", ".yaml"):
        if args.lock:
            raise CliError("--lock goes with a pixi.toml, not with an environment.yml")
        return {"environment_yml": source.read_text()}
    files = {"manifest": source.read_text()}
    if args.lock:
        files["lockfile"] = Path(args.lock).read_text()
    return files


def cmd_env_list(args: argparse.Namespace) -> int:
    with _session(args) as client:
        environments = list(client.environments.list(filter=_list_filter(args)))
    if args.output == "json":
        print_json(environments)
    else:
        print_table(
            ("NAME", "OWNER", "ROLE", "STATUS", "ID", "CREATED"),
            (
                (e.name, e.owner or "-", _role_name(e.role), e.status, e.id, when(e.created_at))
                for e in environments
            ),
        )
    return 0


def _list_filter(args: argparse.Namespace) -> str:
    restrictions = []
    if args.name:
        restrictions.append(f"name = {quote(args.name)}")
    if args.shared:
        restrictions.append("shared = true")
    if args.owner:
        restrictions.append(f"owner = {quote(args.owner)}")
    if args.role:
        restrictions.append(f"role = {args.role.upper()}")
    return " AND ".join(restrictions)


def _role_name(role: Role) -> str:
    return "-" if role == Role.UNSPECIFIED else role.lower()


def cmd_env_show(args: argparse.Namespace) -> int:
    with _session(args) as client:
        environment = client.environments.resolve(args.env)
        version = None
        if args.version is not None or args.files:
            version = client.environments.version(environment.id, args.version or 0)
        by = _user_names(client) if version and args.output == "text" else {}
    if args.output == "json":
        print_json(version or environment)
    elif version is None:
        print_fields(_environment_fields(environment))
    else:
        _print_version(environment, version, by, args.files)
    return 0


def _environment_fields(environment: Environment) -> list[tuple[str, str]]:
    fields = [
        ("name", environment.name),
        ("id", environment.id),
        ("status", environment.status),
        ("version", str(environment.current_version or "-")),
        ("package manager", environment.package_manager),
        ("channels", ", ".join(environment.channels)),
        ("platforms", ", ".join(environment.platforms) or "-"),
        ("owner", environment.owner or environment.owner_id),
        ("your role", _role_name(environment.role)),
        ("created", when(environment.created_at)),
        ("updated", when(environment.updated_at)),
    ]
    if environment.error:
        fields.insert(3, ("error", environment.error))
    return fields


def _print_version(
    environment: Environment, version: EnvironmentVersion, by: dict[str, str], files: bool
) -> None:
    """A version's fields and packages, then with ``files`` its pixi.toml and pixi.lock."""
    current = " (current)" if version.version == environment.current_version else ""
    print_fields(
        [
            ("environment", f"{environment.name} ({environment.id})"),
            ("version", f"{version.version}{current}"),
            ("description", version.description),
            ("by", _by(version, by)),
            ("created", when(version.created_at)),
            ("job", version.job_id),
            ("hash", version.content_hash),
            ("platforms", ", ".join(version.platforms)),
        ]
    )
    print()
    print_table(
        ("NAME", "VERSION", "BUILD", "CHANNEL"),
        ((p.name, p.version, p.build, p.channel) for p in version.packages),
    )
    if files:
        for name, text in (("pixi.toml", version.manifest), ("pixi.lock", version.lockfile)):
            print(f"\n==> {name} <==")
            print(text, end="" if text.endswith("\n") else "\n")


def _by(version: EnvironmentVersion, by: dict[str, str]) -> str:
    """Who made a version: their username (the server's, else one we know), else the id."""
    return version.created_by_username or by.get(version.created_by, version.created_by)


def _user_names(client: Client) -> dict[str, str]:
    """The caller's username by id: what a version's ``created_by`` can be shown as
    (other users' ids stay ids; only admins may list users)."""
    user = client.whoami()
    return {user.id: user.username}


def cmd_env_delete(args: argparse.Namespace) -> int:
    with _session(args) as client:
        environment = client.environments.resolve(args.env)
        job = client.environments.delete(environment.id)
        print(f"Deleting environment {environment.name} ({environment.id}), job {job.id}")
        return _submitted(client, job, args)


def cmd_env_export(args: argparse.Namespace) -> int:
    with _session(args) as client:
        environment_id = client.environments.resolve(args.env).id
        if args.version:
            version = client.environments.version(environment_id, args.version)
            texts = (version.manifest, version.lockfile)
        else:
            export = client.environments.export(environment_id)
            texts = (export.manifest, export.lockfile)
    directory = Path(args.dir)
    files = dict(zip((directory / "pixi.toml", directory / "pixi.lock"), texts, strict=True))
    existing = [str(path) for path in files if path.exists()]
    if existing and not args.force:
        raise CliError(f"{' and '.join(existing)} already exist; use --force to overwrite")
    directory.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_text(text)
    print(f"Wrote {' and '.join(str(path) for path in files)}")
    return 0


# Commands: history


def cmd_env_history(args: argparse.Namespace) -> int:
    with _session(args) as client:
        environment = client.environments.resolve(args.env)
        versions = list(client.environments.versions(environment.id))
        by = _user_names(client) if args.output == "text" else {}
    if args.output == "json":
        print_json(versions)
        return 0
    print_table(
        ("VERSION", "WHEN", "BY", "DESCRIPTION", "HASH"),
        (
            (
                str(v.version),
                when(v.created_at),
                _by(v, by),
                v.description,
                v.content_hash[:12],
            )
            for v in versions
        ),
    )
    return 0


def cmd_env_diff(args: argparse.Namespace) -> int:
    with _session(args) as client:
        environment = client.environments.resolve(args.env)
        diff = client.environments.diff(environment.id, args.a, args.b, args.platform)
    if args.output == "json":
        print_json(diff)
        return 0
    names = [_version_name(number, environment) for number in (args.a, args.b)]
    platform = f" ({args.platform})" if args.platform else ""
    print(f"{environment.name}{platform}: {names[0]} {arrow()} {names[1]}")
    for line in diff_lines(diff):
        print(line)
    return 0


def _version_name(number: int, environment: Environment) -> str:
    current = environment.current_version
    if number in (0, current):
        return f"version {current} (current)"
    return f"version {number}"


def cmd_env_rollback(args: argparse.Namespace) -> int:
    with _session(args) as client:
        environment = client.environments.resolve(args.env)
        job = client.environments.rollback(environment.id, args.version)
        print(f"Rolling back {environment.name} to version {args.version}, job {job.id}")
        return _submitted(client, job, args)


# Commands: sharing


def cmd_env_share(args: argparse.Namespace) -> int:
    with _session(args) as client:
        environment = client.environments.resolve(args.env)
        policy = client.environments.share(environment.id, args.member, args.role)
    member = _canonical(args.member)
    role = policy.role_of(member)
    print(f"{member} is {_a(role)} of {_env_label(environment)}")
    return 0


def cmd_env_unshare(args: argparse.Namespace) -> int:
    with _session(args) as client:
        environment = client.environments.resolve(args.env)
        client.environments.unshare(environment.id, args.member)
    print(f"{_canonical(args.member)} has no role on {_env_label(environment)} any more")
    return 0


def cmd_env_members(args: argparse.Namespace) -> int:
    with _session(args) as client:
        policy = client.environments.policy(client.environments.resolve(args.env).id)
    if args.output == "json":
        print_json(policy)
        return 0
    print_table(
        ("ROLE", "MEMBER"),
        ((role.lower(), m) for role, members in policy.bindings.items() for m in members),
    )
    return 0


def _canonical(who: str) -> str:
    try:
        return member(who)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _a(role: Role | None) -> str:
    name = "no role" if role is None else role.lower()
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def _env_label(environment: Environment) -> str:
    return f"{environment.owner}/{environment.name}" if environment.owner else environment.name


# Commands: groups


def cmd_group_create(args: argparse.Namespace) -> int:
    with _session(args) as client:
        group = client.groups.create(args.name)
    print(f"Created group {group.name}; name it in policies as group:{group.name}")
    return 0


def cmd_group_delete(args: argparse.Namespace) -> int:
    with _session(args) as client:
        client.groups.delete(args.name)
    print(f"Deleted group {args.name}")
    return 0


def cmd_group_list(args: argparse.Namespace) -> int:
    with _session(args) as client:
        groups = list(client.groups.list())
    if args.output == "json":
        print_json(groups)
    else:
        print_table(
            ("NAME", "MEMBERS", "CREATED BY", "CREATED"),
            (
                (g.name, str(g.member_count), g.created_by or "-", when(g.created_at))
                for g in groups
            ),
        )
    return 0


def cmd_group_add(args: argparse.Namespace) -> int:
    with _session(args) as client:
        for username in args.usernames:
            client.groups.add_member(args.group, username)
    print(f"Added {', '.join(args.usernames)} to group {args.group}")
    return 0


def cmd_group_remove(args: argparse.Namespace) -> int:
    with _session(args) as client:
        for username in args.usernames:
            client.groups.remove_member(args.group, username)
    print(f"Removed {', '.join(args.usernames)} from group {args.group}")
    return 0


def cmd_group_members(args: argparse.Namespace) -> int:
    with _session(args) as client:
        usernames = list(client.groups.members(args.group))
    if args.output == "json":
        print(json.dumps(usernames, indent=2))
    else:
        for username in usernames:
            print(username)
    return 0


# Commands: packages


def cmd_pkg_add(args: argparse.Namespace) -> int:
    with _session(args) as client:
        environment = client.environments.resolve(args.env)
        job = client.packages.install(environment.id, args.specs)
        print(f"Installing {' '.join(args.specs)} in {environment.name}, job {job.id}")
        return _submitted(client, job, args)


def cmd_pkg_rm(args: argparse.Namespace) -> int:
    with _session(args) as client:
        environment = client.environments.resolve(args.env)
        job = client.packages.remove(environment.id, args.names)
        print(f"Removing {' '.join(args.names)} from {environment.name}, job {job.id}")
        return _submitted(client, job, args)


def cmd_pkg_ls(args: argparse.Namespace) -> int:
    with _session(args) as client:
        packages = client.packages.list(client.environments.resolve(args.env).id)
    if args.output == "json":
        print_json(packages)
    else:
        print_table(
            ("NAME", "VERSION", "BUILD", "CHANNEL"),
            ((p.name, p.version, p.build, p.channel) for p in packages),
        )
    return 0


# Commands: jobs


def cmd_job_ls(args: argparse.Namespace) -> int:
    with _session(args) as client:
        environment_id = client.environments.resolve(args.env).id if args.env else None
        jobs = list(client.jobs.list(environment_id))
        names = {} if args.output == "json" else _environment_names(client)
    if args.output == "json":
        print_json(jobs)
    else:
        print_table(
            ("ID", "TYPE", "STATUS", "ENVIRONMENT", "CREATED"),
            (
                (
                    j.id,
                    j.type,
                    j.status,
                    names.get(j.environment_id, j.environment_id),
                    when(j.created_at),
                )
                for j in jobs
            ),
        )
    return 0


def _environment_names(client: Client) -> dict[str, str]:
    """Names of the live environments by id (deleted ones keep showing their id)."""
    return {environment.id: environment.name for environment in client.environments.list()}


def cmd_job_show(args: argparse.Namespace) -> int:
    with _session(args) as client:
        job = client.jobs.get(args.id)
    if args.output == "json":
        print_json(job)
        return 0
    print_fields(
        [
            ("id", job.id),
            ("type", job.type),
            ("status", job.status),
            ("error", job.error or "-"),
            ("environment", job.environment_id),
            ("by", job.created_by_username or job.created_by or "-"),
            ("packages", " ".join(job.packages) or "-"),
            ("created", when(job.created_at)),
            ("started", when(job.started_at)),
            ("completed", when(job.completed_at)),
        ]
    )
    print("logs:")
    _print_logs(job.logs)
    return 0


def cmd_job_logs(args: argparse.Namespace) -> int:
    with _session(args) as client:
        job = client.jobs.get(args.id)
        if args.follow:
            return _follow(client, job)
    _print_logs(job.logs)
    return 0


def _print_logs(logs: str) -> None:
    if logs:
        print(logs, end="" if logs.endswith("\n") else "\n")


def cmd_job_cancel(args: argparse.Namespace) -> int:
    with _session(args) as client:
        job = client.jobs.cancel(args.id)
        if not (args.no_wait or job.status.terminal):
            with Spinner(job.status):
                job = client.jobs.wait(job.id)
    if job.status.terminal and job.status != JobStatus.CANCELLED:
        raise CliError(f"job {job.id} was not cancelled: it {job.status.lower()} first")
    print(f"job {job.id} {job.status.lower()}")
    return 0


# Parser


def _connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options every command takes, before or after the subcommand.

    Subcommands get them with SUPPRESS defaults, so they override the top level's only
    when given.
    """

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--address",
        default=default(None),
        help=f"host:port of the darb API (default: ${ADDRESS_ENV} or {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--tls", action="store_true", default=default(False), help="connect with TLS"
    )
    parser.add_argument(
        "--ca-file",
        default=default(None),
        help="PEM file of the CA that signed the server's certificate (implies --tls)",
    )
    parser.add_argument(
        "--cert-file",
        default=default(None),
        help="PEM client certificate, for servers that require one (implies --tls)",
    )
    parser.add_argument(
        "--key-file", default=default(None), help="PEM key of the client certificate"
    )


class _Commands:
    """Adds leaf commands to a group, each with the connection options."""

    def __init__(self, parent: argparse.ArgumentParser, title: str) -> None:
        self.group = parent.add_subparsers(title=title, metavar="COMMAND")

    def add(
        self,
        name: str,
        run: Callable[[argparse.Namespace], int],
        summary: str,
        aliases: Sequence[str] = (),
        output: bool = False,
        wait: bool = False,
    ) -> argparse.ArgumentParser:
        parser = self.group.add_parser(
            name, help=summary, description=summary, aliases=list(aliases)
        )
        parser.set_defaults(run=run)
        _connection_options(parser, suppress=True)
        if output:
            parser.add_argument(
                "-o", "--output", choices=("text", "json"), default="text", help="output format"
            )
        if wait:
            parser.add_argument(
                "--no-wait", action="store_true", help="return at once instead of following the job"
            )
        return parser

    def group_parser(self, name: str, summary: str) -> _Commands:
        parser = self.group.add_parser(name, help=summary, description=summary)
        parser.set_defaults(run=lambda _args, parser=parser: _usage(parser))
        return _Commands(parser, "commands")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _version_number(least: int) -> Callable[[str], int]:
    """An argparse type: a version number of at least ``least``."""

    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a version number") from None
        if number < least:
            raise argparse.ArgumentTypeError(f"a version number is {least} or more")
        return number

    return parse


def _env_parsers(top: _Commands) -> None:
    env = top.group_parser(
        "env", "create, inspect, share, export, delete and roll back environments"
    )
    _create_parser(env)
    ls = env.add(
        "list",
        cmd_env_list,
        "list the environments you own or that are shared with you",
        aliases=["ls"],
        output=True,
    )
    ls.add_argument(
        "--name",
        metavar="PATTERN",
        help="only those whose name matches PATTERN (`*` any characters: 'web*', '*web*')",
    )
    ls.add_argument(
        "--shared", action="store_true", help="only others' environments shared with you"
    )
    ls.add_argument("--owner", metavar="USER", help="only those USER owns (`me`: yours)")
    ls.add_argument(
        "--role", choices=("viewer", "editor", "owner"), help="only those where you have ROLE"
    )
    show = env.add("show", cmd_env_show, "show an environment or one of its versions", output=True)
    show.add_argument("env", metavar="ENV", help=ENV_HELP)
    show.add_argument(
        "--version",
        type=_version_number(0),
        metavar="N",
        help="show version N (0: the current one) and its packages instead",
    )
    show.add_argument(
        "--files",
        action="store_true",
        help="also print the pixi.toml and pixi.lock (of the current version without --version)",
    )
    env.add(
        "delete", cmd_env_delete, "delete an environment", aliases=["rm"], wait=True
    ).add_argument("env", metavar="ENV", help=ENV_HELP)
    export = env.add(
        "export", cmd_env_export, "write the pixi.toml and pixi.lock of an environment"
    )
    export.add_argument("env", metavar="ENV", help=ENV_HELP)
    export.add_argument("-d", "--dir", default=".", help="directory to write to (default: .)")
    export.add_argument("--force", action="store_true", help="overwrite existing files")
    export.add_argument(
        "--version", type=_version_number(0), default=0, metavar="N", help="an earlier version's"
    )
    _history_parsers(env)
    _sharing_parsers(env)
    cli_admin.add_env_parsers(env)


def _sharing_parsers(env: _Commands) -> None:
    members_help = "user:NAME, group:NAME, allAuthenticatedUsers, or a bare username"
    share = env.add("share", cmd_env_share, "give a user or group a role on an environment")
    share.add_argument("env", metavar="ENV", help=ENV_HELP)
    share.add_argument("member", metavar="MEMBER", help=members_help)
    share.add_argument(
        "--role",
        choices=("viewer", "editor", "owner"),
        default="viewer",
        help="viewer (read), editor (also change packages and cancel jobs) or owner "
        "(also delete and share); default: viewer",
    )
    unshare = env.add("unshare", cmd_env_unshare, "take a member's role on an environment away")
    unshare.add_argument("env", metavar="ENV", help=ENV_HELP)
    unshare.add_argument("member", metavar="MEMBER", help=members_help)
    env.add(
        "members", cmd_env_members, "list who may do what with an environment", output=True
    ).add_argument("env", metavar="ENV", help=ENV_HELP)


def _group_parsers(top: _Commands) -> None:
    group = top.group_parser("group", "manage groups of users to share environments with")
    group.add("create", cmd_group_create, "create a group (you manage it)").add_argument("name")
    group.add("rm", cmd_group_delete, "delete a group", aliases=["delete"]).add_argument("name")
    group.add(
        "ls",
        cmd_group_list,
        "list the groups you manage or belong to",
        aliases=["list"],
        output=True,
    )
    for name, run, summary in (
        ("add", cmd_group_add, "add users to a group"),
        ("remove", cmd_group_remove, "remove users from a group"),
    ):
        command = group.add(name, run, summary)
        command.add_argument("group", metavar="GROUP")
        command.add_argument("usernames", metavar="USER", nargs="+")
    group.add("members", cmd_group_members, "list a group's members", output=True).add_argument(
        "group", metavar="GROUP"
    )


def _create_parser(env: _Commands) -> None:
    create = env.add("create", cmd_env_create, "create an environment", wait=True)
    create.add_argument("name")
    create.add_argument(
        "-p",
        "--package",
        dest="packages",
        action="append",
        default=[],
        metavar="SPEC",
        help="a conda match spec to install (repeatable; at least one, unless --from)",
    )
    create.add_argument(
        "-c",
        "--channel",
        dest="channels",
        action="append",
        default=[],
        metavar="CHANNEL",
        help="a channel name or URL (repeatable; default: the server's channels)",
    )
    create.add_argument(
        "--from",
        dest="source",
        metavar="FILE",
        help="import a pixi.toml, or a conda environment.yml (.yml/.yaml), instead of -p/-c",
    )
    create.add_argument(
        "--lock",
        metavar="PIXI_LOCK",
        help="the pixi.lock of --from's pixi.toml: installed as locked",
    )
    create.add_argument(
        "--platform",
        dest="platforms",
        action="append",
        default=[],
        metavar="PLATFORM",
        help="a conda platform to lock besides the server's own, e.g. osx-arm64 (repeatable)",
    )


def _history_parsers(env: _Commands) -> None:
    history = env.add(
        "history", cmd_env_history, "list an environment's versions, newest first", output=True
    )
    history.add_argument("env", metavar="ENV", help=ENV_HELP)
    diff = env.add("diff", cmd_env_diff, "compare two versions of an environment", output=True)
    diff.add_argument("env", metavar="ENV", help=ENV_HELP)
    diff.add_argument("a", metavar="A", type=_version_number(0), help="the older version")
    diff.add_argument(
        "b",
        metavar="B",
        type=_version_number(0),
        nargs="?",
        default=0,
        help="the newer version (default: the current one)",
    )
    diff.add_argument(
        "--platform", default="", help="one of the environment's platforms (default: the server's)"
    )
    rollback = env.add(
        "rollback",
        cmd_env_rollback,
        "install exactly an earlier version's lock again (as a new version)",
        wait=True,
    )
    rollback.add_argument("env", metavar="ENV", help=ENV_HELP)
    rollback.add_argument("version", metavar="N", type=_version_number(1), help="the version")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="darb", description="Create and manage pixi/conda environments on a darb server."
    )
    _connection_options(parser, suppress=False)
    parser.set_defaults(run=lambda _args: _usage(parser))
    top = _Commands(parser, "commands")

    login = top.add("login", cmd_login, "log in and save the token for this server")
    login.add_argument("--username", help="asked for when standard input is a terminal")
    top.add("logout", cmd_logout, "end the session on the server and forget its saved token")
    top.add("whoami", cmd_whoami, "show the logged-in user", output=True)

    _env_parsers(top)
    _group_parsers(top)

    pkg = top.group_parser("pkg", "install, remove and list packages")
    add = pkg.add("add", cmd_pkg_add, "install packages", aliases=["install"], wait=True)
    add.add_argument("env", metavar="ENV", help=ENV_HELP)
    add.add_argument("specs", metavar="SPEC", nargs="+", help="conda match spec")
    rm = pkg.add("rm", cmd_pkg_rm, "remove packages", aliases=["remove"], wait=True)
    rm.add_argument("env", metavar="ENV", help=ENV_HELP)
    rm.add_argument("names", metavar="NAME", nargs="+", help="package name")
    pkg.add(
        "ls", cmd_pkg_ls, "list installed packages", aliases=["list"], output=True
    ).add_argument("env", metavar="ENV", help=ENV_HELP)

    job = top.group_parser("job", "inspect, follow and cancel jobs")
    job.add(
        "ls", cmd_job_ls, "list jobs, newest first", aliases=["list"], output=True
    ).add_argument("--env", metavar="ENV", help=f"only jobs of this environment ({ENV_HELP})")
    job.add("show", cmd_job_show, "show a job and its log", output=True).add_argument("id")
    logs = job.add("logs", cmd_job_logs, "print a job's log")
    logs.add_argument("id")
    logs.add_argument("-f", "--follow", action="store_true", help="follow the job until it ends")
    job.add("cancel", cmd_job_cancel, "cancel a job", wait=True).add_argument("id")
    cli_admin.add_parsers(top)
    return parser


def _error_message(exc: Exception, args: argparse.Namespace) -> str:
    message = " ".join(str(exc).split())
    field = exc.field if isinstance(exc, errors.InvalidArgument) else ""
    if field and not message.startswith(field):  # not twice: "filter: ...", "page_token is"
        message = f"{field}: {message}"
    if isinstance(exc, errors.Unauthenticated) and args.run is not cmd_login:
        return f"{message} (run `darb login`)"
    if isinstance(exc, errors.Unavailable):
        return f"cannot reach the darb API at {_address(args)}: {message}"
    return message


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (errors.DarbError, CliError, OSError) as exc:
        print(f"darb: error: {_error_message(exc, args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
