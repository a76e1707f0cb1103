"""The web console in a real headless Chromium, against the coordinator, etcd and agent that
coordinator/tests/console.rs starts. Run by that test; not on its own.

Environment: FERRY_CONSOLE_URL, FERRY_CONSOLE_TOKEN, FERRY_CONSOLE_DATA (source trees),
FERRY_CONSOLE_SHOTS (screenshots), FERRY_CONSOLE_METRICS (a JSON file for page weight and
first paint), FERRY_CONSOLE_WORKER_PGID (the agent's process group, killed by the last test).
"""

import json
import os
import re
import signal
import time

import pytest
from playwright.sync_api import expect, sync_playwright

URL = os.environ["FERRY_CONSOLE_URL"]
TOKEN = os.environ["FERRY_CONSOLE_TOKEN"]
DATA = os.environ["FERRY_CONSOLE_DATA"]
SHOTS = os.environ["FERRY_CONSOLE_SHOTS"]
METRICS = os.environ["FERRY_CONSOLE_METRICS"]

# Generous: a 2-core machine busy with builds is slow; nothing here measures time.
WAIT_MS = 180_000


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    ctx.close()


def shot(pg, name):
    os.makedirs(SHOTS, exist_ok=True)
    pg.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def login(pg):
    pg.goto(f"{URL}/login")
    pg.fill("#token", TOKEN)
    pg.click("button:has-text('Log in')")
    expect(pg).to_have_url(f"{URL}/console/executions")


def record_metrics(pg, url, name):
    """Bytes of the page at `url` and of what it loads, and its first contentful paint, from
    the browser's own performance timing, in a fresh context with `pg`'s session: nothing
    cached."""
    ctx = pg.context.browser.new_context(viewport={"width": 1200, "height": 900})
    ctx.add_cookies(pg.context.cookies())
    fresh = ctx.new_page()
    fresh.goto(url)
    fresh.wait_for_load_state("load")
    # First contentful paint is recorded after the paint, which may follow the load event.
    fcp = fresh.evaluate(
        """() => new Promise(resolve => {
        new PerformanceObserver(list => {
          const e = list.getEntriesByName('first-contentful-paint')[0];
          if (e) resolve(Math.round(e.startTime));
        }).observe({type: 'paint', buffered: true});
        setTimeout(() => resolve(null), 10000);
    })"""
    )
    m = fresh.evaluate(
        """() => {
        const nav = performance.getEntriesByType('navigation')[0];
        const res = performance.getEntriesByType('resource').filter(r => ['link', 'script', 'css'].includes(r.initiatorType));
        return {
          html_bytes: nav.encodedBodySize,
          asset_bytes_on_wire: res.reduce((a, r) => a + r.encodedBodySize, 0),
          asset_bytes_decoded: res.reduce((a, r) => a + r.decodedBodySize, 0),
          assets: res.map(r => r.name.replace(location.origin, '') + ' ' + r.encodedBodySize),
        };
    }"""
    )
    ctx.close()
    m["first_contentful_paint_ms"] = fcp
    m["total_bytes_on_wire"] = m["html_bytes"] + m["asset_bytes_on_wire"]
    data = {}
    if os.path.exists(METRICS):
        with open(METRICS) as f:
            data = json.load(f)
    data[name] = m
    with open(METRICS, "w") as f:
        json.dump(data, f, indent=1)
    print(f"console metrics {name}: {json.dumps(m)}")


def create_task(pg, name, source, destination, bytes_per_second="", report=""):
    pg.goto(f"{URL}/console/tasks/new")
    pg.fill("#Name", name)
    pg.fill("#SourceLocation", source)
    pg.fill("#DestinationLocation", destination)
    pg.fill("#Options-BytesPerSecond", bytes_per_second)
    pg.fill("#TaskReportConfig-Destination", report)
    pg.click("button:has-text('Create task')")


