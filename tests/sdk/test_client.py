"""``darb.Client`` against the real stack: typed results, errors, paging and job watches."""

from __future__ import annotations

import uuid

import pytest

import darb
from darb import errors
from testkit.certs import CertAuthority
from testkit.control_plane import ADMIN_PASSWORD, ApiProcess
from testkit.proxy import Proxy
from tests.sdk.conftest import Account


def test_environment_and_package_flow(client: darb.Client) -> None:
    environment, job = client.environments.create("demo", packages=["acme-core ==1.0"])
    assert isinstance(environment, darb.Environment) and isinstance(job, darb.Job)
    assert environment.name == "demo" and environment.package_manager == "pixi"
    assert environment.status == darb.EnvironmentStatus.PENDING
    assert job.type == darb.JobType.CREATE_ENVIRONMENT and job.environment_id == environment.id

    done = client.jobs.wait(job.id, timeout=120)
    assert done.status == darb.JobStatus.COMPLETED, done.error
    assert done.logs and done.started_at and done.completed_at >= done.started_at
    assert client.environments.get(environment.id).status == darb.EnvironmentStatus.READY
    [package] = client.packages.list(environment.id)
    assert (package.name, package.version) == ("acme-core", "1.0")

    install = client.packages.install(environment.id, ["acme-utils"])
    assert install.packages == ("acme-utils",)
    assert client.jobs.wait(install.id, timeout=120).status == darb.JobStatus.COMPLETED
    names = {p.name for p in client.packages.list(environment.id)}
    assert names == {"acme-core", "acme-utils"}
    export = client.environments.export(environment.id)
    assert "acme-utils" in export.manifest and "acme-utils" in export.lockfile

    remove = client.packages.remove(environment.id, ["acme-utils"])
    assert client.jobs.wait(remove.id, timeout=120).status == darb.JobStatus.COMPLETED
    assert [p.name for p in client.packages.list(environment.id)] == ["acme-core"]
    assert [j.id for j in client.jobs.list(environment.id)] == [remove.id, install.id, job.id]

    delete = client.environments.delete(environment.id)
    assert delete.type == darb.JobType.DELETE_ENVIRONMENT
    assert client.jobs.wait(delete.id, timeout=120).status == darb.JobStatus.COMPLETED
    with pytest.raises(errors.NotFound):
        client.environments.get(environment.id)


def test_lists_iterate_over_every_page(client: darb.Client) -> None:
    jobs = [client.environments.create(f"env-{i}", packages=["acme-core"])[1] for i in range(3)]
    for job in jobs:
        client.jobs.wait(job.id, timeout=120)
    names = [environment.name for environment in client.environments.list(page_size=1)]
    assert names == ["env-0", "env-1", "env-2"]
    listed = [job.id for job in client.jobs.list(page_size=2)]
    assert listed == [job.id for job in reversed(jobs)]


def test_resolve_finds_an_environment_by_name_or_id(client: darb.Client) -> None:
    environment, _ = client.environments.create("named", packages=["acme-core"])
    assert client.environments.resolve("named").id == environment.id
    assert client.environments.resolve(environment.id).name == "named"
    with pytest.raises(errors.NotFound, match="no environment named 'other'"):
        client.environments.resolve("other")


def test_an_admin_resolves_a_shared_name_to_their_own_environment(api: ApiProcess) -> None:
    """An admin sees every user's environments, and names are unique per owner only: a
    bare name is the admin's own; another user's is OWNER/NAME (or its id)."""
    name = f"shared-{uuid.uuid4().hex[:8]}"
    others = []
    for _ in range(2):
        user = api.new_user().user
        with darb.Client(api.addr) as other:
            other.login(user.username, "password-1")
            others.append(
                (user.username, other.environments.create(name, packages=["acme-core"])[0])
            )
    with darb.Client(api.addr) as admin:
        admin.login("admin", ADMIN_PASSWORD)
        with pytest.raises(errors.NotFound, match=f"no environment named '{name}'"):
            admin.environments.resolve(name)
        own, _ = admin.environments.create(name, packages=["acme-core"])
        assert admin.environments.resolve(name).id == own.id
        for username, environment in others:
            assert admin.environments.resolve(f"{username}/{name}").id == environment.id
            assert admin.environments.resolve(environment.id).id == environment.id


