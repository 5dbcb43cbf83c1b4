"""Tests of the SQLite store on real files: round trips, id contiguity, records,
crash durability (SIGKILLed writers), concurrent writers, schema migration and
refusal of files that are not ours."""

from __future__ import annotations

import hashlib
import inspect
import json
import multiprocessing
import os
import random
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from sessionactors.errors import EventIdConflict, SchemaMismatch, StoreCorrupt, StoreError
from sessionactors.store import SessionRecord, open_store
from sessionactors.store import journal as journal_mod
from sessionactors.store import sqlite as sqlite_store
from sessionactors.store.journal import journal_path
from sessionactors.store.sqlite import SQLiteStore
from sessionactors.store.sqlite_shards import is_busy


def make_event(i: int) -> dict[str, Any]:
    """Event ``i``: sizes vary from a few bytes to ~6 kB so that batches span pages."""
    return {
        "id": i,
        "timestamp": f"2026-11-29T10:00:{i % 60:02d}.123456+00:00",
        "source": "environment",
        "observation": "run",
        "cause": i - 1,
        "content": f"out {i} \u00e9\u2603 " * (i * 37 % 400),
        "extras": {"command": f"echo {i}", "exit_code": i % 3},
    }


# The child scripts embed make_event's source, so both sides know each id's exact body.
EVENT_SRC = "from typing import Any\n" + inspect.getsource(make_event)

APPENDER = (
    EVENT_SRC
    + """
import random, sys
from pathlib import Path
from sessionactors.store.sqlite import SQLiteStore
data_dir, fsync, sid, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = SQLiteStore(Path(data_dir), fsync=fsync)
rng = random.Random(seed)
nxt = store.last_event_id(sid) + 1
print("ready", nxt, flush=True)
while True:
    n = rng.randint(1, 5)
    store.append(sid, [make_event(i) for i in range(nxt, nxt + n)])
    nxt += n
    # Only now is the batch acknowledged: append has returned.
    sys.stdout.write("ack %d\\n" % (nxt - 1))
    sys.stdout.flush()
"""
)

CONCURRENT_WRITER = (
    EVENT_SRC
    + """
import sys
from pathlib import Path
from sessionactors.store.sqlite import SQLiteStore
data_dir, sid, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()  # the start signal: every writer opens and appends at the same moment
store = SQLiteStore(Path(data_dir))
for i in range(count):
    store.append(sid, [make_event(i)])
store.close()
print("done", flush=True)
"""
)


