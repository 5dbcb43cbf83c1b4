"""The real OpenHands web frontend (Dec 2024 build) runs a session end to end against the daemon.

The build is ``../shared/clients/openhands-frontend-0dde1602c2/build`` next to the checkout,
served by the daemon itself (``web_client``), driven in Debian's headless Chromium through
Playwright (``executable_path``, as in ``test_console_browser.py``). Every request that
leaves 127.0.0.1 (the client's analytics, its Monaco CDN) is aborted at once: this machine
has no network, and those are the only failures allowed, with the locale the client asks
for first (``en-US``, which the build does not ship). Assertions are on frames and page text.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from .daemon_harness import DaemonProcess, wait_for
from .test_console_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, expect, sync_api

BUILD = Path(__file__).resolve().parents[2] / "shared/clients/openhands-frontend-0dde1602c2/build"
PROBE_KEY = "sk-probe-" + secrets.token_hex(12)
# Seeded once per browser context: settings up to date (no settings modal), analytics
# declined (no consent modal), and the probe API key that INIT carries in its args.
SEED = "".join(
    [
        "if (!localStorage.getItem('SETTINGS_VERSION')) {",
        "localStorage.setItem('SETTINGS_VERSION', '3'); localStorage.setItem('analytics-consent', 'false');",
        "localStorage.setItem('LLM_MODEL', 'openai/gpt-4o'); localStorage.setItem('AGENT', 'CodeActAgent');",
        f"localStorage.setItem('LANGUAGE', 'en'); localStorage.setItem('LLM_API_KEY', '{PROBE_KEY}');",
        "}",
    ]
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (BUILD / "index.html").is_file():
        pytest.skip(f"the OpenHands frontend build is not at {BUILD} (a checkout without ../shared)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (tests/install-browser.sh installs Debian's chromium)")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Watch:
    """One browser context (its tabs share localStorage) and what its pages did on the wire."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        self.context.set_default_timeout(TIMEOUT_MS)
        self.context.add_init_script(SEED)
        self.context.route("**/*", self._offline)
        self.sockets = 0
        self.frames: list[dict[str, Any]] = []  # every oh_event received, all tabs
        self.sent: list[dict[str, Any]] = []  # every oh_action sent
        self.http_errors: list[str] = []
        self.page_errors: list[str] = []

    @staticmethod
    def _offline(route: Any) -> None:
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:  # analytics, the Monaco CDN: unreachable here, refused at once
            route.abort("internetdisconnected")

    def open(self, url: str) -> Any:
        page = self.context.new_page()
        page.on("websocket", self._on_socket)
        page.on("response", self._on_response)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.goto(url)
        return page

    def _on_socket(self, ws: Any) -> None:
        self.sockets += 1
        ws.on("framereceived", lambda payload: self._frame(payload, self.frames))
        ws.on("framesent", lambda payload: self._frame(payload, self.sent))

    @staticmethod
    def _frame(payload: Any, into: list[dict[str, Any]]) -> None:
        text = payload if isinstance(payload, str) else payload.decode(errors="replace")
        if text.startswith("42"):
            name, data = json.loads(text[2:])[:2]
            if name in ("oh_event", "oh_action"):
                into.append(data)

    def _on_response(self, response: Any) -> None:
        url = urlparse(response.url)
        if response.status >= 400 and not (response.status == 404 and url.path.startswith("/locales/")):
            self.http_errors.append(f"{response.status} {response.request.method} {url.path}")


def terminal(page: Any) -> Any:
    return page.locator(".xterm-rows")


def type_command(page: Any, command: str) -> None:
    page.locator(".xterm-helper-textarea").focus()
    page.keyboard.type(command)
    page.keyboard.press("Enter")


