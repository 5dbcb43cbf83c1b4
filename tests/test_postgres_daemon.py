"""End to end on the PostgreSQL store: real daemons (actor system, gateway) on a real
PostgreSQL 15 server, real Socket.IO clients.

A single node runs fully on it (INIT, actions, events, passivation, rehydration); two
daemons sharing the store verify each other's tokens and hand a session over once it
passivated; a session live on one node is refused with an answer on another; a copy
whose lease was taken over stops at its next write and stores nothing.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from sessionactors.errors import LeaseLost
from sessionactors.store.postgres import PostgresStore

from .daemon_harness import Client, DaemonProcess, wait_for


def msg(text: str) -> dict[str, Any]:
    return {"action": "message", "args": {"content": text}}


def rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as db:
        cur = db.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


def session_state(daemon: DaemonProcess, ok: dict[str, Any]) -> Any:
    return daemon.http("GET", f"/api/sessions/{ok['session_id']}", token=ok["token"])[1].get("state")


def test_a_single_node_runs_fully_on_postgres(daemon_factory: Any, pg_url: str) -> None:
    daemon = daemon_factory(close_delay=1.0, store_url=pg_url, node_name="node-1")
    a = Client(daemon.url)
    ok = a.init()
    sid = ok["session_id"]
    a.send(msg("hello"))
    a.send({"action": "run", "args": {"command": "echo hi"}})
    events = a.wait_events(3)
    assert [e["id"] for e in events] == [0, 1, 2] and events[2]["extras"]["exit_code"] == 0
    status, info = daemon.http("GET", f"/api/sessions/{sid}", token=ok["token"])
    assert status == 200 and info["node"] == "node-1" and info["state"] == "live"
    # Everything is in PostgreSQL: the events as sent, the record, the lease, the secret.
    stored = rows(pg_url, "SELECT id, body FROM sa_events WHERE session_id = %s ORDER BY id", sid)
    assert [r[0] for r in stored] == [0, 1, 2] and '"message":"hello"' in stored[0][1]
    assert rows(pg_url, "SELECT node, epoch FROM sa_leases WHERE session_id = %s", sid) == [("node-1", 1)]
    assert rows(pg_url, "SELECT count(*) FROM sa_secrets WHERE name = 'token'") == [(1,)]
    assert (
        not (daemon.data_dir / "sessionactors.db").exists() and not (daemon.data_dir / "secret.key").exists()
    )
    a.close()
    wait_for(lambda: session_state(daemon, ok) == "passivated", 30, "passivation")
    assert rows(pg_url, "SELECT node FROM sa_leases WHERE session_id = %s", sid) == [(None,)]  # released
    # Marked failed meanwhile: the rehydration clears the mark and keeps the lease it took.
    rows(pg_url, "UPDATE sa_sessions SET state = 'failed' WHERE session_id = %s", sid)
    b = Client(daemon.url)
    try:
        again = b.init(token=ok["token"], latest=0)
        assert again["session_id"] == sid
        assert [e["id"] for e in b.wait_events(2)] == [1, 2]  # the replay after latest
        b.send(msg("after"))
        assert b.wait_events(3)[-1]["id"] == 3  # ids continue
        assert rows(pg_url, "SELECT node, epoch FROM sa_leases WHERE session_id = %s", sid) == [("node-1", 2)]
    finally:
        b.close()


def test_two_daemons_on_one_store_share_tokens_and_hand_a_session_over(
    daemon_factory: Any, pg_url: str
) -> None:
    one = daemon_factory(close_delay=1.0, store_url=pg_url, node_name="node-1")
    two = daemon_factory(close_delay=1.0, store_url=pg_url, node_name="node-2")
    a = Client(one.url)
    ok = a.init()
    for i in range(3):
        a.send(msg(f"m{i}"))
    a.wait_events(3)
    b = Client(two.url)
    try:
        # Live on node-1: node-2 verifies the token (shared secret) but may not take the session.
        refused = b.init(token=ok["token"])
        assert refused == {  # naming where it lives, for a client or a load balancer
            "error": f"This session is live on another node (node-1 at 127.0.0.1:{one.port}); try again later",
            "error_code": 503,
        }
        assert rows(pg_url, "SELECT node FROM sa_leases WHERE session_id = %s", ok["session_id"]) == [
            ("node-1",)
        ]
        a.close()
        wait_for(lambda: session_state(one, ok) == "passivated", 30, "passivation on node-1")
        joined = b.init(token=ok["token"], latest=-1)
        assert joined["session_id"] == ok["session_id"]
        assert [e["id"] for e in b.wait_events(3)] == [0, 1, 2]  # node-2 replays node-1's events
        b.send(msg("on node-2"))
        assert b.wait_events(4)[-1]["id"] == 3
        status, info = two.http("GET", f"/api/sessions/{ok['session_id']}", token=ok["token"])
        assert status == 200 and info["node"] == "node-2"
        status, info = one.http("GET", f"/api/sessions/{ok['session_id']}", token=ok["token"])
        assert status == 200 and info["node"] == "node-2"  # any gateway says where it lives
    finally:
        b.close()


def test_a_copy_whose_lease_was_taken_over_stops_and_stores_nothing(daemon_factory: Any, pg_url: str) -> None:
    daemon = daemon_factory(close_delay=30.0, store_url=pg_url, node_name="node-1")
    a = Client(daemon.url)
    try:
        ok = a.init()
        sid = ok["session_id"]
        a.send(msg("mine"))
        a.wait_events(1)
        # node-1 is presumed dead (its lease looks expired) and node-2 takes the session over.
        rows(
            pg_url,
            "UPDATE sa_leases SET expires_at = clock_timestamp() - interval '1 s' WHERE session_id = %s",
            sid,
        )
        intruder = PostgresStore(pg_url, node="node-2")
        try:
            assert intruder.acquire_lease(sid) == 2
            intruder.append(sid, [{"id": 1, "source": "agent", "message": "node-2 owns it"}])
            a.send(msg("stale"))
            a.wait(lambda fs: a.errors(), 30, "the fenced copy's answer")
            assert a.errors()[0] == {
                "error": "This session is now served by another node; reconnect",
                "error_code": 503,
            }
            wait_for(lambda: session_state(daemon, ok) == "passivated", 30, "the fenced copy to stop")
            stored = intruder.read(sid)
            assert [(e["id"], e.get("message")) for e in stored] == [(0, "mine"), (1, "node-2 owns it")]
            assert rows(pg_url, "SELECT node, epoch FROM sa_leases WHERE session_id = %s", sid) == [
                ("node-2", 2)
            ]
        finally:
            intruder.close()
    finally:
        a.close()


def test_an_idle_connected_session_keeps_its_lease_past_the_ttl(daemon_factory: Any, pg_url: str) -> None:
    """The renewal runs inside the session actor's process: idle for 2.5 TTLs, still owned."""
    daemon = daemon_factory(
        close_delay=30.0, store_url=pg_url, node_name="node-1", lease_ttl=2.0, lease_renew=0.5
    )
    a = Client(daemon.url)
    intruder = PostgresStore(pg_url, node="node-2")
    try:
        ok = a.init()
        a.send(msg("first"))
        a.wait_events(1)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            with pytest.raises(LeaseLost, match="owned by node 'node-1' at epoch 1"):
                intruder.acquire_lease(ok["session_id"])
            time.sleep(0.25)
        a.send(msg("second"))
        assert [e["id"] for e in a.wait_events(2)] == [0, 1] and not a.errors()
    finally:
        intruder.close()
        a.close()
