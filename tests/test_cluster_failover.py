"""Two real daemons on one real PostgreSQL: a node killed outright (every process of it,
SIGKILL) has its sessions answered by the other within 30 s, ids continuing and nothing
acknowledged lost; a drained node passivates its sessions and sends its tabs elsewhere.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from sessionactors.daemon import pid_alive

from .cluster_harness import TcpCut, cli, cluster_fixture, msg, nodes_json, relay_fixture, rows  # noqa: F401 - fixtures
from .daemon_harness import Client, wait_for

FAILOVER_BOUND = 30.0  # the promise: a killed node's sessions answer again within 30 s


def seen(*tabs: Client) -> dict[int, Any]:
    """Every event the tabs were sent (acknowledged to a client), by id."""
    return {e["id"]: e for tab in tabs for e in tab.events()}


def reinit(url: str, token: str, give_up: float) -> tuple[Client, dict[str, Any], float]:
    """A tab re-INITs (replay from the start) until answered, on a new connection each time,
    as our client does on a 503."""
    while True:
        tab = Client(url)
        answer = tab.init(token=token, latest=-1)
        if answer.get("status") == "ok":
            return tab, answer, time.monotonic()
        tab.close()
        assert answer.get("error_code") == 503, answer
        assert time.monotonic() < give_up, f"still refused after the bound: {answer}"
        time.sleep(0.2)  # the client's pause between two attempts


def kill_every_process(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: not any(pid_alive(p) for p in pids), 30, "every process of the node to die")


def test_a_killed_nodes_sessions_answer_on_another_node_within_30_s(cluster: Any, pg_url: str) -> None:
    one = cluster("node-a", "127.0.0.1")  # node_timeout 10 s, the default
    two = cluster("node-b", "127.0.0.2")
    first, second, third = Client(one.url), Client(one.url), Client(one.url)
    tabs = [first, second, third]
    try:
        s1 = first.init()
        assert second.init(token=s1["token"])["session_id"] == s1["session_id"]  # two tabs, one session
        s2 = third.init()
        for i in range(3):
            first.send(msg(f"first {i}"))
            second.send(msg(f"second {i}"))
            third.send(msg(f"third {i}"))
        first.wait_events(6)
        second.wait_events(6)
        third.wait_events(3)
        acked = {s1["session_id"]: seen(first, second), s2["session_id"]: seen(third)}
        assert sorted(acked[s1["session_id"]]) == list(range(6))
        refused = Client(two.url)
        try:  # live on node-a: node-b names where it lives
            assert refused.init(token=s2["token"])["error"] == (
                f"This session is live on another node (node-a at {one.address}); try again later"
            )
        finally:
            refused.close()
        pids = one.pids()
        assert len(pids) >= 5, pids  # daemon, admin, supervisor, gateway, session actors
        killed = time.monotonic()
        kill_every_process(pids)
    finally:
        for tab in tabs:
            tab.close()
    again: list[Client] = []
    try:
        for ok in (s1, s2):
            tab, answer, at = reinit(two.url, ok["token"], killed + FAILOVER_BOUND + 15)
            again.append(tab)
            took = at - killed
            print(f"failover: session {ok['session_id'][:8]} answered on node-b {took:.2f} s after the kill")
            assert took < FAILOVER_BOUND, f"answered {took:.1f} s after the kill"
            assert answer["session_id"] == ok["session_id"]
            before = acked[ok["session_id"]]
            replay = tab.wait_events(len(before))
            assert [e["id"] for e in replay] == list(range(len(replay)))  # contiguous
            assert {e["id"]: e for e in replay if e["id"] in before} == before  # nothing acked lost
            tab.send(msg("after the kill"))
            tab.wait(lambda fs: any(f.get("message") == "after the kill" for f in fs), what="the new event")
            new = next(e for e in tab.events() if e.get("message") == "after the kill")
            assert new["id"] == len(replay)  # ids continue
        lease = rows(pg_url, "SELECT node, epoch FROM sa_leases WHERE session_id = %s", s1["session_id"])
        assert lease == [("node-b", 2)]  # taken over under a new epoch: the old one is fenced
        assert nodes_json(pg_url)["node-a"]["state"] == "dead"
    finally:
        for tab in again:
            tab.close()


def test_drain_passivates_a_nodes_sessions_and_sends_its_tabs_elsewhere(cluster: Any, pg_url: str) -> None:
    one = cluster("node-a", "127.0.0.1")
    two = cluster("node-b", "127.0.0.2")
    tab = Client(one.url)
    moved: Client | None = None
    try:
        ok = tab.init()
        tab.send(msg("one"))
        tab.send(msg("two"))
        tab.wait_events(2)
        wait_for(lambda: nodes_json(pg_url)["node-a"]["load"] == 1, 30, "node-a's load")
        done = cli(pg_url, "drain", "node-a")
        assert done.returncode == 0, done.stderr
        assert "node node-a is draining (1 live session(s))" in done.stdout and "drained in" in done.stdout
        elsewhere = f"This node is draining; connect to {two.address} (node node-b)"
        tab.wait(lambda fs: tab.errors(), 30, "the tab told to reconnect")
        assert tab.errors() == [{"error": elsewhere, "error_code": 503}]
        assert rows(pg_url, "SELECT state FROM sa_sessions WHERE session_id = %s", ok["session_id"]) == [
            ("passivated",)
        ]
        # The load is the node's live leases as its next heartbeat counts them (each second).
        wait_for(lambda: nodes_json(pg_url)["node-a"]["load"] == 0, 30, "node-a's load after the drain")
        assert nodes_json(pg_url)["node-a"]["state"] == "draining"
        newcomer = Client(one.url)
        try:  # a draining node takes no session, new or old
            assert newcomer.init() == {"error": elsewhere, "error_code": 503}
            assert newcomer.init(token=ok["token"]) == {"error": elsewhere, "error_code": 503}
        finally:
            newcomer.close()
        moved = Client(two.url)  # the tab goes where it was told, with what it has
        assert moved.init(token=ok["token"], latest=1)["session_id"] == ok["session_id"]
        moved.send(msg("three"))
        assert [e["id"] for e in moved.wait_events(1)] == [2]  # nothing lost, nothing repeated
        stored = rows(pg_url, "SELECT id FROM sa_events WHERE session_id = %s ORDER BY id", ok["session_id"])
        assert [r[0] for r in stored] == [0, 1, 2]
        undone = cli(pg_url, "drain", "node-a", "--undo")
        assert undone.returncode == 0 and "takes sessions again" in undone.stdout
        back = Client(one.url)
        try:
            wait_for(lambda: back.init().get("status") == "ok", 30, "node-a taking sessions again")
        finally:
            back.close()
    finally:
        tab.close()
        if moved is not None:
            moved.close()


def test_a_node_cut_off_from_the_store_fences_itself_and_comes_back_holding_nothing(
    relay: TcpCut, cluster: Any, pg_url: str
) -> None:
    one = cluster("node-a", "127.0.0.1", store_url=relay.url(pg_url), node_timeout=3.0)
    two = cluster("node-b", "127.0.0.2", node_timeout=3.0)
    wait_for(lambda: len(nodes_json(pg_url)) == 2, 30, "both nodes registered")
    tab = Client(one.url)
    moved: Client | None = None
    try:
        ok = tab.init()
        tab.send(msg("one"))
        tab.send(msg("two"))
        tab.wait_events(2)
        wait_for(lambda: nodes_json(pg_url)["node-a"]["load"] == 1, 30, "node-a's load")
        relay.cut()  # node-a loses the database; node-b and the clients keep it
        cut_at = time.monotonic()
        lost = f"This node has lost the shared store; connect to {two.address} (node node-b)"
        tab.wait(lambda fs: tab.errors(), 30, "node-a to fence itself and tell its tab")
        assert tab.errors() == [{"error": lost, "error_code": 503}]
        newcomer = Client(one.url)
        try:
            assert newcomer.init() == {"error": lost, "error_code": 503}
        finally:
            newcomer.close()
        moved, answer, at = reinit(two.url, ok["token"], cut_at + FAILOVER_BOUND + 15)
        assert at - cut_at < FAILOVER_BOUND and answer["session_id"] == ok["session_id"]
        assert [e["id"] for e in moved.wait_events(2)] == [0, 1]
        moved.send(msg("three"))
        assert [e["id"] for e in moved.wait_events(3)] == [0, 1, 2]
        relay.restore()  # node-a comes back: live again, and holding no stale session
        wait_for(lambda: nodes_json(pg_url)["node-a"]["state"] == "live", 30, "node-a's heartbeats")
        back = Client(one.url)
        try:
            refused = back.init(token=ok["token"])
            assert refused["error"] == (
                f"This session is live on another node (node-b at {two.address}); try again later"
            )
        finally:
            back.close()
        stored = rows(pg_url, "SELECT id FROM sa_events WHERE session_id = %s ORDER BY id", ok["session_id"])
        assert [r[0] for r in stored] == [0, 1, 2]
        assert rows(pg_url, "SELECT node, epoch FROM sa_leases WHERE session_id = %s", ok["session_id"]) == [
            ("node-b", 2)
        ]
    finally:
        tab.close()
        if moved is not None:
            moved.close()
