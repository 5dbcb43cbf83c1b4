"""The web console (``sessionactors/static/``) in headless Chromium, against a real daemon.

Debian's ``chromium`` is driven by Playwright for Python with ``executable_path`` (never
``playwright install``); ``tests/install-browser.sh`` installs both when missing. The
tests skip only when one of them is not there. Screenshots go to ``test-artifacts/``.
No sleeps: every wait is a Playwright expectation or ``wait_for_function`` with a timeout.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .daemon_harness import DaemonProcess

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (tests/install-browser.sh installs it)"
)
expect = sync_api.expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
WIDE = {"width": 1280, "height": 800}
TIMEOUT_MS = 15_000

expect.set_options(timeout=TIMEOUT_MS)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (tests/install-browser.sh installs Debian's chromium)")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Pages:
    """A browser context (one origin's localStorage, shared by its tabs) and its pages."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport=WIDE)
        self.context.set_default_timeout(TIMEOUT_MS)
        self.problems: list[str] = []

    def open(self, url: str) -> Any:
        page = self.context.new_page()
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("console", self._on_console)
        page.goto(url)
        expect(page.get_by_test_id("conn-status")).to_have_attribute("data-state", "connected")
        return page

    def _on_console(self, msg: Any) -> None:
        # Connection failures while a daemon is down are expected; script errors and
        # CSP violations (an inline script or style, a foreign origin) are not.
        if msg.type == "error" and ("Content Security Policy" in msg.text or "Uncaught" in msg.text):
            self.problems.append(f"console: {msg.text}")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def pages(browser: Any) -> Iterator[Pages]:
    p = Pages(browser)
    try:
        yield p
    finally:
        p.close()
    assert not p.problems, p.problems


# ---------------------------------------------------------------------------- helpers
def screenshot(page: Any, name: str, full_page: bool = False) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    return path


def start_session(page: Any) -> str:
    page.get_by_role("button", name="New session").click()
    expect(page.get_by_test_id("session-status")).to_have_attribute("data-state", "live")
    session_id = page.get_by_test_id("session-id").inner_text()
    assert re.fullmatch(r"[0-9a-f]{8,64}", session_id), session_id
    return str(session_id)


def command_block(page: Any, command: str) -> Any:
    text = page.get_by_test_id("cmd-text").filter(has_text=re.compile("^" + re.escape(command) + "$"))
    return page.get_by_test_id("cmd-block").filter(has=text)


def run(page: Any, command: str, exit_code: int = 0) -> Any:
    """Type a command, press Enter, and wait for its final observation."""
    box = page.get_by_label("Command", exact=True)
    box.fill(command)
    box.press("Enter")
    expect(box).to_have_value("")
    block = command_block(page, command).last
    expect(block).to_have_attribute("data-done", "true")
    expect(block).to_have_attribute("data-exit-code", str(exit_code))
    expect(block.get_by_test_id("cmd-exit")).to_have_text(f"exit {exit_code}")
    return block


def rendered_ids(page: Any) -> list[int]:
    return [
        int(i)
        for i in page.eval_on_selector_all(
            "#events [data-event-id]", "els => els.map(e => e.dataset.eventId)"
        )
    ]


def expect_ids(page: Any, last: int) -> None:
    """The event list shows exactly the ids 0..last, each once, in order."""
    expect(page.locator("#events [data-event-id]")).to_have_count(last + 1)
    ids = rendered_ids(page)
    assert ids == list(range(last + 1)), ids
    assert page.evaluate("window.sessionConsole.eventIds().length") == last + 1


def stored_sessions(page: Any) -> list[dict[str, Any]]:
    raw = page.evaluate("window.localStorage.getItem('sessionactors.sessions')")
    return list(json.loads(raw or "[]"))


# ---------------------------------------------------------------------------- tests
def test_console_runs_commands_and_tabs_share_the_session(daemon: DaemonProcess, pages: Pages) -> None:
    tab1 = pages.open(daemon.url)
    expect(tab1).to_have_title("sessionactors console")
    expect(tab1.get_by_test_id("session-status")).to_have_attribute("data-state", "none")
    expect(tab1.get_by_test_id("session-open")).to_have_count(0)

    session_id = start_session(tab1)
    assert tab1.url.endswith(f"#session={session_id}")
    run(tab1, "echo hello")
    expect(command_block(tab1, "echo hello").get_by_test_id("cmd-output")).to_have_text("echo hello\n")
    block = run(tab1, "fail", exit_code=1)  # the echo runtime's failing command
    expect(block).to_have_class(re.compile(r"\bfailed\b"))
    expect_ids(tab1, 3)
    expect(tab1.get_by_test_id("event").first).to_contain_text("#0")
    expect(tab1.get_by_test_id("event").first).to_contain_text("user")

    # the token is kept in localStorage; the list shows the session
    tab1.wait_for_function(
        "id => (JSON.parse(localStorage.getItem('sessionactors.sessions')) || [])"
        ".some(s => s.session_id === id && s.last_event_id === 3)",
        arg=session_id,
        timeout=TIMEOUT_MS,
    )
    (entry,) = stored_sessions(tab1)
    assert entry["session_id"] == session_id and entry["token"]

    # a second tab of the same browser sees the session in "your sessions" and its history
    tab2 = pages.open(daemon.url)
    expect(tab2.get_by_test_id("session-open")).to_have_count(1)
    tab2.get_by_test_id("session-open").click()
    expect(tab2.get_by_test_id("session-status")).to_have_attribute("data-state", "live")
    expect(tab2.get_by_test_id("session-id")).to_have_text(session_id)
    expect_ids(tab2, 3)
    expect(command_block(tab2, "echo hello").get_by_test_id("cmd-output")).to_have_text("echo hello\n")
    expect(command_block(tab2, "fail")).to_have_attribute("data-exit-code", "1")

    # a message from the second tab reaches the first (keyboard: Enter sends)
    message = tab2.get_by_label("Message", exact=True)
    message.fill("hello from tab two")
    message.press("Enter")
    expect(message).to_have_value("")
    for tab in (tab1, tab2):
        expect(tab.get_by_test_id("message")).to_have_count(1)
        expect(tab.get_by_test_id("message")).to_contain_text("hello from tab two")
        expect_ids(tab, 4)

    # a command from the second tab streams into both
    run(tab2, "echo from two")
    expect(command_block(tab1, "echo from two")).to_have_attribute("data-done", "true")
    expect_ids(tab1, 6)

    # Tab order: command input -> Run -> message box -> Send
    tab1.get_by_label("Command", exact=True).focus()
    for target in ("command-run", "message-input", "message-send"):
        tab1.keyboard.press("Tab")
        expect(tab1.get_by_test_id(target)).to_be_focused()

    screenshot(tab1, "console-echo-1280.png")

    # narrow screen: one column, nothing wider than the viewport, the command box usable
    tab1.set_viewport_size({"width": 400, "height": 800})
    tab1.wait_for_function("document.documentElement.scrollWidth <= 400", timeout=TIMEOUT_MS)
    box = tab1.get_by_label("Command", exact=True).bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 400, box
    run(tab1, "echo narrow")
    screenshot(tab1, "console-echo-400.png", full_page=True)


def record_inits(page: Any) -> list[dict[str, Any]]:
    """Every INIT the page sends, over the websocket or a polling POST."""
    sent: list[dict[str, Any]] = []

    def parse(data: Any) -> None:
        text = data if isinstance(data, str) else (data or b"").decode(errors="replace")
        for packet in text.split("\x1e"):  # engine.io polling batches packets with a record separator
            if packet.startswith('42["oh_action",') and '"initialize"' in packet:
                sent.append(json.loads(packet[2:])[1])

    page.on("websocket", lambda ws: ws.on("framesent", parse))
    page.on("request", lambda req: "/socket.io/" in req.url and req.method == "POST" and parse(req.post_data))
    return sent


def test_console_resumes_after_daemon_restart_without_duplicates(daemon_factory: Any, pages: Pages) -> None:
    first = daemon_factory(close_delay=1.0)
    tab1 = pages.open(first.url)
    inits = record_inits(tab1)
    session_id = start_session(tab1)
    run(tab1, "echo one")
    run(tab1, "echo two")
    expect_ids(tab1, 3)
    tab2 = pages.open(f"{first.url}/#session={session_id}")  # opened from the address bar
    expect(tab2.get_by_test_id("session-status")).to_have_attribute("data-state", "live")
    expect_ids(tab2, 3)

    assert first.stop() == []
    for tab in (tab1, tab2):
        expect(tab.get_by_test_id("conn-status")).to_have_attribute(
            "data-state", re.compile("disconnected|reconnecting")
        )
        expect(tab.get_by_test_id("session-status")).to_have_attribute("data-state", "reconnecting")
    # a command typed while the daemon is down waits for the session to be live again
    tab1.get_by_label("Command", exact=True).fill("echo typed while down")
    tab1.get_by_label("Command", exact=True).press("Enter")
    expect(tab1.get_by_test_id("session-detail")).to_contain_text("1 queued")
    sent_before_restart = len(inits)

    second = daemon_factory(port=first.port, data_dir=first.data_dir, close_delay=1.0)
    assert second.url == first.url
    for tab in (tab1, tab2):
        expect(tab.get_by_test_id("conn-status")).to_have_attribute("data-state", "connected")
        expect(tab.get_by_test_id("session-status")).to_have_attribute("data-state", "live")
        expect(tab.get_by_test_id("session-id")).to_have_text(session_id)
        expect(command_block(tab, "echo typed while down")).to_have_attribute("data-done", "true")
        expect_ids(tab, 5)
        for command in ("echo one", "echo two", "echo typed while down"):
            expect(command_block(tab, command)).to_have_count(1)
    # the re-INIT carried the token and the highest id the tab held (the server replays the rest)
    resumed = inits[sent_before_restart:]
    assert resumed and resumed[0]["token"] and resumed[0]["latest_event_id"] == 3, resumed
    logs = [tab.evaluate("window.sessionConsole.statusLog()") for tab in (tab1, tab2)]
    assert any("rehydrating" in log for log in logs), logs  # the restarted daemon rehydrated it

    run(tab2, "echo three")
    for tab in (tab1, tab2):
        expect(command_block(tab, "echo three")).to_have_attribute("data-done", "true")
        expect_ids(tab, 7)
        expect(tab.get_by_test_id("cmd-block")).to_have_count(4)
    tab1.wait_for_function(
        "() => JSON.parse(localStorage.getItem('sessionactors.sessions'))[0].last_event_id === 7",
        timeout=TIMEOUT_MS,
    )
    screenshot(tab1, "console-after-restart.png")


def test_console_shows_errors_and_never_renders_event_html(daemon: DaemonProcess, pages: Pages) -> None:
    tab = pages.open(daemon.url)
    # a command typed with no session open is refused by the page itself
    tab.get_by_label("Command", exact=True).fill("echo nowhere")
    tab.get_by_label("Command", exact=True).press("Enter")
    expect(tab.get_by_role("alert")).to_contain_text("Start or open a session first")
    tab.get_by_role("button", name="Dismiss").click()
    expect(tab.get_by_test_id("alert")).to_have_count(0)

    # a forged token in localStorage: the server's 401 is shown in the alert region
    tab.evaluate(
        "localStorage.setItem('sessionactors.sessions', JSON.stringify("
        "[{session_id: 'deadbeef', token: 'forged.token.value', last_event_id: -1}]))"
    )
    tab.reload()
    expect(tab.get_by_test_id("conn-status")).to_have_attribute("data-state", "connected")
    tab.get_by_test_id("session-open").click()
    expect(tab.get_by_role("alert")).to_contain_text("Invalid token")
    expect(tab.get_by_role("alert")).to_contain_text("401")
    expect(tab.get_by_test_id("session-status")).to_have_attribute("data-state", "refused")
    expect(tab.get_by_label("Command", exact=True)).to_be_disabled()  # nothing can be sent
    tab.get_by_test_id("session-open").click()  # asking again re-sends the INIT: refused again
    expect(tab.get_by_test_id("alert")).to_have_count(2)
    expect(tab.get_by_test_id("alert").last).to_contain_text("Invalid token")
    tab.get_by_role("button", name=re.compile("Forget session deadbeef")).click()
    expect(tab.get_by_test_id("session-open")).to_have_count(0)

    # event text is shown as text, never interpreted as HTML
    start_session(tab)
    payload = "<img src=x data-testid=injected>"
    run(tab, payload)
    expect(command_block(tab, payload).get_by_test_id("cmd-output")).to_have_text(payload + "\n")
    expect(tab.locator("[data-testid=injected]")).to_have_count(0)


def test_console_streams_partial_output_of_the_local_runtime(daemon_factory: Any, pages: Pages) -> None:
    runtime = (
        "local" if (Path(__file__).parent.parent / "sessionactors/runtimes/local.py").exists() else "echo"
    )
    proc = daemon_factory(runtime=runtime, close_delay=1.0)
    tab = pages.open(proc.url)
    start_session(tab)
    if runtime == "echo":
        pytest.skip("the local runtime is not available")
    run(tab, "cd /tmp && pwd")
    expect(command_block(tab, "cd /tmp && pwd").get_by_test_id("cmd-output")).to_have_text("/tmp\n")
    streamed = "for i in 1 2 3; do echo line $i; sleep 0.4; done"
    block = run(tab, streamed)
    expect(block.get_by_test_id("cmd-output")).to_have_text("line 1\nline 2\nline 3\n")
    assert int(block.get_attribute("data-partials")) >= 1  # streamed, then the final observation
    expect(tab.get_by_test_id("event").filter(has_text="output (partial)")).not_to_have_count(0)
    run(tab, "ls /nonexistent-dir", exit_code=2)
    tab.get_by_label("Message", exact=True).fill("streaming works")
    tab.get_by_label("Message", exact=True).press("Enter")
    expect(tab.get_by_test_id("message")).to_contain_text("streaming works")
    ids = rendered_ids(tab)
    assert ids == list(range(len(ids))), ids
    expect(tab.get_by_test_id("session-open")).to_contain_text(
        f"{len(ids)} events"
    )  # "your sessions" follows
    tab.get_by_label("Command", exact=True).focus()
    screenshot(tab, "console-local-1280.png")  # docs/console.png is a copy of a good one


def test_console_shows_a_runtime_that_cannot_start(daemon_factory: Any, pages: Pages) -> None:
    proc = daemon_factory(runtime_options={"fail_start": True}, close_delay=1.0)
    tab = pages.open(proc.url)
    tab.get_by_role("button", name="New session").click()
    expect(tab.get_by_test_id("session-status")).to_have_attribute("data-state", "failed")
    expect(tab.get_by_role("alert")).to_contain_text("Error 503")
    expect(tab.get_by_role("alert")).to_contain_text("fail at start")
    assert "starting" in tab.evaluate("window.sessionConsole.statusLog()")
    # a runtime that cannot start is not retried (a 503 "server not ready" would be); the
    # handler that shows the alert is the one that would have counted a retry
    assert tab.evaluate("window.sessionConsole.initRetries()") == 0
    expect(tab.get_by_test_id("alert")).to_have_count(2)  # the error status, then the 503
    expect(tab.get_by_test_id("session-status")).to_have_attribute("data-state", "failed")
    expect(tab.get_by_label("Command", exact=True)).to_be_disabled()
    expect(tab.get_by_test_id("cmd-block")).to_have_count(0)


def admin_token(daemon: DaemonProcess) -> str:
    return (daemon.data_dir / "run" / "admin.token").read_text().strip()


def test_console_says_a_session_was_deleted_or_revoked_and_disables_input(
    daemon: DaemonProcess, pages: Pages
) -> None:
    tab = pages.open(daemon.url)
    session_id = start_session(tab)
    run(tab, "echo before")
    status, _ = daemon.http("DELETE", f"/api/admin/sessions/{session_id}", token=admin_token(daemon))
    assert status == 200
    expect(tab.get_by_test_id("session-status")).to_have_attribute("data-state", "deleted")
    expect(tab.get_by_test_id("session-status")).to_have_text("deleted")
    expect(tab.get_by_role("alert")).to_contain_text("This session was deleted")
    expect(tab.get_by_label("Command", exact=True)).to_be_disabled()
    expect(tab.get_by_label("Message", exact=True)).to_be_disabled()
    screenshot(tab, "console-deleted.png")
    tab.reload()  # the 401 that follows still says what happened
    expect(tab.get_by_test_id("session-status")).to_have_attribute("data-state", "refused")
    expect(tab.get_by_test_id("alert").last).to_contain_text("This session was deleted")
    expect(tab.get_by_label("Command", exact=True)).to_be_disabled()

    tab.get_by_role("button", name=re.compile(f"Forget session {session_id}")).click()
    second = start_session(tab)
    token = stored_sessions(tab)[0]["token"]
    status, _ = daemon.http("POST", f"/api/sessions/{second}/revoke", token=token)
    assert status == 200
    expect(tab.get_by_test_id("session-status")).to_have_attribute("data-state", "revoked")
    expect(tab.get_by_role("alert").last).to_contain_text("tokens were revoked")
    expect(tab.get_by_label("Command", exact=True)).to_be_disabled()


def test_console_queued_running_finished_interrupt_and_causes(daemon: DaemonProcess, pages: Pages) -> None:
    tab = pages.open(daemon.url)
    start_session(tab)
    box = tab.get_by_label("Command", exact=True)
    for command in ("sleep 60", "echo after"):
        box.fill(command)
        box.press("Enter")
    sleeping, after = command_block(tab, "sleep 60"), command_block(tab, "echo after")
    expect(sleeping).to_have_attribute("data-state", "running")
    expect(after).to_have_attribute("data-state", "queued")
    expect(after.get_by_test_id("cmd-exit")).to_have_text("queued")
    screenshot(tab, "console-queued.png")
    interrupt = tab.get_by_role("button", name="Interrupt")
    expect(interrupt).to_be_enabled()
    interrupt.click()  # change_agent_state "stopped": the session-layer Ctrl-C
    expect(sleeping).to_have_attribute("data-state", "done")
    expect(sleeping.get_by_test_id("cmd-exit")).to_have_text("exit 130")
    expect(after).to_have_attribute("data-state", "done")
    expect(after.get_by_test_id("cmd-exit")).to_have_text("exit 0")
    expect(interrupt).to_be_disabled()

    # Ctrl-C in the empty command box does the same
    box.fill("sleep 60")
    box.press("Enter")
    again = command_block(tab, "sleep 60").last
    expect(again).to_have_attribute("data-state", "running")
    box.press("Control+c")
    expect(again.get_by_test_id("cmd-exit")).to_have_text("exit 130")

    # an observation links to its action: following the link highlights it
    action_id = again.get_attribute("data-action-id")
    link = tab.locator(f'[data-testid=event-cause][data-cause="{action_id}"]').first
    link.click()
    expect(tab.locator(f'#events [data-event-id="{action_id}"]')).to_have_class(re.compile(r"\bhighlight\b"))


def test_console_shows_a_session_that_failed_while_attached(
    failing_plugin: str, daemon_factory: Any, pages: Pages
) -> None:
    proc = daemon_factory(runtime=failing_plugin, restart_intensity=0)  # the first crash fails it
    tab = pages.open(proc.url)
    start_session(tab)
    box = tab.get_by_label("Command", exact=True)
    box.fill("raise-in-begin")
    box.press("Enter")
    expect(tab.get_by_test_id("session-status")).to_have_attribute("data-state", "failed")
    expect(tab.get_by_role("alert").last).to_contain_text("Session failed repeatedly")
    expect(box).to_be_disabled()
    expect(command_block(tab, "raise-in-begin")).to_have_attribute("data-state", "done")  # its error
