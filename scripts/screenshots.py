"""``make screenshots``: the web UI's main pages at desktop width and 390 px wide.

Starts a throwaway stack (embedded PostgreSQL, an agent on the test fixture channel, the
control plane and ``python -m services.web``), fills it with a little data through the
gRPC API, and takes the pictures with the same headless Chromium code as the web tests
(``testkit.browser``). Writes ``<page>-desktop.png`` and ``<page>-phone.png`` into the
directory given (``docs/ui``); nothing else in the tree changes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from darb.v1 import common_pb2, environments_pb2, groups_pb2, users_pb2
from testkit import browser
from testkit.agent import start_agent
from testkit.channel import standard_channel
from testkit.control_plane import ApiProcess, Client, api_env, start_api
from testkit.postgres import fresh_database
from testkit.processes import PROJECT_ROOT
from testkit.web import start_web

PACKAGE_CACHE = PROJECT_ROOT / ".cache" / "test-packages"
PASSWORD = "password-1"


def make_user(api: ApiProcess, admin: Client, username: str, is_admin: bool = False) -> Client:
    request = users_pb2.CreateUserRequest(username=username, password=PASSWORD, admin=is_admin)
    admin.call(admin.users.CreateUser, request)
    return api.login(username, PASSWORD)


def done(client: Client, job: common_pb2.Job) -> common_pb2.Job:
    return client.wait(job.id)


def fill(api: ApiProcess) -> dict[str, str]:
    """A small team's data; the ids of what the pages show."""
    admin = api.admin()
    alice = make_user(api, admin, "alice")
    make_user(api, admin, "bob")
    make_user(api, admin, "carol", is_admin=True)
    created = alice.create("analysis", ["acme-core >=1.1", "acme-utils"])
    done(alice, created.job)
    env_id = created.environment.id
    install = done(alice, alice.install(env_id, ["acme-extras"]))
    other = alice.create("reporting", ["acme-tool"])
    done(alice, other.job)
    broken = alice.create("nightly", ["acme-broken"])
    done(alice, broken.job)
    alice.call(alice.groups.CreateGroup, groups_pb2.CreateGroupRequest(name="data-team"))
    for member in ("alice", "bob"):
        request = groups_pb2.AddGroupMemberRequest(group="data-team", username=member)
        alice.call(alice.groups.AddGroupMember, request)
    policy = alice.call(
        alice.envs.GetEnvironmentPolicy,
        environments_pb2.GetEnvironmentPolicyRequest(environment_id=env_id),
    ).policy
    bindings = [
        *policy.bindings,
        environments_pb2.Binding(role=common_pb2.ROLE_EDITOR, members=["group:data-team"]),
        environments_pb2.Binding(role=common_pb2.ROLE_VIEWER, members=["user:bob"]),
    ]
    alice.call(
        alice.envs.SetEnvironmentPolicy,
        environments_pb2.SetEnvironmentPolicyRequest(
            environment_id=env_id,
            policy=environments_pb2.Policy(bindings=bindings, etag=policy.etag),
        ),
    )
    training = alice.create("training", ["acme-core"])
    done(alice, training.job)
    return {
        "env": env_id,
        "job": install.id,
        "failed_job": broken.job.id,
        "training": training.environment.id,
    }


def alice_install(api: ApiProcess, env_id: str, package: str) -> str:
    """Submits an install as alice and returns its job's id without waiting for it."""
    return api.login("alice", PASSWORD).install(env_id, [package]).id


def shoot(chrome: WebDriver, out: Path, name: str, url: str, ready: str | None = None) -> None:
    chrome.get(url)
    if ready == "progress":  # a running job: once its progress bar shows
        job = chrome.find_element(By.ID, "job")
        browser.wait_for(chrome, lambda c: job.get_attribute("data-phases"))
    elif ready:
        browser.wait_for(
            chrome,
            lambda c: c.find_element(By.ID, "job").get_attribute("data-stream") == ready,
        )
    for label, (width, height) in (("desktop", browser.DESKTOP), ("phone", browser.PHONE)):
        browser.screenshot(chrome, out / f"{name}-{label}.png", width, height)
        print(f"wrote {out / f'{name}-{label}.png'}", flush=True)


def main(out: Path) -> int:
    browser.find_browser()
    with tempfile.TemporaryDirectory(prefix="darb-screenshots-") as tmp, fresh_database() as db:
        root = Path(tmp)
        channel = standard_channel(root / "channel", PACKAGE_CACHE)
        agent = start_agent(root / "agent" / "data", channel, token="t0ken")
        api = start_api(api_env(db, root, agent.addr, "t0ken", channel), root / "api.log")
        web = start_web(api.addr, root / "web.log")
        chrome = browser.start_browser()
        try:
            ids = fill(api)
            base = web.url
            shoot(chrome, out, "sign-in", f"{base}/login")
            browser.sign_in(chrome, base, "alice", PASSWORD)
            shoot(chrome, out, "environments", f"{base}/environments")
            shoot(chrome, out, "new-environment", f"{base}/environments/new")
            shoot(chrome, out, "environment", f"{base}/environments/{ids['env']}")
            shoot(chrome, out, "job", f"{base}/jobs/{ids['job']}", ready="ended")
            running = alice_install(api, ids["training"], "acme-big")  # seconds to link
            shoot(chrome, out, "running-job", f"{base}/jobs/{running}", ready="progress")
            shoot(chrome, out, "failed-job", f"{base}/jobs/{ids['failed_job']}", ready="ended")
            shoot(chrome, out, "jobs", f"{base}/jobs")
            shoot(chrome, out, "history", f"{base}/environments/{ids['env']}/history?from=1&to=2")
            shoot(chrome, out, "sharing", f"{base}/environments/{ids['env']}/sharing")
            shoot(chrome, out, "groups", f"{base}/groups/data-team")
            chrome.delete_all_cookies()
            browser.sign_in(chrome, base, "carol", PASSWORD)
            shoot(chrome, out, "users", f"{base}/admin/users")
        finally:
            chrome.quit()
            web.stop()
            api.stop()
            agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/ui")))
