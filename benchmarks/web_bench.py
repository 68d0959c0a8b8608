"""Web UI benchmarks (issue 16): ``python -m services.web`` in front of the stack's
control plane, as ``make run`` starts it.

- the environments list page, as a signed-in HTTP session sees it, for a user with 200
  environments: the web process's time to answer, taken on loopback;
- a log line printed by the stand-in ``pixi`` (benchmarks/standin.py) → its element in
  the live job page's DOM, in headless Chromium (testkit/browser.py).
"""

from __future__ import annotations

import asyncio
import http.client
import re
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode

from selenium.common.exceptions import TimeoutException
from selenium.webdriver.remote.webdriver import WebDriver

from benchmarks import standin
from benchmarks.stack import USER_PASSWORD, AioClient, Stack
from benchmarks.stats import Row, cpu_seconds, ms, percentile
from darb.v1 import environments_pb2
from services.web.pages.common import PAGE_SIZE
from services.web.security import CSRF_FIELD, SESSION_COOKIE
from testkit import browser
from testkit.web import WebProcess, start_web

ENVIRONMENTS = 200
WARM_UP_REQUESTS = 20
FLOOR_REQUESTS = 50
LOG_PACE = 100  # lines per second
ROW_MARK = "<tr data-env-id="

# Injected with the driver's execute_script (not a page script, so the CSP allows it):
# each element added to the log gets the time it appeared, on the machine's clock.
OBSERVER = """
window.darbBench = [];
new MutationObserver(function (records) {
  var now = performance.timeOrigin + performance.now();
  records.forEach(function (record) {
    record.addedNodes.forEach(function (node) {
      if (node.nodeType === 1) window.darbBench.push([node.textContent, now]);
    });
  });
}).observe(document.getElementById("log"), {childList: true});
"""
PAGE_STATE = """
var root = document.getElementById("job");
return [window.darbBench.length, root.dataset.stream || "", root.dataset.status || "",
        document.getElementById("log-state").textContent,
        document.querySelectorAll("#log .line").length];
"""


