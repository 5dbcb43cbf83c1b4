"""The ``Store`` contract, run against every backend: the embedded SQLite store and the
PostgreSQL store on a real server (tests/pg_harness.py).

What a backend must do for the session actors: exact JSON round trips, contiguous ids
(a gap or a reuse stores nothing), ordered range reads, records, deletion, the start-up
reconciliation, durability across handles, concurrent writers of different sessions,
a handle that notices a fork, and a closed handle that refuses.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionactors.errors import EventIdConflict, StoreError
from sessionactors.store import SessionRecord, Store, open_store

Factory = Callable[[], Store]


def make_event(i: int, **extra: Any) -> dict[str, Any]:
    return {"id": i, "timestamp": "2026-12-03T12:00:00+00:00", "source": "agent", "n": i, **extra}


@pytest.fixture(params=["sqlite", "postgres"])
def open_handle(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """Opens handles on one backing store (the same data dir, or the same database)."""
    if request.param == "sqlite":
        kwargs: dict[str, Any] = {}
    else:
        kwargs = {"url": request.getfixturevalue("pg_url"), "node": "node-a"}
    opened: list[Store] = []

    def factory() -> Store:
        store = open_store(tmp_path / "data", **kwargs)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(open_handle: Factory) -> Store:
    return open_handle()


def test_round_trip_preserves_exact_json(store: Store) -> None:
    events = [
        {"id": 0, "timestamp": "2026-11-29T10:00:00.123456+00:00", "source": "user", "message": "hé ☃ 🙂"},
        {"id": 1, "z": 1, "a": [1, 2.5, None, True, False, {"n": {"m": []}}], "big": 2**62, "f": 1e-7},
        {"id": 2, "content": 'line\nbreak\t"quoted" \\ \u0000', "cause": 1, "extras": {}},
    ]
    store.append("s", events)
    back = store.read("s")
    assert back == events
    assert [json.dumps(e) for e in back] == [json.dumps(e) for e in events]  # key order kept
    assert store.last_event_id("s") == 2
    assert store.last_event_id("other") == -1
    assert store.read("other") == []


def test_append_rejects_gaps_and_reuse_and_stores_nothing(store: Store) -> None:
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


def test_read_ranges_at_the_edges(store: Store) -> None:
    store.append("s", [make_event(i) for i in range(10)])

    def ids(evs: list[dict[str, Any]]) -> list[int]:
        return [e["id"] for e in evs]

    assert ids(store.read("s", 0)) == list(range(10))
    assert ids(store.read("s", -5)) == list(range(10))
    assert ids(store.read("s", 9)) == [9]
    assert store.read("s", 10) == []
    assert ids(store.read("s", 0, limit=3)) == [0, 1, 2]
    assert ids(store.read("s", 8, limit=5)) == [8, 9]
    assert store.read("s", 0, limit=0) == []
    with pytest.raises(ValueError):
        store.read("s", 0, limit=-1)


def test_replay_of_10000_events_in_order(store: Store) -> None:
    for start in range(0, 10_000, 500):
        store.append("big", [make_event(i) for i in range(start, start + 500)])
    store.append("neighbour", [make_event(0)])
    events = store.read("big", 0)
    assert [e["id"] for e in events] == list(range(10_000))
    assert events[1234] == make_event(1234) and events[-1] == make_event(9999)
    assert [e["id"] for e in store.read("big", 9990, limit=1000)] == list(range(9990, 10_000))


def test_session_record_crud(store: Store) -> None:
    rec = SessionRecord(
        "s1", owner="42", owner_login="octocat", args={"model": "x", "n": [1]}, created_at=20.0,
        last_active=21.5, runtime_state={"cwd": "/w", "env": {"A": "é"}}, token_version=1,
    )  # fmt: skip
    store.create_session(rec)
    assert store.get_session("s1") == rec
    assert store.get_session("nope") is None
    with pytest.raises(StoreError, match="exists"):
        store.create_session(SessionRecord("s1"))
    with pytest.raises(StoreError, match="exists"):  # all or nothing: s9 is not created either
        store.create_sessions([SessionRecord("s9"), SessionRecord("s1")])
    assert store.get_session("s9") is None
    store.create_sessions(
        [SessionRecord("s0", created_at=10.0, state="passivated"), SessionRecord("s2", created_at=30.0)]
    )
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
    assert [r.session_id for r in store.list_sessions()] == ["s0", "s1", "s2"]
    assert [r.session_id for r in store.list_sessions("passivated")] == ["s0", "s1"]
    assert [r.session_id for r in store.list_sessions("live")] == ["s2"]
    assert (store.count_sessions(), store.count_sessions("passivated"), store.count_sessions("failed")) == (
        3,
        2,
        0,
    )


def test_delete_removes_record_and_events(store: Store) -> None:
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
    store.append("a", [make_event(0)])  # a deleted id starts over from 0
    assert store.last_event_id("a") == 0


def test_reconcile_live_sessions(store: Store) -> None:
    for sid, created, state in [
        ("b", 2.0, "live"),
        ("a", 1.0, "live"),
        ("c", 3.0, "passivated"),
        ("d", 4.0, "failed"),
    ]:
        store.create_session(SessionRecord(sid, created_at=created, state=state))
    assert store.reconcile_live_sessions() == ["a", "b"]  # type: ignore[attr-defined]
    assert {r.session_id: r.state for r in store.list_sessions()} == {
        "a": "passivated", "b": "passivated", "c": "passivated", "d": "failed",
    }  # fmt: skip
    assert store.reconcile_live_sessions() == []  # type: ignore[attr-defined]


def test_what_one_handle_wrote_another_reads_after_close(open_handle: Factory) -> None:
    first = open_handle()
    first.create_session(SessionRecord("s", created_at=1.0, args={"k": "v"}))
    first.append("s", [make_event(i) for i in range(50)])
    first.update_session("s", state="passivated")  # a passivation: the copy ends
    first.close()
    with pytest.raises(StoreError, match="closed"):
        first.read("s")
    first.close()  # idempotent
    second = open_handle()
    assert [e["id"] for e in second.read("s")] == list(range(50))
    record = second.get_session("s")
    assert record is not None and record.args == {"k": "v"} and record.state == "passivated"
    second.append("s", [make_event(50)])  # a rehydration continues the ids
    assert second.last_event_id("s") == 50


def test_concurrent_writers_of_different_sessions_lose_nothing(open_handle: Factory) -> None:
    writers = 4
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def write(n: int) -> None:
        try:
            store = open_handle()  # a handle per thread (SQLite's are single-threaded)
            try:
                start.wait(timeout=60)
                for batch in range(0, 200, 10):
                    store.append(f"w{n}", [make_event(i, writer=n) for i in range(batch, batch + 10)])
            finally:
                store.close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    reader = open_handle()
    for n in range(writers):
        events = reader.read(f"w{n}")
        assert [e["id"] for e in events] == list(range(200)) and {e["writer"] for e in events} == {n}


def test_inherited_handle_reconnects_after_fork(store: Store) -> None:
    store.append("forked", [make_event(0)])

    def child() -> None:
        store.append("forked", [make_event(1), make_event(2)])  # on a fresh connection

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert [e["id"] for e in store.read("forked")] == [0, 1, 2]  # the parent's connection still works


def test_quota_refuses_an_append_past_it_and_stores_nothing(
    request: pytest.FixtureRequest, tmp_path: Path, open_handle: Factory
) -> None:
    """Issue 18 item 9 on every backend: the session's stored bytes (``event_size``) are
    capped; the append that would pass the cap raises QuotaExceeded and stores nothing,
    a later one that fits is stored, and other sessions are not charged."""
    from sessionactors.errors import QuotaExceeded
    from sessionactors.store.base import event_size

    probe = open_handle()
    kwargs: dict[str, Any] = {"url": getattr(probe, "url", None)}
    if kwargs["url"]:
        kwargs["node"] = "node-a"
    limit = 3 * event_size(make_event(0, pad="x" * 100))
    store = open_store(tmp_path / "data", quota_bytes=limit, **kwargs)
    try:
        assert store.quota_bytes == limit
        store.append("s", [make_event(0, pad="x" * 100), make_event(1, pad="x" * 100)])
        with pytest.raises(QuotaExceeded) as refused:
            store.append("s", [make_event(2, pad="x" * 100), make_event(3, pad="x" * 100)])
        assert refused.value.limit == limit and refused.value.session_id == "s"
        assert store.last_event_id("s") == 1  # nothing of the refused batch
        store.append("s", [make_event(2, pad="x" * 100)])  # this one still fits
        assert [e["id"] for e in store.read("s")] == [0, 1, 2]
        store.append("other", [make_event(0, pad="x" * 100)])  # another session's own budget
        assert store.event_bytes("s") == limit
    finally:
        store.close()


def test_workspace_archives_only_where_the_store_is_shared(store: Store, tmp_path: Path) -> None:
    """The embedded store needs no archives (one disk); the shared one keeps them (issue 16)."""
    if not store.supports_workspace_archives:
        assert not hasattr(store, "put_workspace_archive")
        return
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "f").write_text("x")
    store.acquire_lease("s")  # type: ignore[attr-defined]
    info = store.put_workspace_archive("s", str(ws), kind="passivation", max_bytes=1 << 20)  # type: ignore[attr-defined]
    assert store.workspace_archive("s") == info  # type: ignore[attr-defined]
