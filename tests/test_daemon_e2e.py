"""End to end: a real daemon (actor system, supervisor, gateway process) and real Socket.IO clients."""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

from .daemon_harness import Client, DaemonProcess, wait_for


def msg(text: str) -> dict[str, Any]:
    return {"action": "message", "args": {"content": text}}


def test_new_session_message_and_health(daemon: DaemonProcess) -> None:
    assert daemon.http("GET", "/api/health") == (200, {"status": "ok"})
    c = Client(daemon.url)
    try:
        ok = c.init()
        assert ok["status"] == "ok" and ok["token"] and ok["session_id"]
        c.send(msg("hello"))
        (event,) = c.wait_events(1)
        assert event["id"] == 0 and event["source"] == "user" and event["message"] == "hello"
        assert event["action"] == "message" and event["args"] == {"content": "hello"}
        status, info = daemon.http("GET", f"/api/sessions/{ok['session_id']}", token=ok["token"])
        assert status == 200
        assert info == {
            "session_id": ok["session_id"], "state": "live", "connections": 1, "last_event_id": 0,
            "node": socket.gethostname(),  # node_name's default
        }  # fmt: skip
    finally:
        c.close()


def test_two_tabs_fan_out_and_join_by_token(daemon: DaemonProcess) -> None:
    a = Client(daemon.url)
    b = Client(daemon.url, transports=["polling", "websocket"])
    try:
        ok = a.init()
        a.send(msg("one"))
        a.wait_events(1)
        ok_b = b.init(token=ok["token"])
        assert ok_b["session_id"] == ok["session_id"]
        assert [e["id"] for e in b.wait_events(1)] == [0]  # replay
        b.send({"action": "run", "args": {"command": "echo hi"}})
        for c in (a, b):
            events = c.wait_events(3)
            assert [e["id"] for e in events] == [0, 1, 2]
            assert events[2]["observation"] == "run" and events[2]["cause"] == 1
            assert events[2]["extras"] == {"command": "echo hi", "exit_code": 0}
    finally:
        a.close()
        b.close()


def test_passivation_then_replay_from_latest(daemon: DaemonProcess) -> None:
    a = Client(daemon.url)
    ok = a.init()
    for i in range(3):
        a.send(msg(f"m{i}"))
    a.wait_events(3)
    a.close()
    sid = ok["session_id"]
    wait_for(lambda: daemon.http("GET", f"/api/sessions/{sid}", token=ok["token"])[1]["state"] == "passivated",
             what="passivation")  # fmt: skip
    b = Client(daemon.url)
    try:
        ok2 = b.init(token=ok["token"], latest=0)
        assert ok2["session_id"] == sid
        assert [e["id"] for e in b.wait_events(2)] == [1, 2]
        statuses = [f["id"] for f in b.snapshot() if f.get("status_update")]
        assert "STATUS$REHYDRATING" in statuses
        b.send(msg("after"))
        assert b.wait_events(3)[-1]["id"] == 3
    finally:
        b.close()


def test_errors_go_to_the_sender_alone(daemon: DaemonProcess) -> None:
    a = Client(daemon.url)
    bystander = Client(daemon.url)
    try:
        bystander.init()
        a.send(msg("too early"))
        a.wait(lambda fs: a.errors(), what="error")
        assert a.errors()[0] == {
            "error": "Not attached to a session; send initialize first",
            "error_code": 400,
        }
        assert a.init(token="forged.token.value") == {"error": "Invalid token", "error_code": 401}
        assert a.init(latest=-5)["error_code"] == 400
        a.send("not an object")
        a.wait(lambda fs: len(a.errors()) >= 4, what="error for non-object")
        assert all("error" not in f for f in bystander.snapshot())
    finally:
        a.close()
        bystander.close()


def test_crashed_session_actor_is_restarted_without_loss(daemon: DaemonProcess) -> None:
    c = Client(daemon.url)
    try:
        ok = c.init()
        c.send(msg("before"))
        c.wait_events(1)
        daemon.remember_pids()
        pids_before = set(daemon.known_pids)
        victim = _session_pid(daemon, ok["session_id"])
        os.kill(victim, signal.SIGKILL)
        c.wait(lambda fs: any(f.get("id") == "STATUS$SESSION_RESTARTED" for f in fs), what="restart status")
        c.send(msg("after"))
        events = c.wait_events(2)
        assert [e["id"] for e in events] == [0, 1]
        assert victim in pids_before
        status, info = daemon.http("GET", f"/api/sessions/{ok['session_id']}", token=ok["token"])
        assert status == 200 and info["state"] == "live" and info["connections"] == 1
    finally:
        c.close()


