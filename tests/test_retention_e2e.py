"""Deleting sessions (REST, CLI) and age-based retention remove events, record and workspace."""

from __future__ import annotations

from typing import Any

from .daemon_harness import Client, DaemonProcess, wait_for


def make_session(d: DaemonProcess) -> dict[str, Any]:
    c = Client(d.url)
    ok = c.init()
    c.send({"action": "write", "args": {"path": "f.txt", "content": "data"}})
    c.wait_events(2)
    c.close()
    return ok


def test_rest_delete_removes_everything(daemon_factory: Any) -> None:
    d = daemon_factory(runtime="local")
    ok = make_session(d)
    sid, token = ok["session_id"], ok["token"]
    workspace = d.data_dir / "workspaces" / sid
    assert (workspace / "f.txt").read_text() == "data"
    keep = make_session(d)
    assert d.http("DELETE", f"/api/sessions/{sid}")[0] == 401  # needs the session's token
    assert d.http("DELETE", f"/api/sessions/{sid}", token=keep["token"])[0] == 401  # not another's
    assert d.http("DELETE", f"/api/sessions/{sid}", token=token) == (200, {"deleted": sid})
    wait_for(lambda: d.http("GET", f"/api/sessions/{sid}", token=token)[0] == 404, what="record gone")
    wait_for(lambda: not workspace.exists(), what="workspace removed")
    assert d.http("GET", f"/api/sessions/{sid}/events?start_id=0", token=token) == (
        404,
        {"error": "Unknown session"},
    )
    c = Client(d.url)
    try:
        assert c.init(token=token) == {"error": "Invalid token", "error_code": 401}
    finally:
        c.close()
    status, events = d.http(
        "GET", f"/api/sessions/{keep['session_id']}/events?start_id=0", token=keep["token"]
    )
    assert status == 200 and len(events) == 2  # the other session is untouched


def test_retention_deletes_old_passivated_sessions_only(daemon_factory: Any) -> None:
    d = daemon_factory(close_delay=0.2, retention_days=2 / 86400)  # two seconds
    old = make_session(d)
    live = Client(d.url)
    try:
        live_ok = live.init()
        wait_for(lambda: d.http("GET", f"/api/sessions/{old['session_id']}", token=old["token"])[0] == 404,
                 timeout=20, what="the idle session to be deleted by retention")  # fmt: skip
        status, info = d.http("GET", f"/api/sessions/{live_ok['session_id']}", token=live_ok["token"])
        assert status == 200 and info["state"] == "live"
    finally:
        live.close()
