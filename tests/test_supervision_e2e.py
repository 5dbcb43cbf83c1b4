"""Supervision and durability with real processes: the passivation race, restart intensity,
leftover actor systems, and SIGKILL of the session actor or of the whole daemon."""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path
from typing import Any

from .daemon_harness import Client, DaemonProcess, wait_for


def msg(text: str) -> dict[str, Any]:
    return {"action": "message", "args": {"content": text}}


def admin_rows(daemon: DaemonProcess) -> list[dict[str, Any]]:
    token = (daemon.data_dir / "run" / "admin.token").read_text().strip()
    status, rows = daemon.http("GET", "/api/admin/sessions", token=token)
    assert status == 200
    return list(rows)


def session_pid(daemon: DaemonProcess, session_id: str) -> int:
    row = wait_for(
        lambda: next((r for r in admin_rows(daemon) if r["session_id"] == session_id and r["pid"]), None),
        what="session pid",
    )
    return int(row["pid"])


def info(daemon: DaemonProcess, ok: dict[str, Any]) -> dict[str, Any]:
    status, body = daemon.http("GET", f"/api/sessions/{ok['session_id']}", token=ok["token"])
    assert status == 200, body
    return dict(body)


def test_init_during_passivation_is_buffered_not_lost(daemon_factory: Any) -> None:
    """An INIT that reaches a session while it passivates is handed to the next incarnation."""
    d = daemon_factory(close_delay=0.2, runtime_options='{"stop_delay": 1.5}')
    a = Client(d.url)
    ok = a.init()
    a.send(msg("kept"))
    a.wait_events(1)
    a.close()
    marker = d.data_dir / "workspaces" / ok["session_id"] / ".stopping"
    wait_for(marker.exists, what="the session to start passivating")
    assert info(d, ok)["state"] == "live"  # the supervisor has not heard of it yet
    b = Client(d.url)
    try:
        answer = b.init(token=ok["token"])
        assert answer["status"] == "ok" and answer["session_id"] == ok["session_id"]
        assert [e["id"] for e in b.wait_events(1)] == [0]
        b.send(msg("after"))
        assert [e["id"] for e in b.wait_events(2)] == [0, 1]
        assert not b.errors()
        statuses = [f["id"] for f in b.snapshot() if f.get("status_update")]
        assert "STATUS$REHYDRATING" in statuses  # served by a new incarnation
    finally:
        b.close()


def test_restart_intensity_exhausted_marks_session_failed(daemon_factory: Any) -> None:
    d = daemon_factory(restart_intensity=2, restart_period=60)
    c = Client(d.url)
    try:
        ok = c.init()
        c.send(msg("one"))
        c.wait_events(1)
        for n in (1, 2):
            os.kill(session_pid(d, ok["session_id"]), signal.SIGKILL)
            c.wait(
                lambda fs, n=n: sum(f.get("id") == "STATUS$SESSION_RESTARTED" for f in fs) == n,
                what=f"restart {n}",
            )
        os.kill(session_pid(d, ok["session_id"]), signal.SIGKILL)
        c.wait(lambda fs: any(f.get("error_code") == 503 for f in fs), what="failure notice")
        assert info(d, ok)["state"] == "failed"
        c.send(msg("rejected"))
        c.wait(lambda fs: any(f.get("error_code") == 400 for f in fs), what="not attached error")
        retry = c.init(token=ok["token"], latest=0)  # a new INIT tries again
        assert retry["status"] == "ok"
        c.send(msg("two"))
        assert [e["id"] for e in c.wait_events(2)] == [0, 1]
    finally:
        c.close()


def test_daemon_reclaims_actor_system_left_by_a_crash(daemon_factory: Any, tmp_path: Path) -> None:
    first = daemon_factory()
    c = Client(first.url)
    ok = c.init()
    c.send(msg("before crash"))
    c.wait_events(1)
    c.close()
    first.kill9()  # the daemon alone: its actor system and gateway are left behind
    assert first.proc is None or first.proc.poll() is not None
    wait_for(lambda: first.http("GET", "/api/health")[0] == 0, what="orphaned gateway to exit")
    second = daemon_factory(data_dir=first.data_dir, port=first.port, admin_port=first.admin_port)
    c2 = Client(second.url)
    try:
        answer = c2.init(token=ok["token"])  # the persisted secret still verifies it
        assert answer["status"] == "ok"
        assert [e["message"] for e in c2.wait_events(1)] == ["before crash"]
    finally:
        c2.close()


def test_foreign_actor_system_on_the_admin_port_is_refused(daemon_factory: Any, tmp_path: Path) -> None:
    """A second daemon (another data dir) must not silently join the first one's actor system."""
    import subprocess
    import sys

    first = daemon_factory()
    other = DaemonProcess(tmp_path / "other", admin_port=first.admin_port)
    argv = [sys.executable, "-m", "sessionactors.cli", "serve", "--data-dir", str(other.data_dir),
            "--port", str(other.port), "--admin-port", str(first.admin_port)]  # fmt: skip
    result = subprocess.run(argv, env=other.env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "held by an actor system this data directory did not start" in result.stderr
    assert first.http("GET", "/api/health")[0] == 200  # the first daemon is unharmed


def test_sigkill_everything_mid_stream_loses_no_acknowledged_event(daemon_factory: Any) -> None:
    d = daemon_factory()
    c = Client(d.url)
    ok = c.init()
    stop = threading.Event()

    def producer() -> None:
        i = 0
        while not stop.is_set() and c.sio.connected:
            try:
                c.send(msg(f"m{i}"))
            except Exception:
                return
            i += 1
            stop.wait(0.002)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    target = random.randint(20, 120)
    c.wait_events(target, timeout=30)
    d.remember_pids()
    for pid in sorted(d.known_pids):  # the whole daemon at once: launcher, gateway, every actor
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    stop.set()
    thread.join(5)
    seen = {e["id"]: e for e in c.events()}
    c.sio.disconnect()
    assert d.proc is not None
    d.proc.wait(10)
    wait_for(lambda: d.stop() == [], what="every killed process to be gone")
    again = daemon_factory(data_dir=d.data_dir, port=d.port)
    r = Client(again.url)
    try:
        answer = r.init(token=ok["token"])
        assert answer["status"] == "ok"
        replay = {e["id"]: e for e in r.wait_events(len(seen))}
        assert sorted(replay) == list(range(len(replay))), "ids must stay contiguous from 0"
        for event_id, event in seen.items():
            assert replay[event_id] == event, f"event {event_id} changed or vanished"
        assert info(again, answer)["state"] == "live"
    finally:
        r.close()