class Session:
    """A browser-like HTTP/1.1 session: one keep-alive connection and its cookies."""

    def __init__(self, addr: str) -> None:
        host, _, port = addr.rpartition(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=60)
        self.cookies: dict[str, str] = {}

    def request(
        self, method: str, path: str, fields: dict[str, str] | None = None
    ) -> tuple[int, str]:
        headers = {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if fields is not None:
            body = urlencode(fields)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        text = response.read().decode()
        for header in response.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                if morsel.value and morsel["max-age"] != "0":
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
        return response.status, text

    def sign_in(self, username: str, password: str) -> None:
        """The sign-in form, posted with the CSRF token of its page."""
        status, page = self.request("GET", "/login")
        found = re.search(rf'name="{CSRF_FIELD}" value="([0-9a-f]+)"', page)
        if status != 200 or found is None:
            raise RuntimeError(f"sign-in page: HTTP {status}, CSRF field found: {bool(found)}")
        fields = {
            CSRF_FIELD: found.group(1),
            "next": "/environments",
            "username": username,
            "password": password,
        }
        status, _ = self.request("POST", "/login", fields)
        if status != 302 or SESSION_COOKIE not in self.cookies:
            raise RuntimeError(f"sign-in: HTTP {status}, no session cookie")

    def close(self) -> None:
        self.connection.close()


def _username(stack: Stack, user_id: str) -> str:
    with stack.sql() as conn:
        row = conn.execute("SELECT username FROM users WHERE id = %s", (user_id,)).fetchone()
    if row is None:
        raise RuntimeError(f"no user {user_id}")
    return str(row[0])


def _page_problem(status: int, page: str) -> str:
    """Why a response is not the first page of a list of ENVIRONMENTS, or ''."""
    rows, signed_in = page.count(ROW_MARK), 'id="current-user"' in page
    if status != 200:
        return f"HTTP {status}"
    if rows != min(PAGE_SIZE, ENVIRONMENTS) or not signed_in:
        return f"{rows} rows, signed in: {signed_in}"
    if (ENVIRONMENTS > PAGE_SIZE) != (">Next page</a>" in page):
        return "next-page link wrong"
    return ""


def environments_page(
    stack: Stack, web: WebProcess, owner_id: str, insert: Callable[[str, int], None],
    requests: int,
) -> tuple[list[Row], list[str]]:  # fmt: skip
    """``requests`` sequential GETs of /environments by a signed-in user with
    ENVIRONMENTS environments (inserted with SQL), after a warm-up."""
    insert(owner_id, ENVIRONMENTS)
    session = Session(web.addr)
    session.sign_in(_username(stack, owner_id), USER_PASSWORD)
    problems: list[str] = []
    for _ in range(WARM_UP_REQUESTS):  # the web process's gRPC channel, caches
        session.request("GET", "/environments")
    times: list[float] = []
    cpu_before = cpu_seconds(web.process.pid), cpu_seconds(stack.api_pid)
    started = time.perf_counter()
    for _ in range(requests):
        sent = time.perf_counter()
        status, page = session.request("GET", "/environments")
        times.append(time.perf_counter() - sent)
        if problem := _page_problem(status, page):
            problems.append(problem)
    wall = time.perf_counter() - started
    web_cpu = cpu_seconds(web.process.pid) - cpu_before[0]
    api_cpu = cpu_seconds(stack.api_pid) - cpu_before[1]
    floor = []  # what the client and loopback add: a page with no gRPC call or template
    for _ in range(FLOOR_REQUESTS):
        sent = time.perf_counter()
        session.request("GET", "/healthz")
        floor.append(time.perf_counter() - sent)
    session.close()
    p99 = percentile(times, 99)
    rows = [
        Row(f"web UI: environments page, user with {ENVIRONMENTS} environments (first page of"
            f" {PAGE_SIZE}), server time p50 / p99 (ms)",
            f"{ms(percentile(times, 50))} / {ms(p99)}", "p99 ≤ 50", p99 <= 0.050 and not problems),
    ]  # fmt: skip
    notes = [
        f"environments page: {requests} sequential GETs on one keep-alive connection after"
        f" {WARM_UP_REQUESTS} unmeasured; {requests - len(problems)} of them HTTP 200 with"
        f" {min(PAGE_SIZE, ENVIRONMENTS)} rows and a next-page link"
        + (f" (first problem: {problems[0]})" if problems else "")
        + f"; per page the web process used {1000 * web_cpu / requests:.1f} ms of CPU, the"
        f" control plane {1000 * api_cpu / requests:.1f} ms ({requests / wall:.0f} pages/s);"
        f" GET /healthz on the same connection (client + loopback + aiohttp, no gRPC call),"
        f" p50 {ms(percentile(floor, 50))} ms over {FLOOR_REQUESTS}"
    ]
    return rows, notes


def _clock_offset(chrome: WebDriver) -> tuple[float, float]:
    """The browser's ``performance.timeOrigin + now()`` minus this process's
    ``time.time()`` (seconds), and half the round trip that bounds its error."""
    before = time.time()
    browser_ms: Any = chrome.execute_script("return performance.timeOrigin + performance.now()")
    after = time.time()
    return float(browser_ms) / 1000 - (before + after) / 2, (after - before) / 2


def _watch_in_browser(
    web: WebProcess, username: str, job_id: str, open_gate: Callable[[], None], total: int
) -> tuple[list[tuple[int, float, float]], dict[str, Any]]:
    """Opens the job's live page, then lets the job print; each stand-in line's index,
    print time and the time its element appeared in the DOM, and how the page ended."""
    chrome = browser.start_browser()
    try:
        browser.sign_in(chrome, web.url, username, USER_PASSWORD)
        chrome.get(f"{web.url}/jobs/{job_id}")
        chrome.execute_script(OBSERVER)
        loaded: Any = chrome.execute_script(PAGE_STATE)
        # "live": the page's EventSource is open. The agent's own "started" lines come
        # before the stand-in waits at its gate: once one is shown, WatchJob is running.
        browser.wait_for(chrome, lambda c: c.execute_script(PAGE_STATE)[3] == "live")
        with suppress(TimeoutException):
            browser.wait_for(chrome, lambda c: c.execute_script(PAGE_STATE)[4] > 0, 30)
        offset = _clock_offset(chrome)
        open_gate()
        deadline = time.monotonic() + total / LOG_PACE + 90
        state: Any = loaded
        while time.monotonic() < deadline:
            state = chrome.execute_script(PAGE_STATE)
            if state[1] in ("ended", "failed"):
                break
            time.sleep(0.5)
        seen: Any = chrome.execute_script("return window.darbBench")
        offset_after = _clock_offset(chrome)
    finally:
        chrome.quit()
    lines = []
    for text, appeared in seen:
        if (parsed := standin.parse(text)) is not None:
            lines.append((parsed[0], parsed[1], appeared / 1000))
    info = {"status at load": loaded[2], "stream": state[1], "status": state[2],
            "offset": offset, "offset after": offset_after}  # fmt: skip
    return lines, info


async def log_to_dom(stack: Stack, token: str, username: str, web: WebProcess, total: int
                     ) -> tuple[list[Row], list[str]]:  # fmt: skip
    """A job printing ``total`` lines at LOG_PACE lines/s, watched on its live page."""
    client = AioClient(stack.api.addr, token)
    gate = uuid.uuid4().hex
    specs = [f"lines-{total}", f"pace-{LOG_PACE}", f"gate-{gate}"]
    request = environments_pb2.CreateEnvironmentRequest(name="web-latency", packages=specs)
    response = await client.envs.CreateEnvironment(request, metadata=client.metadata, timeout=30)
    await client.close()
    job_id = response.job.id

    def open_gate() -> None:
        (stack.scratch / "gates" / gate).touch()

    lines, info = await asyncio.to_thread(_watch_in_browser, web, username, job_id, open_gate,
                                          total)  # fmt: skip
    lags = [appeared - printed for _, printed, appeared in lines]
    indices = sorted(index for index, _, _ in lines)
    complete = (
        indices == list(range(total))
        and info["stream"] == "ended"
        and info["status"] == "completed"
        and info["status at load"] in ("pending", "running")
    )
    p99 = percentile(lags, 99)
    rows = [
        Row(f"web UI: log line printed → in the live job page's DOM (Chromium), p50 / p99 (ms),"
            f" {LOG_PACE} lines/s", f"{ms(percentile(lags, 50))} / {ms(p99)}", "p99 ≤ 150",
            complete and p99 <= 0.150),
    ]  # fmt: skip
    offset, bound = info["offset"]
    drift = info["offset after"][0] - offset
    notes = [
        f"log → DOM: {len(set(indices)):,} of {total:,} lines shown"
        f" ({len(indices) - len(set(indices))} twice), job {info['status at load']} when the"
        f" page loaded, {info['status']} at the end, event stream {info['stream'] or 'open'};"
        f" max {ms(max(lags, default=float('nan')))} ms. Browser clock (timeOrigin + now) -"
        f" time.time(): {1000 * offset:+.1f} ms (± {1000 * bound:.1f}) before the first line,"
        f" {1000 * drift:+.1f} ms drift by the end"
    ]
    return rows, notes


async def figures(
    stack: Stack, insert: Callable[[str, int], None], requests: int, lines: int
) -> tuple[list[Row], list[str]]:
    """Both rows, against one web process started the way ``make run`` starts it.
    ``insert(owner_id, count)`` writes an owner's environments into the database."""
    web = start_web(stack.api.addr, stack.scratch / "web.log")
    try:
        (page_owner, _), (log_owner, token) = stack.new_users(2)
        rows, notes = await asyncio.to_thread(
            environments_page, stack, web, page_owner, insert, requests
        )
        username = _username(stack, log_owner)
        more_rows, more_notes = await log_to_dom(stack, token, username, web, lines)
    finally:
        web.stop()
    return rows + more_rows, notes + more_notes
