"""Failover time: SIGKILL of every process of a node, to its session answering on another.

Two real daemons (127.0.0.1 and 127.0.0.2, their own ports and data dirs) on one real
PostgreSQL 15 (``tests/pg_harness.py``), default ``node_timeout`` (10 s) and
``heartbeat_interval`` (1 s) unless given. Each run: a session with 5 acknowledged events
on node A, every process of A killed, then a tab re-INITs on node B every 0.2 s (as a
client does on 503) until answered; the figure is kill -> first answered re-INIT. Also
checks the replay holds every acknowledged event.

    python bench/failover_bench.py --runs 5
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sessionactors.daemon import pid_alive
from tests.cluster_harness import Node, msg
from tests.daemon_harness import Client, wait_for
from tests.pg_harness import PgServer


def one_run(pg: PgServer, root: Path, run: int, timeout: float, interval: float) -> float:
    url = pg.new_database(f"failover_{run}")
    common = {"store_url": url, "close_delay": 30.0, "node_timeout": timeout, "heartbeat_interval": interval}
    a = Node(root / f"a{run}", host="127.0.0.1", node_name="node-a", **common)
    b = Node(root / f"b{run}", host="127.0.0.2", node_name="node-b", **common)
    a.start()
    b.start()
    try:
        tab = Client(a.url)
        ok = tab.init()
        for i in range(5):
            tab.send(msg(f"m{i}"))
        acked = {e["id"]: e for e in tab.wait_events(5)}
        pids = a.pids()
        killed = time.monotonic()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        tab.close()
        again = Client(b.url)
        try:
            while again.init(token=ok["token"], latest=-1).get("status") != "ok":
                time.sleep(0.2)  # the client's pause between two attempts
            took = time.monotonic() - killed
            replay = {e["id"]: e for e in again.wait_events(5)}
            assert all(replay.get(i) == e for i, e in acked.items()), "an acknowledged event was lost"
        finally:
            again.close()
        wait_for(lambda: not any(pid_alive(p) for p in pids), 30, "node A's processes to die")
        return took
    finally:
        for node in (b, a):
            node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--node-timeout", type=float, default=10.0)
    parser.add_argument("--heartbeat-interval", type=float, default=1.0)
    args = parser.parse_args()
    os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")
    figures = []
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp, PgServer(fsync=False) as pg:
        for run in range(args.runs):
            took = one_run(pg, Path(tmp), run, args.node_timeout, args.heartbeat_interval)
            figures.append(took)
            print(f"run {run + 1}: kill -> answered on node B in {took:.2f} s", flush=True)
    print(
        f"node_timeout {args.node_timeout:g} s, heartbeat {args.heartbeat_interval:g} s, {args.runs} runs: "
        f"min {min(figures):.2f} s, median {statistics.median(figures):.2f} s, max {max(figures):.2f} s"
    )


if __name__ == "__main__":
    main()
