"""The node registry on a real PostgreSQL 15: heartbeats, a dead node's sessions taken over
at once, self-fencing in the database, and ``sessionactors nodes`` on real daemons.

Store level first (handles as nodes, a ``NodeHeart`` each), then daemons on loopback
(127.0.0.1 and 127.0.0.2, their own ports and data dirs) sharing one database.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sessionactors.cluster.nodes import NodeHeart, list_nodes
from sessionactors.errors import LeaseLost
from sessionactors.store.postgres import SCHEMA_VERSION, PostgresStore

from .cluster_harness import cli, cluster_fixture, msg, nodes_json, rows  # noqa: F401 - a fixture
from .daemon_harness import Client, wait_for


# -- store level ----------------------------------------------------------------------------
def test_a_dead_nodes_lease_is_taken_at_once_and_its_writes_are_refused(pg_url: str) -> None:
    a = PostgresStore(pg_url, node="node-a")  # lease_ttl 45 s: only the heartbeat can free it
    b = PostgresStore(pg_url, node="node-b")
    heart = NodeHeart(pg_url, "node-a", "127.0.0.1:1", interval=0.1, timeout=1.0)
    try:
        heart.register()
        heart.start()
        a.append("s", [{"id": 0, "message": "a's"}])
        with pytest.raises(LeaseLost, match="owned by node 'node-a'"):
            b.acquire_lease("s")  # heartbeating: alive, its lease stands
        assert [n.shown_state for n in list_nodes(pg_url)] == ["live"]
        heart.stop(leave=False)  # as if killed: no more heartbeats, no 'left'
        wait_for(lambda: heart.fenced, 10, "node-a to fence itself")
        wait_for(lambda: list_nodes(pg_url)[0].shown_state == "dead", 10, "node-a dead for everyone")
        # Long before the 45 s TTL: the database refuses the dead node's write ...
        with pytest.raises(LeaseLost, match="missed its heartbeats"):
            a.append("s", [{"id": 1, "message": "stale"}])
        # ... and another node takes the session over, epoch + 1.
        assert b.acquire_lease("s") == 2
        b.append("s", [{"id": 1, "message": "b's"}])
        assert [e["message"] for e in b.read("s")] == ["a's", "b's"]
        assert b.lease_node("s") == "node-b"
    finally:
        heart.stop(leave=False)
        a.close()
        b.close()


def test_an_unregistered_holder_keeps_the_ttl_rule(pg_url: str) -> None:
    """A handle with no registry row (no heartbeat ever) is not presumed dead."""
    a = PostgresStore(pg_url, node="node-a")
    b = PostgresStore(pg_url, node="node-b")
    try:
        a.append("s", [{"id": 0}])
        with pytest.raises(LeaseLost):
            b.acquire_lease("s")
        a.append("s", [{"id": 1}])
    finally:
        a.close()
        b.close()


def test_a_heart_that_loses_the_database_fences_and_recovers(pg_url: str) -> None:
    PostgresStore(pg_url, node="x").close()  # the schema
    heart = NodeHeart(pg_url, "node-a", "127.0.0.1:1", interval=0.1, timeout=1.0)
    try:
        heart.register()
        heart.start()
        wait_for(lambda: heart.peers, 10, "a first heartbeat")
        assert not heart.fenced
        heart.url = "postgresql://nobody@127.0.0.1:1/none"  # the database is gone for it
        rows(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        wait_for(lambda: heart.fenced, 10, "self-fencing after node_timeout")
        heart.url = pg_url
        wait_for(lambda: not heart.fenced, 10, "heartbeats to resume")
        assert list_nodes(pg_url)[0].shown_state == "live"
    finally:
        heart.stop()
    assert list_nodes(pg_url)[0].state == "left"


def test_a_version_1_database_gets_the_registry_on_open(pg_url: str) -> None:
    PostgresStore(pg_url, node="x").close()
    rows(pg_url, "DROP TABLE sa_nodes")  # as issue 16's first schema had it
    rows(pg_url, "UPDATE sa_meta SET value = '1' WHERE key = 'schema_version'")
    store = PostgresStore(pg_url, node="node-a")
    try:
        assert rows(pg_url, "SELECT value FROM sa_meta WHERE key = 'schema_version'") == [
            (str(SCHEMA_VERSION),)
        ]
        heart = NodeHeart(pg_url, "node-a", "127.0.0.1:1", interval=0.1, timeout=1.0)
        heart.register()
        heart.stop()
        assert [(n.name, n.state) for n in list_nodes(pg_url)] == [("node-a", "left")]
        store.append("s", [{"id": 0}])  # the migrated sa_append
    finally:
        store.close()


# -- daemons ----------------------------------------------------------------------------------
def test_nodes_lists_every_daemon_with_state_load_and_heartbeat(cluster: Any, pg_url: str) -> None:
    one = cluster("node-a", "127.0.0.1")
    two = cluster("node-b", "127.0.0.2")
    found = nodes_json(pg_url)
    assert {n: (r["state"], r["address"]) for n, r in found.items()} == {
        "node-a": ("live", one.address),
        "node-b": ("live", two.address),
    }
    assert all(r["heartbeat_age"] < 5 for r in found.values())
    tab = Client(one.url)
    try:
        tab.init()
        tab.send(msg("hi"))
        tab.wait_events(1)
        wait_for(lambda: nodes_json(pg_url)["node-a"]["load"] == 1, 30, "node-a's load to show its session")
        assert nodes_json(pg_url)["node-b"]["load"] == 0
        table = cli(pg_url, "nodes").stdout.splitlines()
        assert table[0].split()[:4] == ["NODE", "STATE", "LOAD", "HEARTBEAT"]
        assert table[1].split()[:3] == ["node-a", "live", "1"] and two.address in table[2]
    finally:
        tab.close()
    assert two.stop() == []
    assert nodes_json(pg_url)["node-b"]["state"] == "left"  # a clean stop leaves


def test_nodes_and_drain_need_a_shared_store(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONACTORS_")}
    for argv in (["nodes"], ["drain", "x"]):
        done = subprocess.run(
            [sys.executable, "-m", "sessionactors.cli", *argv, "--data-dir", str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1 and "need store_url" in done.stderr, done.stderr


def test_drain_refuses_unknown_and_dead_nodes(pg_url: str) -> None:
    PostgresStore(pg_url, node="x").close()  # the schema
    done = cli(pg_url, "drain", "node-z")
    assert done.returncode == 1 and "no node 'node-z' is registered" in done.stderr
    heart = NodeHeart(pg_url, "node-y", "127.0.0.1:1", interval=0.1, timeout=0.5)
    heart.register()
    wait_for(lambda: list_nodes(pg_url)[0].shown_state == "dead", 10, "node-y dead")
    done = cli(pg_url, "drain", "node-y")
    assert done.returncode == 1 and "node 'node-y' is dead" in done.stderr
    heart.stop()


def test_the_heartbeat_must_be_shorter_than_the_node_timeout() -> None:
    from sessionactors.config import Config
    from sessionactors.errors import ConfigError

    for interval, timeout in ((10.0, 10.0), (0.0, 10.0), (20.0, 10.0)):
        with pytest.raises(ConfigError, match="heartbeat_interval"):
            Config(heartbeat_interval=interval, node_timeout=timeout).validate()
    Config(heartbeat_interval=0.5, node_timeout=3.0).validate()


def test_refusals_name_the_least_loaded_live_peer_or_say_there_is_none() -> None:
    from sessionactors.cluster.member import ClusterMember
    from sessionactors.cluster.nodes import NodeInfo

    member = ClusterMember()
    member.heart = NodeHeart("postgresql://unused@127.0.0.1:1/x", "node-a", "10.0.0.1:1", 1.0, 10.0)
    assert member._cluster_refusal() is None
    member.heart.state = "draining"
    assert member._cluster_refusal() == "This node is draining; no other node is live; try again later"
    member.heart.peers = [
        NodeInfo("node-a", "10.0.0.1:1", "draining", 3, 0.1, 10.0, 0.0),
        NodeInfo("node-b", "10.0.0.2:1", "live", 5, 0.2, 10.0, 0.0),
        NodeInfo("node-c", "10.0.0.3:1", "live", 2, 0.3, 10.0, 0.0),
        NodeInfo("node-d", "10.0.0.4:1", "live", 0, 30.0, 10.0, 0.0),  # dead: missed heartbeats
        NodeInfo("node-e", "10.0.0.5:1", "draining", 0, 0.1, 10.0, 0.0),
    ]
    assert member._cluster_refusal() == "This node is draining; connect to 10.0.0.3:1 (node node-c)"
    member.heart.last_ok -= 11.0  # no successful heartbeat for longer than node_timeout
    assert (
        member._cluster_refusal()
        == "This node has lost the shared store; connect to 10.0.0.3:1 (node node-c)"
    )
    details = (
        "LeaseLost: session s is owned by node 'node-b' at epoch 3 (expires in 40 s), not by node 'node-a'"
    )
    assert member._live_elsewhere(details) == (
        "This session is live on another node (node-b at 10.0.0.2:1); try again later"
    )
    assert member._live_elsewhere("LeaseLost") == "This session is live on another node; try again later"
