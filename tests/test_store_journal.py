"""Tests of the schema 4 layout: one journal per session. The migration of a data dir
written by the schema 3 (sharded) code, interrupted and SIGKILLed migrations, torn and
damaged journals, two writers on one session, and the per-session quota."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from sessionactors.errors import EventIdConflict, QuotaExceeded, StoreCorrupt, StoreError
from sessionactors.store import SessionRecord, event_size
from sessionactors.store import migrate as migrate_mod
from sessionactors.store.journal import journal_path, write_journal
from sessionactors.store.sqlite import SQLiteStore
from sessionactors.store.sqlite_shards import Shard, shard_index

DATA = Path(__file__).parent / "data"


def ev(i: int, sid: str = "s") -> dict[str, Any]:
    """The events of tests/data/make_store_v3.py (the same body for the same id)."""
    return {
        "id": i,
        "timestamp": f"2026-11-29T10:00:{i % 60:02d}.123456+00:00",
        "source": "environment",
        "observation": "run",
        "cause": i - 1,
        "content": f"{sid} out {i} \u00e9\u2603 " * (i * 37 % 40),
        "extras": {"command": f"echo {i}", "exit_code": i % 3},
    }


def _meta(data: Path) -> dict[str, str]:
    with closing(sqlite3.connect(data / "sessionactors.db")) as db:
        return dict(db.execute("SELECT key, value FROM meta"))


def make_v3(data: Path, sessions: int, per_session: int, shards: int = 4) -> dict[str, int]:
    """A schema 3 store (events in shards) made with the shard code this version keeps."""
    SQLiteStore(data).close()
    with closing(sqlite3.connect(data / "sessionactors.db")) as db, db:
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('shards', ?)", (str(shards),))
    counts = {f"m{n}": per_session + n % 7 for n in range(sessions)}
    opened: dict[int, Shard] = {}
    for sid, count in counts.items():
        k = shard_index(sid, shards)
        shard = opened.setdefault(k, Shard(data / "events" / f"shard-{k}.db", "normal"))
        rows = [
            (sid, i, json.dumps(ev(i, sid), separators=(",", ":"), ensure_ascii=False)) for i in range(count)
        ]
        with shard.tx("test") as db:
            db.executemany("INSERT INTO events VALUES (?, ?, ?)", rows)
    for shard in opened.values():
        shard.close()
    return counts


def test_a_data_dir_of_the_schema_3_code_migrates_on_open(tmp_path: Path) -> None:
    # Written by the previous release's own code (see tests/data/make_store_v3.py).
    with tarfile.open(DATA / "store-v3.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    data = tmp_path / "data"
    expected = json.loads((tmp_path / "expected.json").read_text())
    assert _meta(data)["schema_version"] == "3" and (data / "events").is_dir()
    with closing(SQLiteStore(data)) as s:
        for sid, events in expected.items():
            assert s.read(sid) == events, sid
            assert s.last_event_id(sid) == len(events) - 1
            tail = max(len(events) - 2, 0)
            assert s.read(sid, tail, limit=1) == events[tail : tail + 1]
        rec = s.get_session("weird/../id \u00e9")
        assert rec == SessionRecord(
            "weird/../id \u00e9", owner="1", owner_login="u1", args={"n": 1}, created_at=1.0,
            last_active=1.5, state="passivated", runtime_state={"cwd": "/w/1"}, token_version=1,
        )  # fmt: skip
        assert s.count_sessions() == 5 and s.get_session("no-events") is not None
        assert s.read("no-events") == [] and s.last_event_id("no-events") == -1
        s.append("big", [ev(2000, "big")])  # the next id, never a reused one
        with pytest.raises(EventIdConflict):
            s.append("plain", [ev(9, "plain")])
    assert _meta(data)["schema_version"] == "4" and not (data / "events").exists()
    # The odd id got a name that stays inside the journal directory.
    path = journal_path(data, "weird/../id \u00e9")
    assert path.parent.parent == data / "journals" and path.name.startswith("~")
    with closing(SQLiteStore(data)) as s:  # a second open changes nothing
        assert s.read("big") == [*expected["big"], ev(2000, "big")]


def test_an_interrupted_migration_resumes(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    counts = make_v3(data, sessions=40, per_session=5)
    real, calls = migrate_mod.write_journal, []

    def failing(*args: Any, **kwargs: Any) -> None:
        calls.append(args[1])
        if len(calls) == 17:
            raise StoreError("simulated crash in the middle of the move")
        real(*args, **kwargs)

    monkeypatch.setattr(migrate_mod, "write_journal", failing)
    with pytest.raises(StoreError, match="simulated"):
        SQLiteStore(data)
    assert _meta(data)["schema_version"] == "3"
    assert 0 < len(list((data / "journals").glob("*/*.log"))) < 40
    monkeypatch.setattr(migrate_mod, "write_journal", real)
    with closing(SQLiteStore(data)) as s:
        for sid, count in counts.items():
            assert s.read(sid) == [ev(i, sid) for i in range(count)], sid
    assert _meta(data)["schema_version"] == "4" and not (data / "events").exists()


MIGRATOR = """
import sys, time
from pathlib import Path
from sessionactors.store import migrate
from sessionactors.store.sqlite import SQLiteStore
real = migrate.write_journal
def announcing(*args, **kwargs):
    real(*args, **kwargs)
    print("wrote", args[1], flush=True)
