"""Store failures seen from a real daemon: a damaged journal (an error frame naming the
cause for that session alone), a damaged registry (``serve`` says why in one line and
exits non-zero) and the per-session quota (a clear error to the sender, nothing lost)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from bench.targets import free_port
from sessionactors.store.journal import journal_path

from .daemon_harness import Client, DaemonProcess, wait_for


def msg(text: str) -> dict[str, Any]:
    return {"action": "message", "args": {"content": text}}


def state_of(daemon: DaemonProcess, ok: dict[str, Any]) -> str:
    status, body = daemon.http("GET", f"/api/sessions/{ok['session_id']}", token=ok["token"])
    assert status == 200, body
    return str(body["state"])


def test_a_damaged_journal_fails_only_its_session_with_the_cause(daemon_factory: Any) -> None:
    d = daemon_factory(close_delay=0.2)
    a = Client(d.url)
    victim = a.init()
    a.send(msg("stored"))
    a.wait_events(1)
    a.close()
    wait_for(lambda: state_of(d, victim) == "passivated", 30, "the session to passivate")
    assert d.stop() == []
    journal_path(d.data_dir, victim["session_id"]).write_bytes(b"\0" * 4096)  # a damaged disk block
    d = daemon_factory(close_delay=0.2, data_dir=d.data_dir)
    b = Client(d.url)
    other = Client(d.url)
    try:
        answer = b.init(token=victim["token"])
        assert "error" in answer, answer
        assert "corrupt" in answer["error"] and victim["session_id"] in answer["error"], answer
        assert answer["error_code"] == 500
        token = (d.data_dir / "run" / "admin.token").read_text().strip()
        status, rows = d.http("GET", "/api/admin/sessions", token=token)  # the listing still works
        assert status == 200, rows
        (row,) = [r for r in rows if r["session_id"] == victim["session_id"]]
        assert row["last_event_id"] is None and "corrupt" in row["store_error"], row
        fine = other.init()  # every other session keeps working
        assert fine["status"] == "ok"
        other.send(msg("still fine"))
        other.wait_events(1)
        assert not other.errors()
    finally:
        b.close()
        other.close()


def test_a_damaged_registry_stops_serve_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "sessionactors.db").write_bytes(b"this is not a database\n" * 100)
    argv = [
        sys.executable, "-m", "sessionactors.cli", "serve", "--data-dir", str(data),
        "--port", str(free_port()), "--admin-port", str(free_port()),
    ]  # fmt: skip
    env = DaemonProcess(data).env()
    done = subprocess.run(argv, env=env, capture_output=True, timeout=120)
    assert done.returncode != 0
    err = done.stderr.decode()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "not an SQLite database" in lines[0] and str(data / "sessionactors.db") in lines[0], err
    assert "PoisonMessage" not in err and "Traceback" not in err


def test_the_quota_refuses_with_a_clear_error_and_loses_nothing(daemon_factory: Any) -> None:
    d = daemon_factory(close_delay=30, session_quota_bytes=3000)
    c = Client(d.url)
    try:
        ok = c.init()
        n = 0
        while not c.errors():
            n += 1
            c.send(msg(f"message {n} " + "x" * 200))
            c.wait(lambda fs, n=n: c.errors() or len(c.events()) >= n, what=f"message {n}")
            assert n < 50, "the quota never refused anything"
        (error,) = c.errors()
        assert error["error_code"] == 507 and "quota" in error["error"], error
        stored = c.events()
        assert [e["id"] for e in stored] == list(range(len(stored)))
        status, body = d.http("GET", f"/api/sessions/{ok['session_id']}", token=ok["token"])
        assert status == 200 and body["last_event_id"] == stored[-1]["id"], body
        log = d.log_path.read_text()
        assert "quota" in log and ok["session_id"] in log  # recorded why
    finally:
        c.close()
    again = Client(d.url)
    try:
        answer = again.init(token=ok["token"], latest=-1)
        assert answer["status"] == "ok"
        wait_for(lambda: len(again.events()) >= len(stored), what="the replay")
        assert again.events() == stored  # nothing stored was lost
    finally:
        again.close()


def test_serve_migrates_a_data_dir_of_the_schema_3_code(daemon_factory: Any, tmp_path: Path) -> None:
    # tests/data/store-v3.tar.gz was written by the previous release (tests/data/make_store_v3.py).
    with tarfile.open(Path(__file__).parent / "data" / "store-v3.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    expected = json.loads((tmp_path / "expected.json").read_text())
    d = daemon_factory(data_dir=tmp_path / "data")
    assert not (d.data_dir / "events").exists()
    token = (d.data_dir / "run" / "admin.token").read_text().strip()
    status, rows = d.http("GET", "/api/admin/sessions", token=token)
    assert status == 200, rows
    last = {r["session_id"]: r["last_event_id"] for r in rows}
    assert last == {
        **{sid: len(events) - 1 for sid, events in expected.items() if sid != "orphan"},
        "no-events": -1,
    }
    c = Client(d.url)  # and the daemon serves new sessions on the new layout
    try:
        assert c.init()["status"] == "ok"
        c.send(msg("after the migration"))
        c.wait_events(1)
    finally:
        c.close()
