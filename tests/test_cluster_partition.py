"""Real network partitions (tests/netns.py): node-a runs in a network namespace of its own
and reaches PostgreSQL over a veth that the test sets down; node-b runs on the host.

A partition longer than ``node_timeout``: node-a fences itself (its tabs are told where to
go, nothing it writes after the takeover is stored), node-b takes the session over with
ids continuing, and after the heal node-a holds no stale session and serves again. A
partition shorter than ``node_timeout`` loses nothing and node-a keeps its session.
"""

from __future__ import annotations

import time
from typing import Any

from .cluster_harness import msg, rows
from .daemon_harness import Client, wait_for
from .netns import partitioned_fixture  # noqa: F401 - a fixture
from .test_cluster_failover import FAILOVER_BOUND, reinit


def heartbeat_age(url: str, node: str) -> float:
    found = rows(
        url,
        "SELECT extract(epoch FROM clock_timestamp() - heartbeat_at) FROM sa_nodes WHERE node_name = %s",
        node,
    )
    return float(found[0][0]) if found else -1.0


def node_state(url: str, node: str) -> tuple[str, bool]:
    """(state, alive) of a registry row, on the database clock."""
    found = rows(
        url,
        "SELECT state, heartbeat_at + timeout_s * interval '1 second' > clock_timestamp()"
        " FROM sa_nodes WHERE node_name = %s",
        node,
    )
    return (str(found[0][0]), bool(found[0][1])) if found else ("", False)


def stored(url: str, session_id: str) -> list[tuple[int, str]]:
    return [
        (int(r[0]), str(r[1]))
        for r in rows(url, "SELECT id, body FROM sa_events WHERE session_id = %s ORDER BY id", session_id)
    ]


def test_a_partitioned_node_is_fenced_taken_over_and_comes_back_holding_nothing(partitioned: Any) -> None:
    net, url, make = partitioned
    one = make("node-a", node_timeout=3.0)  # in the namespace, behind the store link
    two = make("node-b", "127.0.0.2", node_timeout=3.0)
    wait_for(lambda: node_state(url, "node-a")[1] and node_state(url, "node-b")[1], 30, "both nodes live")
    tab = Client(one.url)
    moved: Client | None = None
    try:
        ok = tab.init()
        sid = ok["session_id"]
        tab.send(msg("one"))
        tab.send(msg("two"))
        acked = {e["id"]: e for e in tab.wait_events(2)}
        net.partition()
        cut_at = time.monotonic()
        tab.send(msg("stale"))  # node-a cannot store it: it must never appear, before or after
        lost = f"This node has lost the shared store; connect to {two.address} (node node-b)"
        tab.wait(lambda fs: tab.errors(), 30, "node-a to fence itself and tell its tab")
        assert tab.errors() == [{"error": lost, "error_code": 503}]
        newcomer = Client(one.url)
        try:  # fenced: takes no session while cut off
            assert newcomer.init() == {"error": lost, "error_code": 503}
        finally:
            newcomer.close()
        moved, answer, at = reinit(two.url, ok["token"], cut_at + FAILOVER_BOUND + 15)
        assert at - cut_at < FAILOVER_BOUND and answer["session_id"] == sid
        replay = moved.wait_events(2)
        assert {e["id"]: e for e in replay} == acked  # nothing acknowledged lost
        moved.send(msg("three"))
        assert [e["id"] for e in moved.wait_events(3)] == [0, 1, 2]  # ids continue
        net.heal()  # node-a comes back: live again, serving, and holding no stale session
        wait_for(
            lambda: node_state(url, "node-a") == ("live", True), 60, "node-a's heartbeats after the heal"
        )
        back = Client(one.url)
        try:
            wait_for(lambda: back.init().get("status") == "ok", 60, "node-a taking new sessions again")
            refused = back.init(token=ok["token"])
            assert refused["error"] == (
                f"This session is live on another node (node-b at {two.address}); try again later"
            )
        finally:
            back.close()
        admin = (one.data_dir / "run" / "admin.token").read_text().strip()
        status, listed = one.http("GET", "/api/admin/sessions", token=admin)
        assert status == 200
        assert [r["state"] for r in listed if r["session_id"] == sid] in ([], ["passivated"]), listed
        moved.send(msg("four"))  # node-b still owns it, undisturbed by node-a's return
        assert [e["id"] for e in moved.wait_events(4)] == [0, 1, 2, 3]
        # The stale write never committed, not even once the link was back (fenced by epoch).
        log = stored(url, sid)
        assert [i for i, _ in log] == [0, 1, 2, 3]
        assert not any('"stale"' in body for _, body in log), log
        assert rows(url, "SELECT node, epoch FROM sa_leases WHERE session_id = %s", sid) == [("node-b", 2)]
        assert not any(f.get("message") == "stale" for f in moved.events())
    finally:
        tab.close()
        if moved is not None:
            moved.close()


def test_a_partition_shorter_than_node_timeout_loses_nothing(partitioned: Any) -> None:
    net, url, make = partitioned
    one = make("node-a", node_timeout=10.0)
    make("node-b", "127.0.0.2", node_timeout=10.0)
    wait_for(lambda: node_state(url, "node-a")[1], 30, "node-a live")
    tab = Client(one.url)
    try:
        ok = tab.init()
        sid = ok["session_id"]
        tab.send(msg("before"))
        tab.wait_events(1)
        net.partition()
        tab.send(msg("during"))  # waits in node-a until the link is back
        # Heal once node-a has missed a few heartbeats (the database clock says so), well
        # short of its node_timeout.
        wait_for(lambda: heartbeat_age(url, "node-a") > 2.0, 30, "node-a to miss its heartbeats")
        net.heal()
        tab.send(msg("after"))
        events = tab.wait_events(3, timeout=60)
        assert [e["id"] for e in events] == [0, 1, 2]
        assert [e["args"]["content"] for e in events] == ["before", "during", "after"]
        assert not tab.errors()
        assert node_state(url, "node-a") == ("live", True)
        assert [i for i, _ in stored(url, sid)] == [0, 1, 2]
        assert rows(url, "SELECT node, epoch FROM sa_leases WHERE session_id = %s", sid) == [("node-a", 1)]
    finally:
        tab.close()
