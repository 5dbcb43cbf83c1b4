"""Drain time of a node holding N sessions with small workspaces, and the pause a
periodic workspace snapshot costs its session actor (issue 16).

Drain: two real daemons (127.0.0.1 and 127.0.0.2, local runtime) on one real
PostgreSQL 15 (``tests/pg_harness.py``); N sessions on node A, each having written a
small file through its shell, their tabs open; the figure is the wall time of
``sessionactors drain node-a`` (passivation of every session with its workspace archived
into the store, until the node holds no lease).

Pause: a thread archives a 50 MB workspace (random bytes: gzip cannot shrink them) into
the store as the snapshot thread does (``WorkspaceSync._ws_snapshot``) while the main
thread ticks every millisecond, as an actor handling messages would; the figure is the
longest gap between two ticks (the GIL held by the archiving thread).

    python bench/drain_bench.py --sessions 100
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sessionactors.store.postgres import PostgresStore
from tests.cluster_harness import Node
from tests.daemon_harness import Client, wait_for
from tests.pg_harness import PgServer


def drain(pg: PgServer, root: Path, sessions: int) -> tuple[float, str]:
    url = pg.new_database("drain")
    common = {
        "store_url": url,
        "close_delay": 300.0,
        "runtime": "local",
        "max_live_sessions_per_user": sessions + 10,
    }
    a = Node(root / "a", host="127.0.0.1", node_name="node-a", **common)
    b = Node(root / "b", host="127.0.0.2", node_name="node-b", **common)
    a.start()
    b.start()
    tabs: list[Client] = []
    try:
        for i in range(sessions):
            tab = Client(a.url)
            tabs.append(tab)
            tab.init()
            tab.send({"action": "run", "args": {"command": f"echo session {i} > notes.txt"}})
        for tab in tabs:
            tab.wait(lambda fs: any("exit_code" in f.get("extras", {}) for f in fs), 60, "the write")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONACTORS_")}
        env["SESSIONACTORS_STORE_URL"] = url
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "sessionactors.cli", "drain", "node-a", "--timeout", "600"],
            env=env,
            capture_output=True,
            text=True,
        )
        took = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        return took, done.stdout.strip().splitlines()[-1]
    finally:
        for tab in tabs:
            tab.close()
        for node in (b, a):
            node.stop()


def pause(pg: PgServer, root: Path, megabytes: int) -> tuple[float, float, int]:
    url = pg.new_database("pause")
    ws = root / "ws"
    ws.mkdir()
    for i in range(megabytes // 10):
        (ws / f"blob{i}").write_bytes(os.urandom(10 << 20))
    store = PostgresStore(url, node="node-a")
    writer = PostgresStore(url, node="node-a")  # the snapshot thread's own handle
    try:
        epoch = store.acquire_lease("s")
        result: dict = {}

        def snapshot() -> None:
            t0 = time.monotonic()
            result["info"] = writer.put_workspace_archive(
                "s", str(ws), kind="snapshot", max_bytes=1 << 30, epoch=epoch
            )
            result["took"] = time.monotonic() - t0

        thread = threading.Thread(target=snapshot)
        worst, last = 0.0, time.monotonic()
        thread.start()
        while thread.is_alive():
            time.sleep(0.001)
            now = time.monotonic()
            worst, last = max(worst, now - last), now
        thread.join()
        wait_for(lambda: "info" in result, 5, "the snapshot")
        return worst, result["took"], result["info"]["size"]
    finally:
        store.close()
        writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--megabytes", type=int, default=50)
    args = parser.parse_args()
    os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")
    with tempfile.TemporaryDirectory(prefix="drain-") as tmp, PgServer(fsync=False) as pg:
        worst, took, size = pause(pg, Path(tmp), args.megabytes)
        print(
            f"snapshot of a {args.megabytes} MB workspace: {took:.2f} s in its thread, archive {size / 1e6:.1f} MB; "
            f"longest pause of a 1 ms ticker meanwhile: {worst * 1000:.1f} ms",
            flush=True,
        )
        took, line = drain(pg, Path(tmp), args.sessions)
        print(f"drain of {args.sessions} sessions: {took:.2f} s ({line})")


if __name__ == "__main__":
    main()
