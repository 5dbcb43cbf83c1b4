"""A burst of new INITs against a warm pool as large as the burst: the activation path alone.

``python -m bench`` measures 200 INITs against the daemon's default pool, where most INITs
wait for a fork. This measures what one pooled activation costs when no fork is needed:
the daemon starts with ``pool_size`` = N, waits until its pool processes are up, then N
new INITs go out with at most ``--concurrency`` in flight. It prints the rate, the INIT
latency and the CPU each process of the daemon used during the burst.

Run from the repository root::

    python -m bench.pool_burst              # N = 64, 32 in flight
    python -m bench.pool_burst --inits 128 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from .sioclient import SioConn, new_http_session
from .targets import OursTarget


def _cpu_by_pid(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = times.user + times.system
    return out


async def _burst(url: str, n: int, concurrency: int, pids: list[int]) -> dict[str, Any]:
    http = new_http_session()
    try:
        conns = [SioConn(http, url) for _ in range(n)]
        await asyncio.gather(*(c.connect() for c in conns))
        sem = asyncio.Semaphore(concurrency)
        latencies: list[float] = []

        async def init(conn: SioConn) -> None:
            async with sem:
                started = time.perf_counter()
                answer = await conn.initialize(None, None)
                if answer.get("status") == "ok":
                    latencies.append((time.perf_counter() - started) * 1000)

        cpu0 = _cpu_by_pid(pids)
        started = time.perf_counter()
        await asyncio.gather(*(init(c) for c in conns))
        elapsed = time.perf_counter() - started
        cpu1 = _cpu_by_pid(pids)
        for conn in conns:
            await conn.close()
    finally:
        await http.close()
    latencies.sort()
    return {
        "ok": len(latencies),
        "rate": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] if latencies else None,
        "max_ms": latencies[-1] if latencies else None,
        "elapsed_s": elapsed,
        "cpu_s": {pid: cpu1[pid] - cpu0.get(pid, 0.0) for pid in cpu1},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inits", type=int, default=64, help="new INITs, and the pool size")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    settings = {"runtime": "echo", "pool_size": args.inits, "log_level": "warning"}
    settings.update(rate_limit=1e9, rate_burst=1_000_000)
    ours = OursTarget(Path(tempfile.mkdtemp(prefix="sa-pool-burst-")), settings)
    ours.start()
    try:
        # admin, logger, supervisor and the pool: wait for every pooled process to be up
        deadline = time.monotonic() + 120
        while len(ours.actor_pids()) < args.inits + 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2.0)  # a benchmark's settling time: the new processes finish starting
        pids = [pid for group in ours.processes().values() for pid in group]
        res = asyncio.run(_burst(ours.url, args.inits, args.concurrency, pids))
    finally:
        stopped = ours.stop()
    busiest = sorted(res["cpu_s"].items(), key=lambda kv: -kv[1])[:3]
    print(
        f"{res['ok']}/{args.inits} INITs against a pool of {args.inits}, {args.concurrency} in flight: "
        f"{res['rate']:.1f}/s, p50 {res['p50_ms']:.1f} ms, max {res['max_ms']:.1f} ms; "
        f"CPU {sum(res['cpu_s'].values()):.2f} s in {res['elapsed_s']:.2f} s "
        f"(busiest: {', '.join(f'pid {p} {c:.2f} s' for p, c in busiest)}); "
        f"stopped in {stopped.get('stop_s')} s, leftovers {stopped.get('leftovers')}"
    )


if __name__ == "__main__":
    main()
