"""Benchmark of the PostgreSQL store against the embedded SQLite store, same machine, same disk.

(a) Append: N concurrent sessions, each in its own process with its own store handle,
    append single events, one transaction each (what a session actor does per event),
    released together; total events/s and the p50/p99 latency of one ``append``. The
    PostgreSQL appends are fenced by the ownership lease (one ``sa_append`` call each).
    "postgres plain INSERT" is the floor: one autocommit INSERT per event on the same
    table, no lease and no id check, so the difference is what the fence costs.
(b) Replay: ``read(sid, 0)`` of a 10,000-event session, p50 of 5 runs.

PostgreSQL 15 runs from ``tests/pg_harness.py`` (initdb in a temp dir, loopback TCP) with
``fsync=on`` and ``synchronous_commit=on``: every append is on disk when it returns, like
SQLite's ``fsync=full``. Both data dirs are on the same file system (``--dir``).

Run from the repository root (needs the ``[test]`` extra, for psycopg and the harness)::

    python bench/pg_store_bench.py            # about a minute
    python bench/pg_store_bench.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.store_bench import make_event, percentile
from sessionactors.store import open_store
from tests.pg_harness import PgServer


def _writer(options: dict[str, Any], sid: str, count: int, barrier: Any, results: Any) -> None:
    plain = options.pop("plain", False)
    if plain:  # the floor: one autocommit INSERT per event, no lease, no id check
        import json

        import psycopg

        db = psycopg.connect(options["url"], autocommit=True)

        def append(sid: str, events: list[dict[str, Any]]) -> None:
            db.execute(
                "INSERT INTO sa_events VALUES (%s, %s, %s)", (sid, events[0]["id"], json.dumps(events[0]))
            )
    else:
        store = open_store(options.pop("data_dir"), **options)  # opened after the fork
        append = store.append
    events = [make_event(i) for i in range(count)]
    latencies = []
    barrier.wait()
    for event in events:
        t0 = time.perf_counter()
        append(sid, [event])
        latencies.append(time.perf_counter() - t0)
    if plain:
        db.close()
    else:
        store.close()
    results.put(latencies)


def appends(options: dict[str, Any], writers: int, count: int) -> dict[str, float]:
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(writers + 1), ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(dict(options), f"w{n}-{time.time_ns()}", count, barrier, results))
        for n in range(writers)
    ]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    latencies: list[float] = []
    for _ in procs:
        latencies += results.get(timeout=600)
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    return {
        "events_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


def replay(options: dict[str, Any]) -> float:
    store = open_store(options["data_dir"], **{k: v for k, v in options.items() if k != "data_dir"})
    sid = f"replay-{time.time_ns()}"
    for start in range(0, 10_000, 500):
        store.append(sid, [make_event(i) for i in range(start, start + 500)])
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        assert len(store.read(sid, 0)) == 10_000
        runs.append(time.perf_counter() - t0)
    store.close()
    return percentile(runs, 50) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dir", default=None, help="parent of both data dirs (default: the temp dir)")
    args = parser.parse_args()
    count = 50 if args.quick else 300
    writer_counts = [1, 8] if args.quick else [1, 8, 32]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp, PgServer(fsync=True) as pg:
        url = pg.new_database("bench")
        backends = {
            "sqlite fsync=full": {"data_dir": str(Path(tmp) / "sqlite"), "fsync": "full"},
            "postgres fsync=on": {"data_dir": tmp, "url": url, "node": "bench"},
            "postgres plain INSERT": {"data_dir": tmp, "url": url, "plain": True},
        }
        print(f"{'backend':<22} {'writers':>7} {'events/s':>9} {'p50 ms':>7} {'p99 ms':>7}")
        for name, options in backends.items():
            for writers in writer_counts:
                r = appends(options, writers, count)
                print(
                    f"{name:<22} {writers:>7} {r['events_s']:>9.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f}"
                )
        for name, options in list(backends.items())[:2]:
            print(f"{name:<22} replay of 10,000 events: {replay(options):.1f} ms (p50 of 5)")


if __name__ == "__main__":
    main()
