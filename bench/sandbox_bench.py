"""Cost of the session sandbox: activation, command round trip and memory per session.

Compares the sandboxed ``local`` runtime with ``local-unsandboxed`` (and the sandbox without
cgroups, to split the cost), at the runtime level: what a session actor pays when it
starts its runtime (``start()`` until the shell is ready, which is the part of an
activation the sandbox changes) and per command (``run("true")`` from ``begin`` to the
final observation), and the PSS of the processes a live session keeps (bash alone, or
bwrap's monitor + bwrap's init + bash).

Run from the repository root, as root, with bubblewrap installed::

    python bench/sandbox_bench.py            # about a minute
    python bench/sandbox_bench.py --quick    # a few seconds, for a smoke test
"""

from __future__ import annotations

import argparse
import os
import platform
import select
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sessionactors.runtimes import cgroups
from sessionactors.runtimes.base import RuntimeContext
from sessionactors.runtimes.local import LocalRuntime, LocalUnsandboxedRuntime

VARIANTS: dict[str, tuple[type[LocalRuntime], dict[str, Any]]] = {
    "unsandboxed": (LocalUnsandboxedRuntime, {}),
    "sandbox, no cgroups": (LocalRuntime, {"cgroups": "off"}),
    "sandbox (default)": (LocalRuntime, {}),
}
_attach_times: list[float] = []


def _timed_attach(original: Any) -> Any:
    def attach(self: Any, pid: int) -> None:
        t = time.perf_counter()
        original(self, pid)
        _attach_times.append(time.perf_counter() - t)

    return attach


def run_once(rt: LocalRuntime, n: int) -> None:
    rt.begin({"id": n, "source": "user", "action": "run", "args": {"command": "true"}})
    while rt.busy:
        deadline = rt.next_deadline()
        wait = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select(rt.filenos(), [], [], wait)
        rt.poll(ready)


def pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total


def session_pids(rt: LocalRuntime) -> list[int]:
    shell = rt._shell
    assert shell is not None
    if shell.sandbox is None:
        return [shell.pid]
    return [shell.proc.pid, shell.sandbox.init_pid, shell.pid]


def measure(name: str, starts: int, rounds: int, base: Path) -> dict[str, float]:
    cls, options = VARIANTS[name]
    activations, trips, pss = [], [], []
    for i in range(starts):
        ctx = RuntimeContext(f"bench-{i}", base / f"{name[:4]}-{i}", options=dict(options))
        rt = cls(ctx)
        t = time.perf_counter()
        rt.start()
        activations.append(time.perf_counter() - t)
        if i < 5:
            for n in range(rounds):
                t = time.perf_counter()
                run_once(rt, n)
                trips.append(time.perf_counter() - t)
            pss.append(pss_kib(session_pids(rt)))
        rt.stop()
    return {
        "activation_ms_p50": statistics.median(activations) * 1e3,
        "activation_ms_p90": sorted(activations)[int(len(activations) * 0.9)] * 1e3,
        "roundtrip_ms_p50": statistics.median(trips) * 1e3,
        "roundtrip_ms_p90": sorted(trips)[int(len(trips) * 0.9)] * 1e3,
        "pss_mib": statistics.median(pss) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    starts, rounds = (6, 20) if args.quick else (40, 200)
    cgroups.CgroupSet.attach = _timed_attach(cgroups.CgroupSet.attach)  # type: ignore[method-assign]
    print(f"# {platform.node()} {platform.platform()}, {os.cpu_count()} CPUs, cgroups {cgroups.layout()}")
    print(f"# {starts} starts per variant (interleaved rounds), {rounds} round trips x 5 sessions")
    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-") as tmp:
        for _ in range(2):  # two interleaved rounds: load on a shared machine drifts
            for name in VARIANTS:
                results[name].append(measure(name, starts // 2, rounds, Path(tmp)))
    print(f"{'variant':22} {'start p50':>10} {'start p90':>10} {'rt p50':>8} {'rt p90':>8} {'PSS MiB':>8}")
    merged = {}
    for name, runs in results.items():
        m = {k: statistics.mean(r[k] for r in runs) for k in runs[0]}
        merged[name] = m
        print(
            f"{name:22} {m['activation_ms_p50']:10.1f} {m['activation_ms_p90']:10.1f} "
            f"{m['roundtrip_ms_p50']:8.2f} {m['roundtrip_ms_p90']:8.2f} {m['pss_mib']:8.2f}"
        )
    base, full = merged["unsandboxed"], merged["sandbox (default)"]
    print(
        f"sandbox adds: {full['activation_ms_p50'] - base['activation_ms_p50']:+.1f} ms per start (p50), "
        f"{full['roundtrip_ms_p50'] - base['roundtrip_ms_p50']:+.2f} ms per round trip (p50), "
        f"{full['pss_mib'] - base['pss_mib']:+.2f} MiB PSS per session"
    )
    if _attach_times:
        print(
            f"of which cgroup moves (3 controllers in parallel): p50 {statistics.median(_attach_times) * 1e3:.1f} ms"
        )


if __name__ == "__main__":
    main()