def start_task(pg, name):
    pg.goto(f"{URL}/console/tasks/{name}")
    pg.click("#start")
    expect(pg).to_have_url(re.compile(rf"{re.escape(URL)}/console/executions/exec-[0-9a-f]+$"))


# 1. Log in; a page without a session goes to the login.
def test_login_refuses_a_wrong_token_and_a_page_without_a_session_goes_to_the_login(page):
    page.goto(f"{URL}/console/tasks")
    expect(page).to_have_url(f"{URL}/login")
    page.fill("#token", "not-the-token-not-the-token")
    page.click("button:has-text('Log in')")
    expect(page.locator("p.error")).to_contain_text("not accepted")
    expect(page).to_have_url(f"{URL}/login")
    shot(page, "01-login-refused")
    page.fill("#token", TOKEN)
    page.click("button:has-text('Log in')")
    expect(page).to_have_url(f"{URL}/console/executions")
    expect(page.locator("h1")).to_have_text("Executions")
    cookie = [c for c in page.context.cookies() if c["name"] == "ferry_session"][0]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    assert TOKEN not in cookie["value"], "the cookie holds a session id, not the token"
    shot(page, "01-logged-in")
    page.click("button:has-text('Log out')")
    expect(page).to_have_url(f"{URL}/login")
    page.goto(f"{URL}/console/agents")
    expect(page).to_have_url(f"{URL}/login")


