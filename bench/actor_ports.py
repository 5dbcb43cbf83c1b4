"""``python -m bench.actor_ports [--asks N]``: can single-node mode do without exposed actor ports?

Issue 18, item 11. Measures, each configuration in its own process (Thespian bases and the
transport patch are per process):

- ``tcp``: ``multiprocTCPBase`` as the daemon runs it (loopback, socket reuse off), no guard;
- ``tcp+guard``: the same with ``actorports.guard_actor_ports()`` (every accepted connection's
  owner looked up over NETLINK_SOCK_DIAG; other users' connections closed unread);
- ``queue``: ``multiprocQueueBase``, which listens on no port at all.

For each: the ask round trip to one actor (p50/p99 over ``--asks`` sequential asks after a
warm-up) and whether ``ThespianWatch`` works (an actor watches a pipe it wrote a byte to:
the daemon's bridge to the gateway depends on it). Prints one markdown row per configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from thespian.actors import Actor, ThespianWatch, WatchMessage  # type: ignore[import-untyped]

CONFIGS = ("tcp", "tcp+guard", "queue")


class Probe(Actor):  # type: ignore[misc]
    """Answers asks; on "watch", watches a pipe holding a byte and reports the wake-up."""

    asker: Any = None
    fd = -1

    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        if msg == "watch":
            self.asker = sender
            r, w = os.pipe()
            os.write(w, b"x")
            self.fd = r
            return ThespianWatch([r])
        if isinstance(msg, WatchMessage):
            if self.asker is not None:
                self.send(self.asker, "watched")
                self.asker = None
            return None
        if isinstance(msg, str) and msg.startswith("ping"):
            self.send(sender, msg)
        return None


def measure(config: str, asks: int) -> dict[str, Any]:
    """Run one configuration in this process."""
    os.environ["THESPIAN_BASE_IPADDR"] = "127.0.0.1"
    from thespian.actors import ActorSystem

    from bench.targets import free_port
    from sessionactors.actorsystem import restrict_to_loopback, system_capabilities

    if config == "queue":
        asys = ActorSystem("multiprocQueueBase", transientUnique=True)
    else:
        if config == "tcp":
            import sessionactors.actorports as ports

            ports._GUARDED = True  # restrict_to_loopback would install the guard: leave it out
        restrict_to_loopback()
        asys = ActorSystem("multiprocTCPBase", system_capabilities(free_port()), transientUnique=True)
    try:
        actor = asys.createActor(Probe)
        for i in range(50):
            asys.ask(actor, f"ping{i}", 5)
        times, lost = [], 0
        for i in range(asks):
            t = time.perf_counter()
            if asys.ask(actor, f"ping{i}", 5) != f"ping{i}":
                lost += 1
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        answer = asys.ask(actor, "watch", 3)
        return {
            "config": config,
            "p50_ms": round(statistics.median(times), 2),
            "p99_ms": round(times[int(len(times) * 0.99) - 1], 2),
            "lost": lost,
            "watch_works": answer == "watched",
        }
    finally:
        asys.shutdown()


def lookup_cost(n: int = 5000) -> str:
    """What the guard adds per accepted connection: one owner lookup, netlink and /proc."""
    import socket

    from sessionactors.actorports import _diag_uid, _proc_uid

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()) as _client:
            conn, peer = listener.accept()
            with conn:
                here = conn.getsockname()
                figures = []
                for lookup, count in ((_diag_uid, n), (_proc_uid, max(1, n // 50))):
                    started = time.perf_counter()
                    for _ in range(count):
                        lookup(here, peer)
                    figures.append((time.perf_counter() - started) / count * 1e6)
    with open("/proc/net/tcp") as fh:
        sockets = sum(1 for _ in fh) - 1
    return (
        f"owner lookup per accepted connection: netlink {figures[0]:.0f} us,"
        f" /proc/net/tcp fallback {figures[1]:.0f} us ({sockets} IPv4 sockets on this machine)\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.actor_ports", description=__doc__.splitlines()[0])
    parser.add_argument("--asks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each configuration (alternated)")
    parser.add_argument("--one", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.asks)))
        return 0
    rows: dict[str, list[dict[str, Any]]] = {c: [] for c in CONFIGS}
    for n in range(args.rounds):
        for config in CONFIGS[n % 3 :] + CONFIGS[: n % 3]:  # rotated: no configuration always first
            out = subprocess.run(
                [sys.executable, "-m", "bench.actor_ports", "--one", config, "--asks", str(args.asks)],
                capture_output=True,
                text=True,
                timeout=600,
            )
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            if out.returncode != 0 or not lines:
                print(f"{config}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                return 1
            rows[config].append(json.loads(lines[-1]))
    print(lookup_cost())
    print("| configuration | ask p50 (ms) | ask p99 (ms) | lost | ThespianWatch |")
    print("|---|---|---|---|---|")
    for config, runs in rows.items():
        p50 = " / ".join(f"{r['p50_ms']:.2f}" for r in runs)
        p99 = " / ".join(f"{r['p99_ms']:.2f}" for r in runs)
        lost = sum(r["lost"] for r in runs)
        watch = "works" if all(r["watch_works"] for r in runs) else "does not work"
        print(f"| {config} | {p50} | {p99} | {lost} | {watch} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