def _session_pid(daemon: DaemonProcess, session_id: str) -> int:
    """The pid of a live session actor, from the admin API (as ``sessionactors status`` gets it)."""
    token = (daemon.data_dir / "run" / "admin.token").read_text().strip()
    status, rows = daemon.http("GET", "/api/admin/sessions", token=token)
    assert status == 200
    (row,) = [r for r in rows if r["session_id"] == session_id]
    assert isinstance(row["pid"], int)
    return int(row["pid"])


def test_cli_start_status_stop(tmp_path: Any) -> None:
    import subprocess
    import sys

    from .daemon_harness import free_port

    data = tmp_path / "cli"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONACTORS_")}
    env.update(THESPIAN_BASE_IPADDR="127.0.0.1", SESSIONACTORS_RUNTIME="echo")
    base = [sys.executable, "-m", "sessionactors.cli"]
    common = ["--data-dir", str(data)]
    port, admin = free_port(), free_port()
    started = subprocess.run(
        [*base, "start", *common, "--port", str(port), "--admin-port", str(admin)],
        env=env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    from sessionactors.daemon import descendants, pid_alive

    state_file = data / "run" / "daemon.json"
    try:
        assert started.returncode == 0, started.stderr
        import json

        pid = json.loads(state_file.read_text())["pid"]
        pids = {pid, *descendants(pid)}
        status = subprocess.run(
            [*base, "status", *common], env=env, capture_output=True, text=True, timeout=30
        )
        assert status.returncode == 0 and "daemon: running" in status.stdout, status.stdout + status.stderr
        again = subprocess.run(
            [*base, "start", *common, "--port", str(port), "--admin-port", str(admin)],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        stopped = subprocess.run(
            [*base, "stop", *common], env=env, capture_output=True, text=True, timeout=90
        )
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    wait_for(lambda: not any(pid_alive(p) for p in pids), 10, "daemon processes to exit")
    status = subprocess.run([*base, "status", *common], env=env, capture_output=True, text=True, timeout=30)
    assert "daemon: not running" in status.stdout


def test_empty_token_and_latest_beyond_the_log(daemon: DaemonProcess) -> None:
    c = Client(daemon.url)
    try:
        assert c.init(token="") == {"error": "Invalid token", "error_code": 401}
        ok = c.init()
        c.send(msg("zero"))
        c.wait_events(1)
        other = Client(daemon.url)
        try:
            # claims to hold up to 100 of a session that has one event: it gets what comes next
            assert other.init(token=ok["token"], latest=100)["status"] == "ok"
            c.send(msg("one"))
            assert [e["id"] for e in other.wait_events(1)] == [1]
        finally:
            other.close()
    finally:
        c.close()


def test_failed_move_keeps_the_connection_on_its_session(daemon: DaemonProcess) -> None:
    """A second INIT whose new session cannot start (503) leaves the connection where it was."""
    c = Client(daemon.url)
    try:
        ok = c.init()
        c.send(msg("first"))
        c.wait_events(1)
        failed = c.init(args={"echo_fail_start": True})
        assert failed["error_code"] == 503
        c.send(msg("still here"))
        events = c.wait_events(2)
        assert [e["message"] for e in events] == ["first", "still here"]
        status, info = daemon.http("GET", f"/api/sessions/{ok['session_id']}", token=ok["token"])
        assert status == 200 and info["connections"] == 1
    finally:
        c.close()


def test_successful_move_detaches_from_the_old_session(daemon: DaemonProcess) -> None:
    c = Client(daemon.url)
    try:
        a = c.init()
        b = c.init()
        assert a["session_id"] != b["session_id"]
        wait_for(
            lambda: (
                daemon.http("GET", f"/api/sessions/{a['session_id']}", token=a["token"])[1]["connections"]
                == 0
            ),
            what="detach from the old session",
        )
        c.send(msg("in b"))
        assert c.wait_events(1)[0]["message"] == "in b"
        assert daemon.http("GET", f"/api/sessions/{b['session_id']}", token=b["token"])[1]["connections"] == 1
    finally:
        c.close()
