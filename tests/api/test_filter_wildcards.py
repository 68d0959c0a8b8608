"""ListEnvironments' filter with AIP-160 wildcards in `name` through a real control plane:
`*` matches any characters or none, every other character (LIKE's `%` and `_` too)
matches itself, a name without `*` matches exactly, and pages follow one another."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from darb.v1 import common_pb2, environments_pb2
from testkit.control_plane import ApiProcess, Client, status_code


@dataclass(frozen=True)
class Named:
    """A fresh user's environments, all named with ``tag`` (unique to this module)."""

    client: Client
    tag: str
    names: tuple[str, ...]


@pytest.fixture(scope="module")
def named(api: ApiProcess) -> Iterator[Named]:
    client, tag = api.new_user(), uuid.uuid4().hex[:8]
    names = (f"{tag}-web", f"{tag}-web-2", f"x{tag}-web", f"{tag}_api", f"{tag}xapi")
    jobs = [client.create(name, ["acme-core"]).job.id for name in names]
    yield Named(client, tag, names)
    for job_id in jobs:  # leave the shared agent idle for the next tests
        assert client.wait(job_id).status == common_pb2.JOB_STATUS_COMPLETED


def _listed(client: Client, filter_text: str, page_size: int = 500) -> list[str]:
    """The names listed under ``filter_text``, page after page, sorted (a name listed
    twice stays twice)."""
    names: list[str] = []
    token = ""
    while True:
        request = environments_pb2.ListEnvironmentsRequest(
            filter=filter_text, page_size=page_size, page_token=token
        )
        response = client.call(client.envs.ListEnvironments, request)
        names += [environment.name for environment in response.environments]
        token = response.next_page_token
        if not token:
            return sorted(names)


def test_prefix_and_substring(named: Named) -> None:
    client, tag = named.client, named.tag
    assert _listed(client, f'name = "{tag}-web*"') == [f"{tag}-web", f"{tag}-web-2"]
    assert _listed(client, f"name = {tag}-web*") == [f"{tag}-web", f"{tag}-web-2"]  # bare
    assert _listed(client, f'name = "*{tag}-web*"') == [
        f"{tag}-web",
        f"{tag}-web-2",
        f"x{tag}-web",
    ]
    assert _listed(client, f'name = "*{tag}*web"') == [f"{tag}-web", f"x{tag}-web"]
    assert _listed(client, f'name = "*{tag}*"') == sorted(named.names)


def test_without_a_wildcard_the_name_matches_exactly(named: Named) -> None:
    client, tag = named.client, named.tag
    assert _listed(client, f'name = "{tag}-web"') == [f"{tag}-web"]
    assert _listed(client, f'name = "{tag}-we"') == []
    assert _listed(client, f'name != "{tag}-web" AND name = "*{tag}*"') == sorted(
        set(named.names) - {f"{tag}-web"}
    )


def test_like_metacharacters_match_literally(named: Named) -> None:
    """``_`` and ``%`` are LIKE's wildcards: unescaped, ``{tag}_*`` would match
    ``{tag}xapi`` too, and ``{tag}%*`` every name of the tag."""
    client, tag = named.client, named.tag
    assert _listed(client, f'name = "{tag}_*"') == [f"{tag}_api"]
    assert _listed(client, f'name = "*{tag}_api"') == [f"{tag}_api"]
    assert _listed(client, f'name = "{tag}%*"') == []


def test_a_negated_wildcard(named: Named) -> None:
    client, tag = named.client, named.tag
    assert _listed(client, f'name != "*-web*" AND name = "*{tag}*"') == [
        f"{tag}_api",
        f"{tag}xapi",
    ]


@pytest.mark.parametrize("page_size", [1, 2])
def test_pages_through_a_wildcard_result(named: Named, page_size: int) -> None:
    client, tag = named.client, named.tag
    assert _listed(client, f'name = "*{tag}*"', page_size) == sorted(named.names)
    first = environments_pb2.ListEnvironmentsRequest(filter=f'name = "*{tag}*"', page_size=1)
    token = client.call(client.envs.ListEnvironments, first).next_page_token
    other = environments_pb2.ListEnvironmentsRequest(
        filter=f'name = "{tag}*"', page_size=1, page_token=token
    )
    code = status_code(lambda: client.call(client.envs.ListEnvironments, other))
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # a token belongs to its filter


@pytest.mark.parametrize("restriction", ['owner = "bo*"', "owner = *", 'status = "READ*"'])
def test_a_wildcard_outside_name_is_refused(named: Named, restriction: str) -> None:
    """Only ``name`` matches patterns: a ``*`` elsewhere would silently match nothing."""
    request = environments_pb2.ListEnvironmentsRequest(filter=restriction)
    with pytest.raises(grpc.RpcError) as raised:
        named.client.call(named.client.envs.ListEnvironments, request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "wildcard only in a value of name" in raised.value.details()
