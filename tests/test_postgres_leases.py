"""Ownership leases with fencing on a real PostgreSQL: two store handles act as two nodes.

A lease is taken by a session's first append, refused to another node while live, taken
over once expired; the node that lost it cannot append or update the record again, and
no id is ever lost or stored twice, even with takeovers racing appends.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from sessionactors.errors import LeaseLost
from sessionactors.store import SessionRecord
from sessionactors.store.postgres import PostgresStore

from .daemon_harness import wait_for

Node = Callable[..., PostgresStore]


def ev(i: int, **extra: Any) -> dict[str, Any]:
    return {"id": i, "source": "agent", **extra}


@pytest.fixture
def node(pg_url: str) -> Iterator[Node]:
    """``node("a")``: a store handle for node "a" (short leases: 2 s, renewed every 0.5 s)."""
    opened: list[PostgresStore] = []

    def make(name: str, ttl: float = 2.0, renew: float = 0.5) -> PostgresStore:
        store = PostgresStore(pg_url, node=name, lease_ttl=ttl, lease_renew=renew)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def expire(url: str, session_id: str) -> None:
    """Make the lease look unrenewed past its TTL (what a cut-off node's lease becomes)."""
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(
            "UPDATE sa_leases SET expires_at = clock_timestamp() - interval '1 second' WHERE session_id = %s",
            (session_id,),
        )


def lease_row(url: str, session_id: str) -> tuple[Any, ...] | None:
    with psycopg.connect(url, autocommit=True) as db:
        return db.execute("SELECT node, epoch FROM sa_leases WHERE session_id = %s", (session_id,)).fetchone()


def test_a_live_lease_refuses_another_node(node: Node, pg_url: str) -> None:
    a, b = node("a"), node("b")
    a.append("s", [ev(0), ev(1)])
    assert lease_row(pg_url, "s") == ("a", 1) and a.lease_node("s") == "a"
    with pytest.raises(LeaseLost, match="owned by node 'a' at epoch 1"):
        b.append("s", [ev(2)])
    with pytest.raises(LeaseLost, match="owned by node 'a'"):
        b.acquire_lease("s")
    assert b.last_event_id("s") == 1  # nothing of b's was stored
    a.append("s", [ev(2)])  # the owner goes on
    assert [e["id"] for e in b.read("s")] == [0, 1, 2]


def test_takeover_after_expiry_fences_the_stale_writer(node: Node, pg_url: str) -> None:
    a, b = node("a"), node("b")
    a.create_session(SessionRecord("s", created_at=1.0))
    a.append("s", [ev(i, by="a") for i in range(5)])
    assert a._keeper is not None
    a._keeper.stop()  # node a is cut off: it renews nothing any more
    # b takes over as soon as a's lease has expired (waiting for the TTL itself, 2 s).
    wait_for(lambda: _try_acquire(b, "s"), 15, "the lease to expire and b to take it")
    assert lease_row(pg_url, "s") == ("b", 2)
    b.append("s", [ev(i, by="b") for i in range(b.last_event_id("s") + 1, 8)])
    with pytest.raises(LeaseLost, match="node 'a' lost its lease \\(epoch 1\\) to node 'b' at epoch 2"):
        a.append("s", [ev(5, by="a")])
    with pytest.raises(LeaseLost):  # stays refused, without asking the database again
        a.append("s", [ev(8, by="a")])
    with pytest.raises(LeaseLost):  # nor can it overwrite the new owner's record
        a.update_session("s", state="passivated", runtime_state={"stale": True})
    record = b.get_session("s")
    assert record is not None and record.state == "live" and record.runtime_state == {}
    events = b.read("s")
    assert [(e["id"], e["by"]) for e in events] == [(i, "a") for i in range(5)] + [
        (i, "b") for i in range(5, 8)
    ]


def _try_acquire(store: PostgresStore, session_id: str) -> bool:
    try:
        store.acquire_lease(session_id)
    except LeaseLost:
        return False
    return True


def test_renewal_keeps_an_idle_lease_past_its_ttl(node: Node) -> None:
    a, b = node("a", ttl=1.0, renew=0.2), node("b")
    a.append("s", [ev(0)])
    deadline = time.monotonic() + 3.0  # three TTLs of idleness: still a's
    while time.monotonic() < deadline:
        assert not _try_acquire(b, "s")
        time.sleep(0.1)
    a.append("s", [ev(1)])


def test_renewal_notices_a_takeover(node: Node, pg_url: str) -> None:
    a, b = node("a"), node("b")
    a.append("s", [ev(0)])
    a.append("t", [ev(0)])
    expire(pg_url, "s")
    b.acquire_lease("s")
    a.renew_leases()  # t is renewed, s is found lost
    with pytest.raises(LeaseLost, match="lost its lease"):
        a.leases.epoch("s")
    assert a.leases.epoch("t") == 1
    a.append("t", [ev(1)])


def test_a_restarted_copy_on_the_same_node_takes_over_at_once(node: Node, pg_url: str) -> None:
    old, new = node("a"), node("a")
    old.append("s", [ev(0)])
    assert new.acquire_lease("s") == 2  # no wait for the TTL: the node's own lease
    new.append("s", [ev(1)])
    with pytest.raises(LeaseLost):
        old.append("s", [ev(2)])
    assert lease_row(pg_url, "s") == ("a", 2)


def test_release_frees_at_once_and_the_epoch_keeps_growing(node: Node, pg_url: str) -> None:
    a, b = node("a"), node("b")
    a.create_session(SessionRecord("s", created_at=1.0))
    a.append("s", [ev(0)])
    a.update_session("s", state="passivated")  # what a passivating copy writes last
    assert lease_row(pg_url, "s") == ("a", 1)  # a record update does not release
    a.release_lease("s")
    assert lease_row(pg_url, "s") == (None, 1) and a.lease_node("s") is None
    assert b.acquire_lease("s") == 2  # at once: released, not expired
    b.append("s", [ev(1)])
    b.release_lease("s")
    a.append("s", [ev(2)])  # a new activation on a: epoch 3, never back to 1
    assert lease_row(pg_url, "s") == ("a", 3)


def test_reconcile_releases_this_nodes_leases_and_spares_other_nodes_sessions(
    node: Node, pg_url: str
) -> None:
    a, b = node("a"), node("b")
    for sid in ("on-a", "on-b"):
        a.create_session(SessionRecord(sid, created_at=1.0))
    a.append("on-a", [ev(0)])
    b.append("on-b", [ev(0)])
    restarted = node("a")  # node a restarts: none of its copies survived
    assert restarted.reconcile_live_sessions() == ["on-a"]
    assert lease_row(pg_url, "on-a") == (None, 1)
    assert lease_row(pg_url, "on-b") == ("b", 1)
    record = a.get_session("on-b")
    assert record is not None and record.state == "live"


def test_takeovers_racing_appends_lose_and_duplicate_nothing(node: Node, pg_url: str) -> None:
    """Two nodes append to one session while a third party keeps expiring the lease:
    every append that returned is in the log, once, at the ids it was given."""
    nodes = [node("a"), node("b")]
    acked: dict[int, str] = {}
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(store: PostgresStore) -> None:
        rng = random.Random(store.node)
        try:
            while not stop.is_set():
                try:
                    if store.leases.epoch("s") is None:
                        store.acquire_lease("s")
                    first = store.last_event_id("s") + 1
                    batch = [ev(first + k, by=store.node) for k in range(rng.randint(1, 3))]
                    store.append("s", batch)
                except LeaseLost:
                    store.leases.forget("s")
                    continue
                with lock:
                    for e in batch:
                        assert e["id"] not in acked, f"id {e['id']} acknowledged twice"
                        acked[e["id"]] = store.node
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    takeovers = 0
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline and not errors:
        expire(pg_url, "s")
        takeovers += 1
        time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    events = nodes[0].read("s")
    assert [e["id"] for e in events] == list(range(len(events)))  # contiguous, no duplicate
    assert {e["id"]: e["by"] for e in events} == acked  # every acknowledged append, as written
    assert {"a", "b"} <= set(acked.values()), "both nodes should have owned the session"
    assert lease_row(pg_url, "s")[1] > 2  # type: ignore[index]