def test_openhands_frontend_runs_a_session_end_to_end(browser: Any, daemon_factory: Any) -> None:
    began = time.monotonic()
    d: DaemonProcess = daemon_factory(runtime="local", web_client=str(BUILD), close_delay=2.0)
    w = Watch(browser)
    loads = 0

    # A new user: open the app, submit a task.
    a = w.open(d.url + "/")
    loads += 1
    a.locator("textarea").first.fill("Make a file and show it")
    a.keyboard.press("Enter")
    a.wait_for_url("**/app")
    expect(a.get_by_text("Make a file and show it")).to_be_visible()
    expect(a.get_by_text("Agent is awaiting user input")).to_be_visible()
    answer = next(f for f in w.frames if f.get("status") == "ok")
    token, session_id = answer["token"], answer["session_id"]
    # The client stored the token (its handler saw a token frame last in its batch).
    wait_for(lambda: a.evaluate("localStorage.getItem('token')") == token, what="token stored")

    # Terminal commands and their output, rendered as a terminal would (no staircase).
    type_command(a, "echo made-by-cmd > created.txt && echo first-done")
    expect(terminal(a)).to_contain_text("first-done")
    type_command(a, "printf 'line-%s\\n' a b")
    expect(terminal(a)).to_contain_text("line-b")
    rows = [r.replace("\xa0", " ").rstrip() for r in terminal(a).inner_text().splitlines()]
    assert "line-a" in rows and "line-b" in rows, rows  # each line starts at column 0: no staircase
    # The file explorer shows the file the command created.
    expect(a.get_by_test_id("file-explorer").get_by_text("created.txt")).to_be_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    a.screenshot(path=str(ARTIFACTS / "openhands-frontend.png"))  # docs/openhands-frontend.png

    # A second tab sees the first tab's history, and then its new commands.
    b = w.open(d.url + "/app")
    loads += 1
    expect(terminal(b)).to_contain_text("first-done")
    expect(b.get_by_text("Make a file and show it")).to_be_visible()
    type_command(a, "echo from-tab-a")
    expect(terminal(b)).to_contain_text("from-tab-a")
    inits = [f for f in w.sent if f.get("action") == "initialize"]
    assert inits[-1].get("token") == token  # tab B joined with the stored token...
    assert all(f["token"] == token for f in w.frames if f.get("status") == "ok")  # ...and kept it

    # A reload restores the history and the status bar.
    a.reload()
    loads += 1
    expect(terminal(a)).to_contain_text("from-tab-a")
    expect(terminal(a)).to_contain_text("first-done")
    expect(a.get_by_text("Agent is awaiting user input")).to_be_visible()

    # All tabs close; after close_delay the session passivates; reopening rehydrates it.
    a.close()
    b.close()
    wait_for(
        lambda: d.http("GET", f"/api/sessions/{session_id}", token=token)[1].get("state") == "passivated",
        timeout=60,
        what="the session to passivate",
    )
    c = w.open(d.url + "/app")
    loads += 1
    expect(terminal(c)).to_contain_text("first-done")  # history replayed
    expect(c.get_by_text("Agent is initialized, waiting for task")).to_be_visible()  # a new runtime
    type_command(c, "cat created.txt; echo rehydrated-ok")
    expect(terminal(c)).to_contain_text("rehydrated-ok")
    expect(terminal(c)).to_contain_text("made-by-cmd")
    expect(c.get_by_text("Agent is awaiting user input")).to_be_visible()
    c.close()
    w.context.close()

    # Bounded connections, no error frame, no HTTP error, no page error.
    assert w.sockets <= 2 * loads, f"{w.sockets} websockets for {loads} page loads"
    assert not [f for f in w.frames if "error" in f], [f for f in w.frames if "error" in f]
    assert not w.http_errors, w.http_errors
    assert not w.page_errors, w.page_errors
    # The probe API key from INIT args is nowhere under the data dir, nor in the log.
    leaks = [p for p in d.data_dir.rglob("*") if p.is_file() and PROBE_KEY.encode() in p.read_bytes()]
    assert not leaks, leaks
    assert PROBE_KEY.encode() not in d.log_path.read_bytes()
    assert any(f.get("args", {}).get("LLM_API_KEY") == PROBE_KEY for f in inits)  # it was sent
    print(f"openhands frontend scenario: {time.monotonic() - began:.1f} s")