def test_a_name_the_service_refuses_is_refused_before_any_call(
    client: darb.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK applies the service's own name rule: "abc\\n" is no name, and resolving
    it does not page through every environment."""
    calls: list[object] = []
    monkeypatch.setattr(client, "_call", lambda *args: calls.append(args))
    with pytest.raises(darb.errors.InvalidArgument, match="environment name 'abc\\\\n'"):
        client.environments.resolve("abc\n")
    with pytest.raises(darb.errors.InvalidArgument, match="1-64 characters"):
        client.environments.create("Bad Name", packages=["acme-core"])
    assert calls == []


def test_grpc_errors_become_darb_errors_with_the_server_message(
    api: ApiProcess, client: darb.Client, account: Account
) -> None:
    with pytest.raises(errors.InvalidArgument, match="--help") as info:
        client.environments.create("refused", packages=["--help"])
    assert isinstance(info.value, darb.DarbError) and info.value.code.name == "INVALID_ARGUMENT"
    assert info.value.field == "packages"  # the server's google.rpc.BadRequest
    with pytest.raises(errors.NotFound):
        client.jobs.get(str(uuid.uuid4()))
    client.environments.create("twice", packages=["acme-core"])
    with pytest.raises(errors.AlreadyExists):
        client.environments.create("twice", packages=["acme-core"])
    with darb.Client(api.addr) as anonymous:
        with pytest.raises(errors.Unauthenticated, match="authorization"):
            list(anonymous.environments.list())
        with pytest.raises(errors.Unauthenticated, match="wrong password"):
            anonymous.login(account.username, "not-the-password")
    with darb.Client("127.0.0.1:1", timeout=5) as unreachable, pytest.raises(errors.Unavailable):
        unreachable.login(account.username, account.password)


def test_the_token_stays_out_of_reprs_and_messages(api: ApiProcess, account: Account) -> None:
    with darb.Client(api.addr) as client:
        user = client.login(account.username, account.password)
        assert user.username == account.username and not user.admin
        assert client.whoami() == user
        assert client.token and client.token not in repr(client)
        assert account.password not in repr(client)


def test_watch_yields_status_changes_and_each_line_once(client: darb.Client) -> None:
    _, job = client.environments.create("watched", packages=["acme-extras"])
    events = list(client.jobs.watch(job.id))
    statuses = [event.status for event in events if isinstance(event, darb.Job)]
    lines = [event for event in events if isinstance(event, darb.LogLine)]
    assert statuses[-1] == darb.JobStatus.COMPLETED and len(set(statuses)) == len(statuses)
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
    assert "\n".join(line.text for line in lines) == client.jobs.get(job.id).logs.rstrip("\n")
    basic = client.jobs.get(job.id, logs=False)
    assert basic.logs == "" and (basic.id, basic.status) == (job.id, darb.JobStatus.COMPLETED)

    resumed = list(client.jobs.watch(job.id, after_seq=2))
    assert resumed[-1] == events[-1]
    assert [line.seq for line in resumed[:-1]] == list(range(3, len(lines) + 1))


def test_watch_resumes_after_a_dropped_connection(
    api: ApiProcess, client: darb.Client, account: Account, slow_channel: tuple[str, str]
) -> None:
    url, name = slow_channel
    _, job = client.environments.create("dropped", packages=[name], channels=[url])
    with Proxy(api.addr) as proxy, darb.Client(f"127.0.0.1:{proxy.port}") as remote:
        remote.login(account.username, account.password)
        events = []
        for event in remote.jobs.watch(job.id):
            events.append(event)
            if isinstance(event, darb.LogLine) and event.seq == 1:
                proxy.drop()
        assert proxy.connections >= 2
    lines = [event for event in events if isinstance(event, darb.LogLine)]
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
    assert "\n".join(line.text for line in lines) == client.jobs.get(job.id).logs.rstrip("\n")
    assert events[-1].status == darb.JobStatus.COMPLETED


def test_watch_reopens_calls_that_reach_their_deadline(
    api: ApiProcess, client: darb.Client, slow_channel: tuple[str, str]
) -> None:
    url, name = slow_channel
    _, job = client.environments.create("deadline", packages=[name], channels=[url])
    with darb.Client(api.addr, client.token, timeout=0.3) as impatient:
        events = list(impatient.jobs.watch(job.id))
    lines = [event for event in events if isinstance(event, darb.LogLine)]
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
    assert events[-1].status == darb.JobStatus.COMPLETED


def test_wait_times_out_and_cancel_stops_a_queued_job(
    client: darb.Client, slow_channel: tuple[str, str]
) -> None:
    url, name = slow_channel
    environment, running = client.environments.create("busy", packages=[name], channels=[url])
    queued = client.packages.install(environment.id, ["acme-core"])
    with pytest.raises(errors.DeadlineExceeded, match=running.id):
        client.jobs.wait(running.id, timeout=0.2)
    assert client.jobs.cancel(queued.id).status == darb.JobStatus.CANCELLED
    assert client.jobs.wait(queued.id, timeout=5).error
    assert client.jobs.wait(running.id, timeout=120).status == darb.JobStatus.COMPLETED


def test_mutual_tls(tls_api: ApiProcess, ca: CertAuthority, account: Account) -> None:
    roots = ca.ca.read_bytes()
    identity = {
        "certificate_chain": ca.client.cert.read_bytes(),
        "private_key": ca.client.key.read_bytes(),
    }
    with darb.Client(tls_api.addr, tls=True, root_certificates=roots, **identity) as client:
        assert client.login(account.username, account.password).username == account.username
        assert client.whoami().username == account.username
    without_certificate = darb.Client(tls_api.addr, tls=True, root_certificates=roots, timeout=5)
    plain = darb.Client(tls_api.addr, timeout=5)
    for refused in (without_certificate, plain):
        with refused, pytest.raises(errors.Unavailable):
            refused.login(account.username, account.password)