# 2. A validation error shows on its field; fixed, the task starts and its progress updates live.
def test_a_task_error_shows_on_its_field_and_a_started_task_progresses_live_to_success(page):
    login(page)
    create_task(page, "copy-ok", "relative/src", f"{DATA}/dst-ok", "262144")
    err = page.locator("#SourceLocation-error")
    expect(err).to_contain_text("SourceLocation")
    expect(page.locator("#SourceLocation")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#Name")).to_have_value("copy-ok")
    expect(page.locator("#DestinationLocation-error")).to_have_count(0)
    shot(page, "02-field-error")
    page.fill("#SourceLocation", f"{DATA}/src-ok")
    page.click("button:has-text('Create task')")
    expect(page).to_have_url(f"{URL}/console/tasks/copy-ok")
    start_task(page, "copy-ok")
    # A marker that a reload would lose: the page must reach SUCCESS without one.
    page.evaluate("window.__ferry_no_reload = true")
    first = page.locator("#status").inner_text()
    assert first != "SUCCESS", f"the execution had already ended when its page loaded ({first}): nothing live to watch"
    expect(page.locator("#status")).to_have_text("SUCCESS", timeout=WAIT_MS)
    assert page.evaluate("window.__ferry_no_reload === true"), "the page was reloaded"
    expect(page.locator("svg.spark")).to_have_count(1)
    expect(page.locator("#counters")).to_contain_text("Files transferred")
    files = page.locator("#counters tr:has-text('Files transferred') td").inner_text()
    assert int(files) >= 16, f"16 files in the source, {files} transferred"
    expect(page.locator("#cancel")).to_have_count(0)
    shot(page, "02-execution-success")


# 3. Cancel a running (throttled) execution.
def test_a_running_execution_is_cancelled_from_its_page(page):
    login(page)
    create_task(page, "slow", f"{DATA}/src-slow", f"{DATA}/dst-slow", "65536")
    expect(page).to_have_url(f"{URL}/console/tasks/slow")
    start_task(page, "slow")
    expect(page.locator("#status")).to_have_text("TRANSFERRING", timeout=WAIT_MS)
    shot(page, "03-running")
    # Page weight and first paint of the two pages a user watches: the list, and a running
    # execution's page (with htmx and its SSE extension).
    record_metrics(page, f"{URL}/console/executions", "executions_list")
    record_metrics(page, page.url, "execution_page_running")
    page.click("#cancel")
    expect(page.locator("#status")).to_have_text("CANCELLED", timeout=WAIT_MS)
    expect(page.locator("#cancel")).to_have_count(0)
    shot(page, "03-cancelled")


# 4. The failed entries of an execution, with their codes.
def test_failed_entries_show_their_error_codes(page):
    login(page)
    create_task(page, "bad", f"{DATA}/src-bad", f"{DATA}/dst-bad", "", f"{DATA}/reports")
    expect(page).to_have_url(f"{URL}/console/tasks/bad")
    start_task(page, "bad")
    expect(page.locator("#status")).to_have_text(re.compile("^(SUCCESS|ERROR)$"), timeout=WAIT_MS)
    page.click("#failures-link")
    # The report is written just after the execution ends; until then the page lists the
    # failures the execution kept, without codes.
    deadline = time.time() + WAIT_MS / 1000
    while True:
        row = page.locator("#failed tr:has-text('bad.bin')")
        expect(row).to_have_count(1)
        code = row.locator("td").nth(2).inner_text()
        if code != "-" or time.time() > deadline:
            break
        time.sleep(1)
        page.reload()
    assert re.fullmatch(r"[A-Z][A-Z_]+", code), f"a stable error code, not {code!r}"
    expect(page.locator("p.note").first).to_contain_text("task report")
    shot(page, "04-failed-entries")


# Editing a task: an error on the edit form lands on its field; a schedule is set, then
# disabled and enabled again; the tasks list and the events page show what happened.
def test_a_tasks_schedule_is_edited_disabled_and_enabled(page):
    login(page)
    page.goto(f"{URL}/console/tasks/copy-ok")
    page.fill("#Schedule-ScheduleExpression", "* * * * *")
    page.click("button:has-text('Save')")
    expect(page.locator("#Schedule-ScheduleExpression-error")).to_contain_text("Schedule.ScheduleExpression")
    shot(page, "05-schedule-error")
    page.fill("#Schedule-ScheduleExpression", "0 2 * * *")
    page.fill("#Schedule-TimeZone", "Europe/Paris")
    page.click("button:has-text('Save')")
    expect(page).to_have_url(f"{URL}/console/tasks/copy-ok?saved=1")
    expect(page.locator("#schedule-status")).to_have_text("ENABLED")
    page.click("#schedule-toggle")
    expect(page.locator("#schedule-status")).to_have_text("DISABLED")
    page.click("#schedule-toggle")
    expect(page.locator("#schedule-status")).to_have_text("ENABLED")
    page.goto(f"{URL}/console/tasks")
    expect(page.locator("tr:has-text('copy-ok')")).to_contain_text("0 2 * * *")
    page.goto(f"{URL}/console/events")
    expect(page.locator("table")).to_contain_text("TaskUpdated")
    expect(page.locator("table")).to_contain_text("ExecutionQueued")
    shot(page, "05-events")


# 6. An agent killed without a goodbye is shown OFFLINE. Last: it kills the only agent.
def test_a_killed_agent_goes_offline(page):
    login(page)
    page.goto(f"{URL}/console/agents")
    agent = page.locator("section.agent").first
    expect(agent.locator(".phase")).to_have_text("ONLINE")
    expect(agent).to_contain_text("Last heartbeat")
    # Its next heartbeat (every 10 s) carries its recent errors: bad.bin's, from test 4.
    deadline = time.time() + WAIT_MS / 1000
    while "bad.bin" not in agent.inner_text():
        assert time.time() < deadline, "the agent's recent errors never showed bad.bin's failure"
        time.sleep(1)
        page.reload()
    expect(agent.locator("table").nth(1)).to_contain_text("bad.bin")
    shot(page, "06-agent-online")
    os.killpg(int(os.environ["FERRY_CONSOLE_WORKER_PGID"]), signal.SIGKILL)
    deadline = time.time() + WAIT_MS / 1000
    while agent.locator(".phase").inner_text() != "OFFLINE":
        assert time.time() < deadline, "the killed agent is still shown ONLINE"
        time.sleep(1)
        page.reload()
    # As last seen: its recent errors stay listed.
    expect(agent).to_contain_text("bad.bin")
    shot(page, "06-agent-offline")
