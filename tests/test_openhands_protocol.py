"""What the OpenHands frontend (Dec 2024) sends and expects, driven with python-socketio
against a real daemon: its action args, ``change_agent_state`` interrupting a command, the
agent-state events, xterm-ready output, the stable token, the INIT cap and in-memory secrets."""

from __future__ import annotations

import time
from typing import Any

import pytest

from sessionactors.errors import ActionError
from sessionactors.protocol import parse_action

from .daemon_harness import Client, wait_for


def run(command: str, **extra: Any) -> dict[str, Any]:
    return {"action": "run", "args": {"command": command, **extra}}


def finals(c: Client) -> list[dict[str, Any]]:
    return [e for e in c.events() if e.get("observation") == "run" and not e["extras"].get("partial")]


def states(c: Client) -> list[str]:
    return [e["extras"]["agent_state"] for e in c.events() if e.get("observation") == "agent_state_changed"]


def test_parse_action_accepts_the_clients_args_and_keeps_strict_types() -> None:
    assert parse_action(run("ls", hidden=True))["args"] == {"command": "ls", "hidden": True}
    msg = {
        "action": "message",
        "args": {"content": "hi", "image_urls": [], "timestamp": "2024-12-03T10:00:00Z"},
    }
    assert parse_action(msg)["args"]["image_urls"] == []
    later = {"action": "message", "args": {"content": "hi", "from_a_later_client": {"x": 1}}}
    assert parse_action(later)["args"] == {"content": "hi"}  # accepted, dropped
    assert parse_action({"action": "change_agent_state", "args": {"agent_state": "stopped"}})["args"] == {
        "agent_state": "stopped"
    }
    for bad, why in [
        (run("ls", hidden="yes"), "args.hidden must be a boolean"),
        (run("ls", timeout=True), "args.timeout must be a number"),
        ({"action": "message", "args": {"content": "x", "image_urls": "a.png"}}, "list of strings"),
        ({"action": "message", "args": {"content": "x", "image_urls": [1]}}, "list of strings"),
        ({"action": "change_agent_state", "args": {"agent_state": "finished"}}, "must be one of"),
        ({"action": "change_agent_state", "args": {}}, "needs args.agent_state"),
    ]:
        with pytest.raises(ActionError, match=why):
            parse_action(bad)


def test_change_agent_state_stopped_interrupts_the_running_command(daemon_factory: Any) -> None:
    d = daemon_factory(runtime="local", close_delay=1.0, runtime_options={"timeout": 600})
    c = Client(d.url)
    c.init()
    c.send(run("echo started; sleep 120; echo not-reached"))
    wait_for(lambda: any("started" in e.get("content", "") for e in c.events()), what="command running")
    began = time.monotonic()
    c.send({"action": "change_agent_state", "args": {"agent_state": "stopped"}})
    final = wait_for(lambda: finals(c), timeout=30, what="interrupted command's observation")[0]
    assert time.monotonic() - began < 20  # far below the 120 s sleep and the 600 s timeout
    assert final["extras"]["interrupted"] is True and final["extras"]["exit_code"] != 0
    assert "not-reached" not in "".join(e.get("content", "") for e in c.events())
    recorded = [e for e in c.events() if e.get("action") == "change_agent_state"]
    assert recorded and recorded[0]["args"] == {"agent_state": "stopped"} and recorded[0]["source"] == "user"
    c.send(run("echo after"))  # the shell is still there
    wait_for(lambda: len(finals(c)) == 2, what="next command")
    assert finals(c)[1]["content"] == "after\n" and finals(c)[1]["extras"]["exit_code"] == 0
    assert not c.errors()


def test_client_args_accepted_and_hidden_echoed(daemon_factory: Any) -> None:
    d = daemon_factory(close_delay=1.0)
    c = Client(d.url)
    c.init()
    c.send(
        {
            "action": "message",
            "args": {"content": "do it", "image_urls": [], "timestamp": "2024-12-03T10:00:00Z"},
        }
    )
    c.send(run("secret-ish", hidden=True))
    c.send(run("visible", hidden=False, extra_from_later="ignored"))
    wait_for(lambda: len(finals(c)) == 2, what="two observations")
    hidden, visible = finals(c)
    assert hidden["extras"]["hidden"] is True and hidden["content"] == "secret-ish\n"
    assert "hidden" not in visible["extras"]
    actions = [e for e in c.events() if e.get("action") == "run"]
    assert actions[0]["args"]["hidden"] is True and "extra_from_later" not in actions[1]["args"]
    c.send(run("x", hidden="no"))
    err = c.wait(lambda fs: next((f for f in fs if "error" in f), None), what="error frame")
    assert err == {"error": "args.hidden must be a boolean", "error_code": 400}
