"""Why the daemon's events/s trails the single-process design: SQLite's write lock across processes.

N processes (like N session actors) each commit one-row transactions in a loop
(``BEGIN IMMEDIATE`` / INSERT / ``COMMIT``, WAL, ``synchronous=FULL``, a 1 ms pause
between commits like a client waiting for its echo), for a few seconds, against:

* one shared database file with ``busy_timeout`` (what the daemon's store does);
* one database file per process (what a per-session or sharded store would do).

Printed: total commits/s and the share of wall-clock time spent waiting for the
write lock (SQLite's busy handler sleeps 1, 2, 5, 10 ... ms between retries).

Run: ``python -m bench.sqlite_contention [--procs 30] [--seconds 4]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sqlite3
import tempfile
import time
from typing import Any


def _worker(path: str, seconds: float, start: float, out: Any) -> None:
    db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    db.execute("PRAGMA synchronous = FULL")
    commits, waited = 0, 0.0
    while time.time() < start:
        time.sleep(0.001)
    end = start + seconds
    while time.time() < end:
        t0 = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        waited += time.perf_counter() - t0
        db.execute("INSERT INTO t (body) VALUES (?)", ("x" * 300,))
        db.execute("COMMIT")
        commits += 1
        time.sleep(0.001)
    out.put((commits, waited))


def measure(procs: int, shared: bool, seconds: float) -> tuple[float, float]:
    """(commits per second, % of wall time waiting for the write lock)."""
    directory = tempfile.mkdtemp(prefix="sa-contention-")
    paths = []
    for i in range(1 if shared else procs):
        path = os.path.join(directory, f"{i}.db")
        db = sqlite3.connect(path)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
        db.commit()
        db.close()
        paths.append(path)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start = time.time() + 0.5
    workers = [
        ctx.Process(target=_worker, args=(paths[0 if shared else i], seconds, start, out))
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    results = [out.get() for _ in workers]
    for w in workers:
        w.join()
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    os.rmdir(directory)
    commits = sum(r[0] for r in results)
    waited = sum(r[1] for r in results)
    return commits / seconds, 100 * waited / (procs * seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    for procs, shared in ((1, True), (args.procs, True), (args.procs, False)):
        rate, wait = measure(procs, shared, args.seconds)
        layout = "one shared file" if shared else "one file each "
        print(
            f"{procs:3d} writer process(es), {layout}: {rate:6.0f} commits/s, lock wait {wait:4.1f}% of wall"
        )


if __name__ == "__main__":
    main()
