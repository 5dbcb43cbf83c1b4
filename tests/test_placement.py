"""Placement of new sessions on the least-loaded live node (cluster/nodes.py, issue 16):
the choice itself, on registry rows as the heartbeat reads them."""

from __future__ import annotations

from sessionactors.cluster.nodes import NodeHeart, NodeInfo, choose_node


def node(name: str, load: int, state: str = "live", age: float = 0.5) -> NodeInfo:
    return NodeInfo(name, f"127.0.0.1:{8000 + ord(name[0])}", state, load, age, 5.0, 0.0)


def test_the_least_loaded_live_node_is_chosen() -> None:
    peers = [node("a", 10), node("b", 3), node("c", 6)]
    assert choose_node(peers, "a") == "b"
    assert choose_node(peers, "c") == "b"
    assert choose_node(peers, "b") == "b"


def test_a_node_keeps_a_session_within_the_margin_and_on_ties() -> None:
    assert choose_node([node("a", 4), node("b", 4)], "b") == "b"
    assert choose_node([node("a", 6), node("b", 4)], "a", margin=2) == "a"
    assert choose_node([node("a", 7), node("b", 4)], "a", margin=2) == "b"


def test_draining_left_and_dead_nodes_never_get_placements() -> None:
    peers = [node("a", 50), node("b", 0, "draining"), node("c", 0, "left"), node("d", 0, age=9.0)]
    assert choose_node(peers, "a") == "a"
    assert choose_node(peers, "b") == "a"  # a draining node sends even its own away
    assert choose_node([node("b", 0, "draining"), node("d", 0, age=9.0)], "b") is None


def test_a_burst_between_heartbeats_spreads() -> None:
    heart = NodeHeart("postgresql://unused@127.0.0.1:1/x", "a", "127.0.0.1:1", 1.0, 5.0)
    heart.peers = [node("a", 0), node("b", 0), node("c", 0)]
    chosen = [heart.place() for _ in range(30)]
    counts = {n: chosen.count(n) for n in "abc"}
    assert sum(counts.values()) == 30 and max(counts.values()) - min(counts.values()) <= 3, counts
