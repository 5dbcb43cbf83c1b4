"""Every failure of a plugin runtime is answered (issue 17, problem 2).

A runtime whose constructor or ``start()`` raises gets the INIT a 503 and leaves no
"live" session with nobody; one whose ``validate()`` raises gets the sender a 500; one whose
``begin()`` or ``poll()`` raises gets the action an ``error`` observation and is restarted
in place (the next action works), and after ``restart_intensity`` crashes the session is
marked failed, its queued actions answered and its connections told; an
``Activate`` that fails twice (here: a session record removed behind the daemon's back)
answers the INIT with a 503 too. The plugin is tests/data/failing_runtime, registered
through an entry point in a throwaway ``dist-info`` on ``PYTHONPATH``, as a real install
would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sessionactors.config import Config
from sessionactors.store import open_store

from .daemon_harness import Client, DaemonProcess, wait_for


@pytest.fixture
def failing(failing_plugin: str, daemon_factory: Any) -> DaemonProcess:
    """A daemon whose runtime is the failing plugin; close_delay long enough to tell
    "passivated at once" from "passivated after close_delay"."""
    return daemon_factory(runtime=failing_plugin, close_delay=60)  # type: ignore[no-any-return]


def session_state(daemon: DaemonProcess, session_id: str) -> str:
    token = (daemon.data_dir / "run" / "admin.token").read_text().strip()
    status, rows = daemon.http("GET", "/api/admin/sessions", token=token)
    assert status == 200, rows
    return str(next(r["state"] for r in rows if r["session_id"] == session_id))


def only_session(daemon: DaemonProcess) -> str:
    token = (daemon.data_dir / "run" / "admin.token").read_text().strip()
    rows = wait_for(lambda: daemon.http("GET", "/api/admin/sessions", token=token)[1], 10, "a session")
    (row,) = rows
    return str(row["session_id"])


@pytest.mark.parametrize("point", ["init", "start"])
def test_runtime_that_cannot_start_answers_503_and_leaves_no_live_session(
    failing: DaemonProcess, point: str
) -> None:
    c = Client(failing.url)
    try:
        answer = c.init(args={"fail_at": point})
        assert answer["error_code"] == 503, answer
        cls = "AttributeError" if point == "init" else "ValueError"
        assert answer["error"] == f"runtime failed to start: {cls}"
        statuses = [f["id"] for f in c.snapshot() if f.get("status_update")]
        assert "STATUS$ERROR_RUNTIME" in statuses, c.snapshot()
        session_id = only_session(failing)
        # not "live" with nobody until close_delay (60 s): passivated at once
        wait_for(lambda: session_state(failing, session_id) == "passivated", 15, "the session to passivate")
        # the connection and the daemon stay usable: a good INIT works
        assert c.init()["status"] == "ok"
    finally:
        c.close()


@pytest.mark.parametrize("hook", ["begin", "poll"])
def test_runtime_that_raises_on_an_action_answers_it_and_restarts(failing: DaemonProcess, hook: str) -> None:
    c = Client(failing.url)
    try:
        assert c.init()["status"] == "ok"
        c.send({"action": "run", "args": {"command": f"raise-in-{hook}"}})
        error = c.wait(
            lambda fs: next((f for f in fs if f.get("observation") == "error"), None),
            what="error observation",
        )
        (action,) = [e for e in c.events() if e.get("action") == "run"]
        assert error["cause"] == action["id"] and error["content"] == f"runtime error in {hook}: RuntimeError"
        c.wait(
            lambda fs: any(f.get("id") == "STATUS$RUNTIME_RESTARTED" for f in fs), 30, "the runtime's restart"
        )
        c.send({"action": "run", "args": {"command": "after"}})
        ran = c.wait(
            lambda fs: next((f for f in fs if f.get("observation") == "run"), None),
            30,
            "the next action's answer",
        )
        assert ran["content"] == "after\n"
        assert session_state(failing, only_session(failing)) == "live"
    finally:
        c.close()


def test_runtime_that_crashes_too_often_fails_the_session(failing_plugin: str, daemon_factory: Any) -> None:
    daemon = daemon_factory(runtime=failing_plugin, restart_intensity=0)  # the first crash is one too many
    c = Client(daemon.url)
    try:
        token = c.init()["token"]
        c.send({"action": "run", "args": {"command": "raise-in-poll"}})
        c.send({"action": "run", "args": {"command": "queued behind it"}})
        error = c.wait(lambda fs: next((f for f in fs if "error" in f), None), 30, "the failure")
        assert error == {
            "error": "Session failed repeatedly; send initialize again to retry",
            "error_code": 503,
        }
        crashed, queued = [e for e in c.events() if e.get("action") == "run"]
        answers = {e["cause"]: e["content"] for e in c.events() if e.get("observation") == "error"}
        assert answers[crashed["id"]] == "runtime error in poll: RuntimeError"
        assert answers[queued["id"]].startswith("Not run")
        session_id = only_session(daemon)
        wait_for(lambda: session_state(daemon, session_id) == "failed", 15, "the session to be marked failed")
        assert c.init(token=token)["status"] == "ok"  # initialize again retries
    finally:
        c.close()


def test_runtime_whose_validate_raises_answers_the_sender(failing: DaemonProcess) -> None:
    c = Client(failing.url)
    try:
        assert c.init()["status"] == "ok"
        c.send({"action": "run", "args": {"command": "raise-in-validate"}})
        error = c.wait(lambda fs: next((f for f in fs if "error" in f), None), what="the error answer")
        assert error == {"error": "runtime error in validate: KeyError", "error_code": 500}
        assert c.events() == []  # nothing stored
        c.send({"action": "run", "args": {"command": "after"}})
        c.wait(lambda fs: any(f.get("observation") == "run" for f in fs), what="the next action's answer")
    finally:
        c.close()


def test_activate_that_fails_twice_answers_the_init(tmp_path: Path, daemon_factory: Any) -> None:
    daemon = daemon_factory(close_delay=0.5)
    c = Client(daemon.url)
    try:
        token = c.init()["token"]
        session_id = only_session(daemon)
        c.close()
        wait_for(lambda: session_state(daemon, session_id) == "passivated", 15, "passivation")
        store = open_store(Config(data_dir=daemon.data_dir).data_dir)
        try:  # the supervisor still knows the session; its actor finds no record: Activate raises
            store.delete_session(session_id)
        finally:
            store.close()
        c = Client(daemon.url)
        answer = c.init(token=token)
        assert answer == {"error": "The session could not be started; try again later", "error_code": 503}
        assert c.init()["status"] == "ok"  # the daemon goes on
    finally:
        c.close()
