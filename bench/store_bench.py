"""Benchmark of the embedded SQLite store (``sessionactors.store.sqlite``).

(a) Append: N concurrent sessions, each in its own process with its own store,
    append single events, one transaction each (what a session actor does per
    event), all released at the same moment; reports total events/s and the
    p50/p99 latency of one ``append`` call, for fsync=full and fsync=normal.
(b) Replay: ``read(sid, 0)`` of a 10,000-event session (p50 over several runs),
    and the same 10,000 events read in pages of 500.

Run from the repository root::

    python bench/store_bench.py           # about 30-60 s
    python bench/store_bench.py --quick   # a few seconds, for a smoke test
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from sessionactors.store.sqlite import SQLiteStore


def make_event(i: int) -> dict[str, Any]:
    """An observation of typical size (about 400 bytes of JSON)."""
    return {
        "id": i,
        "timestamp": "2026-11-29T10:00:00.123456+00:00",
        "source": "environment",
        "message": "Command finished",
        "cause": max(i - 1, 0),
        "observation": "run",
        "content": f"line {i}: " + "lorem ipsum dolor sit amet " * 10,
        "extras": {"command": f"echo {i}", "exit_code": 0},
    }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (q in 0..100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def _writer(data_dir: str, fsync: str, sid: str, count: int, barrier: Any, results: Any) -> None:
    # Each process opens its own store after the fork, as a session actor does.
    store = SQLiteStore(Path(data_dir), fsync=fsync)
    events = [make_event(i) for i in range(count)]
    latencies = []
    barrier.wait()
    for event in events:
        t0 = time.perf_counter()
        store.append(sid, [event])
        latencies.append(time.perf_counter() - t0)
    store.close()
    results.put(latencies)


def bench_append(fsync: str, sessions: int, per_session: int) -> dict[str, float]:
    """Run the concurrent single-event append load once; return throughput and latencies."""
    ctx = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        SQLiteStore(Path(tmp), fsync=fsync).close()  # schema created before the race
        barrier, results = ctx.Barrier(sessions + 1), ctx.Queue()
        procs = [
            ctx.Process(target=_writer, args=(tmp, fsync, f"s{n}", per_session, barrier, results))
            for n in range(sessions)
        ]
        for p in procs:
            p.start()
        barrier.wait(timeout=120)
        t0 = time.perf_counter()
        latencies: list[float] = []
        for _ in procs:
            latencies += results.get(timeout=300)
        wall = time.perf_counter() - t0
        for p in procs:
            p.join(timeout=60)
            if p.exitcode != 0:
                raise SystemExit(f"writer {p.pid} exited with {p.exitcode}")
        with closing(SQLiteStore(Path(tmp))) as store:
            stored = sum(store.last_event_id(f"s{n}") + 1 for n in range(sessions))
        files = [p for p in Path(tmp).rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        allocated = sum(p.stat().st_blocks * 512 for p in files)
    assert stored == sessions * per_session, (stored, sessions * per_session)
    return {
        "events": float(stored),
        "wall": wall,
        "rate": stored / wall,
        "p50": percentile(latencies, 50) * 1000,
        "p99": percentile(latencies, 99) * 1000,
        "bytes": size / stored,
        "allocated": allocated / stored,
    }


def bench_replay(total: int, page: int, runs: int) -> dict[str, float]:
    """Time a full replay and a paged replay of one ``total``-event session."""
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        store = SQLiteStore(Path(tmp), fsync="normal")
        for start in range(0, total, 500):
            store.append("big", [make_event(i) for i in range(start, min(start + 500, total))])
        full, paged = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            events = store.read("big", 0)
            full.append(time.perf_counter() - t0)
            assert len(events) == total and events[-1]["id"] == total - 1
            t0 = time.perf_counter()
            start, seen = 0, 0
            while batch := store.read("big", start, limit=page):
                seen += len(batch)
                start = batch[-1]["id"] + 1
            paged.append(time.perf_counter() - t0)
            assert seen == total
        store.close()
    return {"full_p50": percentile(full, 50) * 1000, "paged_p50": percentile(paged, 50) * 1000}


def main(argv: list[str] | None = None) -> int:
    """Parse options, run both benchmarks, print one table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small run for a smoke test")
    parser.add_argument("--sessions", type=int, default=50, help="concurrent sessions (processes)")
    parser.add_argument("--events", type=int, default=None, help="events per session (default 200, quick 20)")
    args = parser.parse_args(argv)
    per_session = args.events or (20 if args.quick else 200)
    runs = 3 if args.quick else 9

    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}")  # fmt: skip
    print(f"# {' '.join(['python', sys.argv[0], *(argv if argv is not None else sys.argv[1:])])}")
    print()
    print(
        f"Append: {args.sessions} sessions x {per_session} events, a process each, one event per transaction"
    )
    print()
    print(
        "| fsync  | events | wall (s) | events/s | p50 append (ms) | p99 append (ms) | disk B/event (size / allocated) |"
    )
    print("|--------|-------:|---------:|---------:|----------------:|----------------:|----------------:|")
    for fsync in ("full", "normal"):
        r = bench_append(fsync, args.sessions, per_session)
        print(f"| {fsync:<6} | {r['events']:6.0f} | {r['wall']:8.2f} | {r['rate']:8.0f} "
              f"| {r['p50']:15.2f} | {r['p99']:15.2f} | {r['bytes']:.0f} / {r['allocated']:.0f} |")  # fmt: skip
    print()
    total, page = 10_000, 500
    r = bench_replay(total, page, runs)
    print(f"Replay: one session of {total} events (~400 B each), p50 of {runs} runs")
    print()
    print("| read                                | p50 (ms) | µs/event |")
    print("|-------------------------------------|---------:|---------:|")
    full_us = r["full_p50"] * 1000 / total
    print(f"| read(sid, 0)                        | {r['full_p50']:8.1f} | {full_us:8.2f} |")
    paged_us = r["paged_p50"] * 1000 / total
    print(f"| pages of {page} (read(sid, n, {page}))    | {r['paged_p50']:8.1f} | {paged_us:8.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