class Pipe:
    """Line reader over a child's stdout with deadlines (select, no sleeps)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buf = b""
        self.eof = False

    def _fill(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0.0))
        if ready:
            chunk = os.read(self.fd, 65536)
            self.eof = not chunk
            self.buf += chunk

    def readline(self, deadline: float) -> str:
        while b"\n" not in self.buf:
            if self.eof:
                raise EOFError(f"child closed its stdout; partial output {self.buf!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("no line from the child before the deadline")
            self._fill(deadline - time.monotonic())
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def complete_lines(self, deadline: float) -> list[str]:
        """Everything up to EOF, without a trailing partial line."""
        while not self.eof and time.monotonic() < deadline:
            self._fill(deadline - time.monotonic())
        assert self.eof, "child stdout not closed before the deadline"
        return [line.decode() for line in self.buf.split(b"\n")[:-1]]


@pytest.fixture
def spawn():
    """Start ``python -c SCRIPT args...``; every child is killed and reaped at teardown."""
    children: list[subprocess.Popen[bytes]] = []

    def _spawn(script: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        children.append(proc)
        return proc

    yield _spawn
    for proc in children:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "data")
    yield s
    s.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- events -----------------------------------------------------------------------


def run_concurrent_writers(spawn: Any, data: Path, prefix: str, writers: int, count: int) -> None:
    """``writers`` processes append ``count`` events each to session ``<prefix><n>``,
    released together once all are ready; each must finish cleanly."""
    procs = [spawn(CONCURRENT_WRITER, str(data), f"{prefix}{n}", str(count)) for n in range(writers)]
    deadline = time.monotonic() + 60
    for proc in procs:
        assert Pipe(proc).readline(deadline) == "ready"
    for proc in procs:  # release them together
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    for proc in procs:
        out, err = proc.communicate(timeout=max(deadline + 60 - time.monotonic(), 1))
        assert proc.returncode == 0, err.decode()
        assert out.decode().split() == ["done"] and err == b""


def test_round_trip_preserves_exact_json(store: SQLiteStore) -> None:
    events = [
        {"id": 0, "timestamp": "2026-11-29T10:00:00.123456+00:00", "source": "user", "message": "hé ☃ 🙂"},
        {"id": 1, "z": 1, "a": [1, 2.5, None, True, False, {"n": {"m": []}}], "big": 2**62, "f": 1e-7},
        {"id": 2, "content": 'line\nbreak\t"quoted" \\ \u0000', "cause": 1, "extras": {}},
    ]
    store.append("s", events)
    back = store.read("s")
    assert back == events
    # Same key order and values byte for byte once serialised.
    assert [json.dumps(e) for e in back] == [json.dumps(e) for e in events]
    raw = [line.rstrip(" ") for line in journal_path(store.data_dir, "s").read_text().splitlines()[1:]]
    assert raw == [json.dumps(e, separators=(",", ":"), ensure_ascii=False) for e in events]
    assert store.last_event_id("s") == 2
    assert store.last_event_id("other") == -1
    assert store.read("other") == []


def test_append_rejects_gaps_and_reuse_and_stores_nothing(store: SQLiteStore) -> None:
    with pytest.raises(EventIdConflict):
        store.append("s", [make_event(1)])  # must start at 0
    store.append("s", [make_event(i) for i in range(3)])
    for bad in ([4], [2], [0, 1], [3, 5], [3, 4, 4], [3, 3]):
        with pytest.raises(EventIdConflict):
            store.append("s", [make_event(i) for i in bad])
        assert store.last_event_id("s") == 2
    assert store.read("s") == [make_event(i) for i in range(3)]
    store.append("s", [])  # no-op
    store.append("s", [make_event(3), make_event(4)])
    assert [e["id"] for e in store.read("s")] == [0, 1, 2, 3, 4]
    with pytest.raises(TypeError):
        store.append("s", [{"id": "5"}])
    with pytest.raises(ValueError):
        store.append("s", [{"id": 5, "x": float("nan")}])
    assert store.last_event_id("s") == 4


def test_read_ranges_at_the_edges(store: SQLiteStore) -> None:
    store.append("s", [make_event(i) for i in range(10)])

    def ids(evs: list[dict[str, Any]]) -> list[int]:
        return [e["id"] for e in evs]

    assert ids(store.read("s", 0)) == list(range(10))
    assert ids(store.read("s", -5)) == list(range(10))
    assert ids(store.read("s", 9)) == [9]
    assert store.read("s", 10) == []
    assert store.read("s", 1000) == []
    assert ids(store.read("s", 0, limit=3)) == [0, 1, 2]
    assert ids(store.read("s", 8, limit=5)) == [8, 9]
    assert ids(store.read("s", 4, limit=1)) == [4]
    assert store.read("s", 0, limit=0) == []
    with pytest.raises(ValueError):
        store.read("s", 0, limit=-1)


def test_replay_of_10000_events_in_order_with_one_read(store: SQLiteStore, monkeypatch) -> None:
    for start in range(0, 10_000, 500):
        store.append("big", [make_event(i) for i in range(start, start + 500)])
    store.append("neighbour", [make_event(0)])
    reads: list[int] = []
    real_pread = journal_mod.os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        reads.append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(journal_mod.os, "pread", pread)
    events = store.read("big", 0)
    assert [e["id"] for e in events] == list(range(10_000))
    assert events[1234] == make_event(1234) and events[-1] == make_event(9999)
    assert len(reads) == 1, reads  # the index is up to date: no per-event reads
    assert [e["id"] for e in store.read("big", 9_990, limit=5)] == list(range(9_990, 9_995))


def test_inherited_store_reconnects_after_fork(store: SQLiteStore) -> None:
    inherited = store._conn()
    store.last_event_id("forked")  # creates nothing, but opens the handle
    store.append("forked", [])

    def child() -> None:
        # Fresh connections and descriptors, not the parent's; then a normal append.
        assert store._conn() is not inherited
        store.append("forked", [make_event(0), make_event(1)])
        assert store._journal("forked")._pid == os.getpid()

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert store._conn() is inherited
    store.append("forked", [make_event(2)])
    assert [e["id"] for e in store.read("forked")] == [0, 1, 2]


# -- session records ----------------------------------------------------------------


def test_session_record_crud(store: SQLiteStore) -> None:
    rec = SessionRecord(
        "s1", owner="42", owner_login="octocat", args={"model": "x", "n": [1]}, created_at=20.0,
        last_active=21.5, runtime_state={"cwd": "/w", "env": {"A": "é"}}, token_version=1,
    )  # fmt: skip
    store.create_session(rec)
    assert store.get_session("s1") == rec
    assert store.get_session("nope") is None
    with pytest.raises(StoreError, match="exists"):
        store.create_session(SessionRecord("s1"))
    store.create_session(SessionRecord("s0", created_at=10.0, state="passivated"))
    store.create_session(SessionRecord("s2", created_at=30.0))

    store.update_session("s1", state="passivated", runtime_state={"cwd": "/x"}, token_version=2)
    got = store.get_session("s1")
    assert got is not None
    assert (got.state, got.runtime_state, got.token_version, got.args) == (
        "passivated", {"cwd": "/x"}, 2, {"model": "x", "n": [1]},
    )  # fmt: skip
    with pytest.raises(ValueError, match="colour"):
        store.update_session("s1", colour="red")
    with pytest.raises(ValueError):
        store.update_session("s1", state="sleeping")
    with pytest.raises(StoreError):
        store.update_session("ghost", state="failed")
    assert store.get_session("ghost") is None

    assert [r.session_id for r in store.list_sessions()] == ["s0", "s1", "s2"]
    assert [r.session_id for r in store.list_sessions("passivated")] == ["s0", "s1"]
    assert [r.session_id for r in store.list_sessions("live")] == ["s2"]
    assert store.list_sessions("failed") == []
    assert (store.count_sessions(), store.count_sessions("passivated"), store.count_sessions("failed")) == (
        3,
        2,
        0,
    )


def test_delete_removes_record_and_events(store: SQLiteStore) -> None:
    store.create_session(SessionRecord("a", created_at=1.0))
    store.create_session(SessionRecord("b", created_at=2.0))
    store.append("a", [make_event(i) for i in range(5)])
    store.append("b", [make_event(i) for i in range(3)])
    store.append("orphan", [make_event(0)])  # events before (or without) a record are allowed
    assert store.delete_session("a") is True
    assert store.get_session("a") is None
    assert store.read("a") == [] and store.last_event_id("a") == -1
    assert [e["id"] for e in store.read("b")] == [0, 1, 2]
    assert store.delete_session("a") is False
    assert store.delete_session("orphan") is True and store.read("orphan") == []
    assert store.count_sessions() == 1
    store.append("a", [make_event(0)])  # a deleted id starts over from 0


def test_reconcile_live_sessions(store: SQLiteStore) -> None:
    for sid, created, state in [
        ("b", 2.0, "live"),
        ("a", 1.0, "live"),
        ("c", 3.0, "passivated"),
        ("d", 4.0, "failed"),
    ]:
        store.create_session(SessionRecord(sid, created_at=created, state=state))
    assert store.reconcile_live_sessions() == ["a", "b"]
    assert {r.session_id: r.state for r in store.list_sessions()} == {
        "a": "passivated", "b": "passivated", "c": "passivated", "d": "failed",
    }  # fmt: skip
    assert store.reconcile_live_sessions() == []


def test_open_options_and_close(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fsync"):
        SQLiteStore(tmp_path / "x", fsync="sometimes")
    data = tmp_path / "nested" / "data"
    for fsync, level in (("full", 2), ("normal", 1)):
        s = open_store(data, fsync=fsync)
        assert isinstance(s, SQLiteStore)
        s.append("x", [make_event(0)] if fsync == "full" else [make_event(1)])
        db = s._conn()
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == level
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
        assert s._journal("x").durable is (fsync == "full")
        s.close()
        s.close()  # idempotent
        with pytest.raises(StoreError, match="closed"):
            s.read("x")
    assert data.stat().st_mode & 0o777 == 0o700
    assert (data / "sessionactors.db").stat().st_mode & 0o077 == 0
    journal = journal_path(data, "x")
    for directory in (data / "journals", journal.parent):
        assert directory.stat().st_mode & 0o777 == 0o700
    assert journal.stat().st_mode & 0o077 == 0
    assert not (data / "events").exists()


# -- durability and concurrency -------------------------------------------------------


@pytest.mark.parametrize("fsync", ["full", "normal"])
def test_sigkilled_writer_loses_no_acknowledged_event(tmp_path: Path, spawn, fsync: str) -> None:
    data, sid = tmp_path / "data", "crashy"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    acked = -1
    for round_no in range(15):
        child_seed, first = rng.randrange(2**32), acked + 1
        proc = spawn(APPENDER, str(data), fsync, sid, str(child_seed))
        out = Pipe(proc)
        deadline = time.monotonic() + 60
        assert out.readline(deadline) == f"ready {first}"
        # Kill after a random number of acknowledgements; the child keeps appending
        # meanwhile, so the signal lands at an arbitrary point of the append loop.
        lines = [out.readline(deadline) for _ in range(rng.randint(1, 150))]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        lines += out.complete_lines(time.monotonic() + 30)
        assert all(line.startswith("ack ") for line in lines), lines
        acked = max(int(line.split()[1]) for line in lines)

        with closing(SQLiteStore(data, fsync=fsync)) as s:
            events = s.read(sid)
        ids = [e["id"] for e in events]
        last = len(ids) - 1
        context = f"seed {seed}, round {round_no}"
        assert ids == list(range(len(ids))), context  # contiguous from 0
        assert last >= acked, f"{context}: acknowledged {acked}, stored up to {last}"
        for event in events:  # every stored event is whole, acknowledged or not
            assert event == make_event(event["id"]), context
        # Replay the child's batch sizes: what is stored must end on a batch boundary.
        batches, end = random.Random(child_seed), first - 1
        while end < last:
            end += batches.randint(1, 5)
        assert end == last, f"{context}: half a batch stored (up to {last}, batch ends at {end})"
        acked = last  # the next child continues after what is stored


def test_concurrent_writers_in_separate_processes(tmp_path: Path, spawn) -> None:
    data, writers, count = tmp_path / "data", 8, 200
    # No store exists yet: the writers also race to create and migrate the file.
    run_concurrent_writers(spawn, data, "w", writers, count)
    with closing(SQLiteStore(data)) as s:
        for n in range(writers):
            assert s.read(f"w{n}") == [make_event(i) for i in range(count)]


# -- schema versions and foreign files --------------------------------------------------

# The schema as version 1 shipped it, written out here rather than imported so that
# a change to the module's migration steps cannot silently change the old format.
V1_DDL = [
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
    """CREATE TABLE sessions (session_id TEXT PRIMARY KEY, owner TEXT, args TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL DEFAULT 0, last_active REAL NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'live', runtime_state TEXT NOT NULL DEFAULT '{}')""",
    """CREATE TABLE events (session_id TEXT NOT NULL, id INTEGER NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (session_id, id)) WITHOUT ROWID""",
    "INSERT INTO meta VALUES ('app', 'sessionactors'), ('schema_version', '1')",
    """INSERT INTO sessions VALUES ('old', '7', '{"model":"m"}', 5.0, 6.0, 'passivated', '{"cwd":"/w"}'),
        ('older', NULL, '{}', 1.0, 2.0, 'live', '{}')""",
]


def _make_v1(data: Path) -> Path:
    data.mkdir(parents=True)
    path = data / "sessionactors.db"
    db = sqlite3.connect(path)
    for statement in V1_DDL:
        db.execute(statement)
    db.executemany(
        "INSERT INTO events VALUES ('old', ?, ?)",
        [(i, json.dumps(make_event(i), separators=(",", ":"))) for i in range(50)],
    )
    db.commit()
    db.close()
    return path


def _tables(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as db, db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _columns(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as db, db:
        return [r[1] for r in db.execute("PRAGMA table_info(sessions)")]


def test_v1_database_is_migrated_keeping_data(tmp_path: Path) -> None:
    path = _make_v1(tmp_path / "data")
    with closing(SQLiteStore(tmp_path / "data")) as s:
        assert s.get_session("old") == SessionRecord(
            "old", owner="7", owner_login=None, args={"model": "m"}, created_at=5.0, last_active=6.0,
            state="passivated", runtime_state={"cwd": "/w"}, token_version=0,
        )  # fmt: skip
        assert [r.session_id for r in s.list_sessions()] == ["older", "old"]
        assert s.read("old") == [make_event(i) for i in range(50)]
        s.append("old", [make_event(50)])
        s.update_session("old", owner_login="octocat", token_version=4)
    with closing(SQLiteStore(tmp_path / "data")) as s:  # reopening a v4 file changes nothing
        rec = s.get_session("old")
        assert rec is not None and (rec.owner_login, rec.token_version) == ("octocat", 4)
        assert s.last_event_id("old") == 50
    with closing(sqlite3.connect(path)) as db, db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("4",)
        assert _tables(path) == {"meta", "sessions"}  # the events moved into journals
    assert not (tmp_path / "data" / "events").exists()
    assert len(journal_path(tmp_path / "data", "old").read_bytes().splitlines()) == 1 + 51
    assert {"owner_login", "token_version"} <= set(_columns(path))


def test_failed_migration_leaves_the_old_schema_intact(tmp_path: Path, monkeypatch) -> None:
    path = _make_v1(tmp_path / "data")
    # A broken last SQL step: the steps before it in the same transaction are undone too.
    *done, last = sqlite_store._MIGRATIONS
    broken = [*done, (*last, "CREATE TABLE extra (a)", "THIS IS NOT SQL")]
    monkeypatch.setattr(sqlite_store, "_MIGRATIONS", broken)
    with pytest.raises(StoreError):
        SQLiteStore(tmp_path / "data")
    with closing(sqlite3.connect(path)) as db, db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("1",)
        assert db.execute("SELECT count(*) FROM events").fetchone() == (50,)
    assert _tables(path) == {"meta", "sessions", "events"}
    assert "owner_login" not in _columns(path)
    assert not (tmp_path / "data" / "events").exists()  # nothing was moved


def test_newer_schema_version_is_refused_untouched(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with closing(SQLiteStore(data)) as s:
        s.append("s", [make_event(0)])
    path = data / "sessionactors.db"
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    before = _sha(path)
    with pytest.raises(SchemaMismatch, match="newer"):
        SQLiteStore(data)
    assert _sha(path) == before


@pytest.mark.parametrize(
    "ddl",
    [
        ["CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)", "INSERT INTO users VALUES (1, 'ann')"],
        ["CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)", "INSERT INTO meta VALUES ('app', 'other')"],
        ["CREATE TABLE meta (id INTEGER, blob BLOB)"],
    ],
    ids=["other-tables", "other-app-marker", "other-meta-table"],
)
def test_foreign_sqlite_database_is_refused_untouched(tmp_path: Path, ddl: list[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    path = data / "sessionactors.db"
    with closing(sqlite3.connect(path)) as db, db:
        for statement in ddl:
            db.execute(statement)
    before, files = _sha(path), sorted(os.listdir(data))
    with pytest.raises(StoreCorrupt) as info:
        SQLiteStore(data)
    assert str(path) in str(info.value) and "did not create" in str(info.value)
    assert _sha(path) == before and sorted(os.listdir(data)) == files


def test_garbage_file_is_refused_untouched(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    path = data / "sessionactors.db"
    path.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(StoreCorrupt) as info:
        SQLiteStore(data)
    assert str(path) in str(info.value) and "not an SQLite database" in str(info.value)
    assert path.read_bytes() == b"this is not a database\n" * 200
    assert os.listdir(data) == ["sessionactors.db"]


# -- event shards -------------------------------------------------------------------------


def _shard_rows(path: Path, sid: str | None = None) -> list[tuple[str, int]]:
    with closing(sqlite3.connect(path)) as db, db:
        where, params = ("WHERE session_id = ?", (sid,)) if sid is not None else ("", ())
        return db.execute(
            f"SELECT session_id, id FROM events {where} ORDER BY session_id, id", params
        ).fetchall()


def test_concurrent_writers_on_many_sessions_all_succeed(tmp_path: Path, spawn) -> None:
    data, writers, count = tmp_path / "data", 24, 40
    SQLiteStore(data).close()
    run_concurrent_writers(spawn, data, "c", writers, count)
    with closing(SQLiteStore(data)) as s:
        for n in range(writers):
            assert s.read(f"c{n}") == [make_event(i) for i in range(count)]


@pytest.mark.parametrize("garbage", [b"this is not a journal\n" * 200, b"\0" * 5000], ids=["text", "zeros"])
def test_foreign_file_at_a_journal_path_is_refused_untouched(tmp_path: Path, garbage: bytes) -> None:
    data = tmp_path / "data"
    SQLiteStore(data).close()
    path = journal_path(data, "victim")
    path.parent.mkdir(parents=True)
    path.write_bytes(garbage)
    with closing(SQLiteStore(data)) as s:
        for call in (
            lambda: s.read("victim"),
            lambda: s.last_event_id("victim"),
            lambda: s.append("victim", [make_event(0)]),
        ):
            with pytest.raises(StoreCorrupt) as info:
                call()
            assert str(path) in str(info.value) and "header" in str(info.value)
        s.create_session(SessionRecord("other-record"))  # the registry still works
        s.append("other", [make_event(0)])  # and so do other sessions
    assert path.read_bytes() == garbage


def test_delete_removes_the_journal(store: SQLiteStore) -> None:
    store.create_session(SessionRecord("gone"))
    store.create_session(SessionRecord("kept"))
    store.append("gone", [make_event(i) for i in range(20)])
    store.append("kept", [make_event(i) for i in range(3)])
    path = journal_path(store.data_dir, "gone")
    assert path.exists()
    assert store.delete_session("gone") is True
    assert not path.exists() and store.read("gone") == [] and store.last_event_id("gone") == -1
    assert store.read("kept") == [make_event(i) for i in range(3)]
    assert store.get_session("gone") is None and store.delete_session("gone") is False
    store.append("gone", [make_event(0)])  # a new session of that id starts at 0 again
    assert store.read("gone") == [make_event(0)]


def _make_v2(data: Path, sessions: int, per_session: int) -> Path:
    """A version 2 store as the previous release wrote it: events in the main file."""
    SQLiteStore(data).close()  # the current schema, then taken back to version 2 below
    path = data / "sessionactors.db"
    rows = [
        (f"v2-{n}", i, json.dumps(make_event(i), separators=(",", ":"), ensure_ascii=False))
        for n in range(sessions)
        for i in range(per_session + n)
    ]
    shutil.rmtree(data / "events", ignore_errors=True)
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE events (session_id TEXT NOT NULL, id INTEGER NOT NULL, body TEXT NOT NULL, "
            "PRIMARY KEY (session_id, id)) WITHOUT ROWID"
        )
        db.executemany("INSERT INTO events VALUES (?, ?, ?)", rows)
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        db.execute("DELETE FROM meta WHERE key = 'shards'")
        db.execute("INSERT INTO sessions (session_id, created_at) VALUES ('v2-0', 1.0)")
    return path


def test_v2_database_is_migrated_into_journals(tmp_path: Path) -> None:
    data = tmp_path / "data"
    path = _make_v2(data, sessions=30, per_session=10)
    with closing(SQLiteStore(data, shards=5)) as s:
        assert s.shards == 5
        for n in range(30):
            assert s.read(f"v2-{n}") == [make_event(i) for i in range(10 + n)]
        assert s.last_event_id("v2-29") == 38
        s.append("v2-0", [make_event(10)])
        assert s.get_session("v2-0") == SessionRecord("v2-0", created_at=1.0)
    assert _tables(path) == {"meta", "sessions"}
    with closing(sqlite3.connect(path)) as db, db:
        meta = dict(db.execute("SELECT key, value FROM meta"))
    assert (meta["schema_version"], meta["shards"]) == ("4", "5")
    assert not (data / "events").exists()
    total = sum(len(p.read_bytes().splitlines()) - 1 for p in (data / "journals").glob("*/*.log"))
    assert total == sum(10 + n for n in range(30)) + 1


def test_interrupted_v2_migration_resumes(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    path = _make_v2(data, sessions=12, per_session=20)
    monkeypatch.setattr(sqlite_store, "MOVE_BATCH", 37)
    real_tx, calls = sqlite_store.Shard.tx, []

    def failing_tx(self: Any, doing: str) -> Any:
        calls.append(doing)
        if len(calls) == 4:
            raise StoreError("simulated crash in the middle of the move")
        return real_tx(self, doing)

    monkeypatch.setattr(sqlite_store.Shard, "tx", failing_tx)
    with pytest.raises(StoreError, match="simulated"):
        SQLiteStore(data, shards=3)
    with closing(sqlite3.connect(path)) as db, db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
        assert db.execute("SELECT value FROM meta WHERE key = 'shards'").fetchone() == ("3",)
        left = db.execute("SELECT count(*) FROM events").fetchone()[0]
    assert 0 < left < sum(20 + n for n in range(12))
    monkeypatch.setattr(sqlite_store.Shard, "tx", real_tx)
    with closing(SQLiteStore(data, shards=9)) as s:  # resumes with the recorded count
        assert s.shards == 3
        for n in range(12):
            assert s.read(f"v2-{n}") == [make_event(i) for i in range(20 + n)]
    assert _tables(path) == {"meta", "sessions"}


@pytest.mark.parametrize(
    ("code", "busy"),
    [(5, True), (261, True), (517, True), (773, True), (6, False), (1, False), (10, False)],
    ids=["BUSY", "BUSY_RECOVERY", "BUSY_SNAPSHOT", "BUSY_TIMEOUT", "LOCKED", "ERROR", "IOERR"],
)
def test_every_busy_code_is_retried_and_nothing_else(code: int, busy: bool) -> None:
    # CI once failed a writer on an extended busy code that an equality test let through.
    exc = sqlite3.OperationalError("database is locked" if busy else "other")
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    assert is_busy(exc) is busy
