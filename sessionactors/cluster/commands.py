"""``sessionactors nodes`` and ``sessionactors drain NODE``: the registry, read and changed
in the shared store directly (no daemon needs to run here: any machine with the
``store_url`` can drain any node).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone

from ..config import Config
from ..errors import DaemonError
from ..store.pgconnect import connect
from .nodes import NodeInfo, list_nodes, set_state

__all__ = ["COMMANDS", "add_arguments", "drain_cmd", "nodes_cmd", "nodes_table"]

COMMANDS = {
    "nodes": (
        "list the cluster's nodes",
        "List the nodes registered in the shared store (store_url): state (live, draining, dead, "
        "left), load (live sessions), heartbeat age and gateway address.",
    ),
    "drain": (
        "empty a node of its sessions",
        "Mark NODE draining: it takes no new session (INITs are sent to another live node), its "
        "live sessions passivate and their tabs are told to reconnect. Waits until it holds none.",
    ),
}

_LIVE_LEASES = "SELECT count(*) FROM sa_leases WHERE node = %s AND expires_at > clock_timestamp()"


def add_arguments(parsers: dict[str, argparse.ArgumentParser]) -> None:
    parsers["nodes"].add_argument("--json", action="store_true", help="one JSON object per node")
    drain = parsers["drain"]
    drain.add_argument("node", help="the node's name (node_name)")
    drain.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for it to drain (120)")
    drain.add_argument("--no-wait", action="store_true", help="mark it draining and return")
    drain.add_argument("--undo", action="store_true", help="make a draining node take sessions again")


def _url(cfg: Config) -> str:
    if not cfg.store_url:
        raise DaemonError("'nodes' and 'drain' need store_url (the cluster's shared PostgreSQL store)")
    return cfg.store_url


def _nodes(url: str) -> list[NodeInfo]:
    try:
        return list_nodes(url)
    except Exception as exc:
        raise DaemonError(f"cannot read the node registry: {' '.join(str(exc).split())}") from None


def nodes_table(nodes: list[NodeInfo]) -> str:
    lines = [f"{'NODE':20}  {'STATE':9}  {'LOAD':>5}  {'HEARTBEAT':>9}  {'ADDRESS':22}  STARTED"]
    for n in nodes:
        started = datetime.fromtimestamp(n.started_at, timezone.utc).isoformat(timespec="seconds")
        lines.append(
            f"{n.name:20}  {n.shown_state:9}  {n.load:>5}  {n.age:>8.1f}s  {n.address:22}  {started}"
        )
    return "\n".join(lines)


def nodes_cmd(cfg: Config, as_json: bool) -> int:
    nodes = _nodes(_url(cfg))
    if as_json:
        for n in nodes:
            row = {"node": n.name, "address": n.address, "state": n.shown_state, "load": n.load}
            print(json.dumps({**row, "heartbeat_age": round(n.age, 3), "started_at": n.started_at}))
    else:
        print(nodes_table(nodes))
    return 0


_ARCHIVED = (  # the passivation archives the drain made (store/postgres_archives.py)
    "SELECT count(*) FROM sa_workspace_archives WHERE node = %s AND kind = 'passivation' AND taken_at >= %s"
)


def drain_cmd(cfg: Config, node: str, timeout: float, wait: bool, undo: bool) -> int:
    url = _url(cfg)
    known = {n.name: n for n in _nodes(url)}
    if node not in known:
        print(
            f"sessionactors: no node {node!r} is registered ({', '.join(known) or 'none is'})",
            file=sys.stderr,
        )
        return 1
    if not known[node].alive:
        print(f"sessionactors: node {node!r} is {known[node].shown_state}: nothing to drain", file=sys.stderr)
        return 1
    set_state(url, node, "live" if undo else "draining")
    if undo:
        print(f"node {node} takes sessions again")
        return 0
    print(f"node {node} is draining ({known[node].load} live session(s))")
    if not wait:
        return 0
    started, since = time.monotonic(), time.time() - 1.0  # the node's clock may lag a little
    with connect(url) as db:
        while True:
            left = db.execute(_LIVE_LEASES, (node,)).fetchone()[0]  # type: ignore[index]
            if left == 0:
                archived = db.execute(_ARCHIVED, (node, since)).fetchone()[0]  # type: ignore[index]
                print(
                    f"node {node} drained in {time.monotonic() - started:.1f} s: it holds no session; "
                    f"{archived} workspace archive(s) written"
                )
                return 0
            if time.monotonic() - started > timeout:
                print(
                    f"sessionactors: node {node} still holds {left} session(s) after {timeout:g} s",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.2)
