"""What the OpenHands frontend (Dec 2024) sends and expects, driven with python-socketio
against a real daemon: its action args, ``change_agent_state`` interrupting a command, the
agent-state events, xterm-ready output, the stable token, the INIT cap and in-memory secrets."""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

import pytest

from sessionactors.config import Config
from sessionactors.errors import ActionError
from sessionactors.gateway.initguard import REFRESH_FRACTION
from sessionactors.protocol import parse_action, split_secrets
from sessionactors.store import open_store

from .daemon_harness import Client, DaemonProcess, wait_for


def run(command: str, **extra: Any) -> dict[str, Any]:
    return {"action": "run", "args": {"command": command, **extra}}


def finals(c: Client) -> list[dict[str, Any]]:
    return [e for e in c.events() if e.get("observation") == "run" and not e["extras"].get("partial")]


def state_of(d: DaemonProcess, ok: dict[str, Any]) -> str:
    return str(d.http("GET", f"/api/sessions/{ok['session_id']}", token=ok["token"])[1]["state"])


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


def claims_of(token: str) -> dict[str, Any]:
    """A JWT's payload, unverified (the test only reads its expiry)."""
    body = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))


def test_init_with_a_valid_token_gets_that_token_back_until_near_expiry(daemon_factory: Any) -> None:
    d = daemon_factory(close_delay=1.0, token_ttl=8)
    first = Client(d.url)
    token = first.init()["token"]
    for _ in range(3):  # rejoin, from the same and from new connections: the same token
        assert first.init(token=token)["token"] == token
        other = Client(d.url)
        assert other.init(token=token)["token"] == token
        other.close()
    # Within REFRESH_FRACTION (25 %) of token_ttl of its expiry, the answer is a new token.
    expires = claims_of(token)["exp"]
    wait_for(lambda: time.time() > expires - 8 * REFRESH_FRACTION + 0.2, timeout=20, what="near expiry")
    fresh = first.init(token=token)["token"]
    assert fresh != token and claims_of(fresh)["exp"] > expires
    assert first.init(token=fresh)["token"] == fresh


def test_repeated_inits_from_one_connection_are_capped_and_logged(daemon_factory: Any) -> None:
    d = daemon_factory(close_delay=1.0, max_inits_per_connection=3)
    c = Client(d.url)
    token = c.init()["token"]
    assert c.init(token=token)["token"] == token
    assert c.init(token=token)["token"] == token
    for _ in range(2):
        assert c.init(token=token) == {
            "error": "Too many initialize requests on this connection",
            "error_code": 429,
        }
    c.send(run("still-attached"))  # the connection keeps the session it had
    wait_for(lambda: finals(c), what="command after the refused INITs")
    other = Client(d.url)  # other connections are not affected
    assert other.init(token=token)["token"] == token
    log = d.log_path.read_text()
    assert log.count("sent more than 3 INITs") == 1, log[-2000:]


def test_secret_args_stay_in_memory_and_reach_the_runtime(daemon_factory: Any) -> None:
    d = daemon_factory(close_delay=0.5)
    probe = "probe-" + secrets.token_hex(8)
    args = {"LLM_API_KEY": probe + "a", "github_token_x": probe + "b", "My_Password": probe + "c",
            "SECRET_SAUCE": probe + "d", "LANGUAGE": "en", "AGENT": "CodeActAgent"}  # fmt: skip
    a = Client(d.url)
    ok = a.init(args=args)
    a.send(run("secret-names"))
    wait_for(lambda: finals(a), what="secret names")
    assert finals(a)[0]["content"] == "LLM_API_KEY My_Password SECRET_SAUCE github_token_x\n"
    b = Client(d.url)  # another tab: joins with the token, sends no secrets, is given none
    b.init(token=ok["token"])
    b.wait_events(len(a.events()))
    assert probe not in json.dumps(b.snapshot()) and probe not in json.dumps(a.snapshot())
    a.close()
    b.close()
    wait_for(lambda: state_of(d, ok) == "passivated", timeout=30, what="passivation")
    record = open_store(d.data_dir).get_session(ok["session_id"])
    assert record is not None and record.args == {"LANGUAGE": "en", "AGENT": "CodeActAgent"}
    # Rehydrated by an INIT that brings the secrets again: the new runtime has them.
    c = Client(d.url)
    c.init(token=ok["token"], args={"LLM_API_KEY": probe + "e"})
    c.send(run("secret-names"))
    wait_for(lambda: len(finals(c)) == 2, what="secret names after rehydration")
    assert finals(c)[1]["content"] == "LLM_API_KEY\n"
    leaks = [p for p in d.data_dir.rglob("*") if p.is_file() and probe.encode() in p.read_bytes()]
    assert not leaks and probe not in d.log_path.read_text()


def test_secret_patterns_are_configurable() -> None:
    patterns = ("*CUSTOM*",)
    kept, held = split_secrets({"MY_CUSTOM_X": 1, "MY_KEY": 2, "llm_api_key": 3, "n": 4}, patterns)
    assert held == {"MY_CUSTOM_X": 1, "llm_api_key": 3} and kept == {"MY_KEY": 2, "n": 4}
    kept, held = split_secrets({"OPENAI_API_KEY": 1, "a_token": 2, "lang": 3}, Config().secret_arg_patterns)
    assert held == {"OPENAI_API_KEY": 1, "a_token": 2} and kept == {"lang": 3}


def test_openhands_mode_agent_states_terminal_output_and_token_last(daemon_factory: Any) -> None:
    d = daemon_factory(
        runtime="local", close_delay=1.0, openhands_compat="on", runtime_options={"stream_interval": 0.05}
    )
    a = Client(d.url)
    ok = a.init()
    wait_for(lambda: states(a) == ["loading", "init"], what="loading, init")
    # The INIT answer ends with the token frame again, after the replay (the client stores
    # the token only when it is the last frame of a batch), and ``init`` comes after it.
    frames = [f for f in a.snapshot() if "status_update" not in f]
    answer = {"status": "ok", "token": ok["token"], "session_id": ok["session_id"]}
    assert frames == [answer, {**frames[1], "id": 0}, answer, {**frames[3], "id": 1}], frames
    a.send(run("for i in 1 2 3; do echo chunk-$i; sleep 0.2; done"))
    wait_for(lambda: states(a)[-1:] == ["awaiting_user_input"], what="awaiting_user_input")
    outs = [e for e in a.events() if e.get("observation") == "run"]
    assert len(outs) == 1 and not outs[0]["extras"].get("partial")  # streamed chunks folded: one prompt
    assert outs[0]["content"] == "chunk-1\r\nchunk-2\r\nchunk-3"
    assert states(a) == ["loading", "init", "running", "awaiting_user_input"]
    a.send(run("sleep 60", hidden=True))
    wait_for(lambda: states(a)[-1] == "running", what="running")
    a.send({"action": "change_agent_state", "args": {"agent_state": "paused"}})
    wait_for(
        lambda: len([e for e in a.events() if e.get("observation") == "run"]) == 2,
        timeout=30,
        what="interrupted",
    )
    last = [e for e in a.events() if e.get("observation") == "run"][-1]
    assert last["extras"]["hidden"] is True and last["extras"]["interrupted"] is True
    assert states(a)[-1] == "paused"  # the interrupted command's end does not override it
    # A new tab replays the states: its status bar shows where the session is.
    b = Client(d.url)
    b.init(token=ok["token"])
    b.wait_events(len(a.events()))
    assert (
        states(b) == states(a) == ["loading", "init", "running", "awaiting_user_input", "running", "paused"]
    )
    assert not a.errors() and not b.errors()