migrate.write_journal = announcing
SQLiteStore(Path(sys.argv[1])).close()
print("done", flush=True)
"""


@pytest.mark.parametrize("after", [1, 9, 23])
def test_a_sigkilled_migration_loses_nothing(tmp_path: Path, after: int) -> None:
    data = tmp_path / "data"
    counts = make_v3(data, sessions=30, per_session=20)
    proc = subprocess.Popen(
        [sys.executable, "-c", MIGRATOR, str(data)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        for _ in range(after):
            assert proc.stdout.readline().startswith(b"wrote"), proc.stderr.read() if proc.stderr else b""
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert _meta(data)["schema_version"] == "3"
    with closing(SQLiteStore(data)) as s:
        for sid, count in counts.items():
            assert s.read(sid) == [ev(i, sid) for i in range(count)], sid
            s.append(sid, [ev(count, sid)])  # and the next id follows on
    assert _meta(data)["schema_version"] == "4"


def test_a_damaged_shard_fails_only_its_sessions(tmp_path: Path) -> None:
    data = tmp_path / "data"
    counts = make_v3(data, sessions=12, per_session=3, shards=3)
    victim = data / "events" / "shard-1.db"
    victim.write_bytes(b"garbage, not a database\n" * 100)
    with closing(SQLiteStore(data)) as s:
        for sid, count in counts.items():
            if shard_index(sid, 3) == 1:
                with pytest.raises(StoreCorrupt) as info:
                    s.last_event_id(sid)
                assert str(victim) in str(info.value)
            else:
                assert s.read(sid) == [ev(i, sid) for i in range(count)]
        s.create_session(SessionRecord("fresh"))
        s.append("fresh", [ev(0)])  # new sessions have no shard: they work
    assert _meta(data)["unmigrated_shards"] == "1" and victim.exists()


# -- journals ---------------------------------------------------------------------------


def test_a_torn_last_batch_is_ignored_then_cut_off(tmp_path: Path) -> None:
    with closing(SQLiteStore(tmp_path / "d")) as s:
        s.append("t", [ev(0), ev(1)])
        path = journal_path(tmp_path / "d", "t")
        whole = path.read_bytes()
    # What a writer killed mid-batch leaves: whole lines of an unfinished batch, then a cut.
    torn = json.dumps(ev(2), separators=(",", ":")).encode() + b" \n" + b'{"id":3,"tim'
    path.write_bytes(whole + torn)
    with closing(SQLiteStore(tmp_path / "d")) as s:
        assert s.read("t") == [ev(0), ev(1)] and s.last_event_id("t") == 1
        s.append("t", [ev(2)])
        assert s.read("t") == [ev(0), ev(1), ev(2)]
    assert (
        path.read_bytes()
        == whole + json.dumps(ev(2), separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    )


def test_a_damaged_event_line_is_named(tmp_path: Path) -> None:
    with closing(SQLiteStore(tmp_path / "d")) as s:
        s.append("t", [ev(i) for i in range(5)])
    path = journal_path(tmp_path / "d", "t")
    raw = path.read_bytes()
    cut = raw.index(b'"id":2')
    path.write_bytes(raw[:cut] + b"#" + raw[cut + 1 :])
    with closing(SQLiteStore(tmp_path / "d")) as s:
        with pytest.raises(StoreCorrupt, match="not JSON") as info:
            s.read("t")
        assert str(path) in str(info.value)
        assert s.read("t", 3) == [ev(3), ev(4)]  # the lines after it are still readable


def test_two_writers_on_one_session_never_reuse_an_id(tmp_path: Path) -> None:
    data = tmp_path / "d"
    a, b = SQLiteStore(data), SQLiteStore(data)
    try:
        a.append("x", [ev(0)])
        b.append("x", [ev(1), ev(2)])  # b sees a's append through the file
        with pytest.raises(EventIdConflict, match="expected"):
            a.append("x", [ev(1)])  # a's index is stale: the file, not its memory, decides
        a.append("x", [ev(3)])
        assert a.read("x") == b.read("x") == [ev(i) for i in range(4)]
    finally:
        a.close()
        b.close()


def test_the_quota_refuses_an_append_and_keeps_what_is_stored(tmp_path: Path) -> None:
    data = tmp_path / "d"
    first = [ev(i) for i in range(10)]
    limit = sum(event_size(e) for e in first) + event_size(ev(10)) // 2
    with closing(SQLiteStore(data, quota_bytes=limit)) as s:
        s.append("q", first[:4])
        s.append("q", first[4:])
        assert s.event_bytes("q") == sum(event_size(e) for e in first)
        with pytest.raises(QuotaExceeded) as info:
            s.append("q", [ev(10)])
        exc = info.value
        assert (exc.used, exc.adding, exc.limit) == (s.event_bytes("q"), event_size(ev(10)), limit)
        assert exc.error_code == 507 and "quota" in str(exc) and "q" in str(exc)
        assert s.read("q") == first and s.last_event_id("q") == 9
        s.append("other", [ev(0)])  # another session has its own quota
    with closing(SQLiteStore(data)) as s:  # no quota: the session goes on with the next id
        s.append("q", [ev(10)])
        assert s.last_event_id("q") == 10
    with pytest.raises(ValueError, match="quota_bytes"):
        SQLiteStore(data, quota_bytes=0)


def test_a_session_actor_keeps_one_descriptor(tmp_path: Path) -> None:
    data = tmp_path / "d"
    with closing(SQLiteStore(data)) as s:
        before = len(os.listdir("/proc/self/fd"))
        for i in range(50):
            s.append("one", [ev(i)])
        assert s.read("one")[-1] == ev(49)
        assert len(os.listdir("/proc/self/fd")) == before + 1
        for n in range(200):  # a reader of many sessions (the gateway) keeps a bounded number
            s.last_event_id(f"r{n}")
            s.append(f"r{n}", [ev(0)])
        assert len(os.listdir("/proc/self/fd")) <= before + 64 + 1


def test_creating_a_journal_never_replaces_one_that_exists(tmp_path: Path) -> None:
    # Two incarnations that both found no journal: the later creation must not drop what
    # the earlier one already appended (a rename over it would).
    data = tmp_path / "d"
    with closing(SQLiteStore(data)) as s:
        s.append("race", [ev(0), ev(1)])
    path = journal_path(data, "race")
    before = path.read_bytes()
    write_journal(path, "race", [], replace=False)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left
