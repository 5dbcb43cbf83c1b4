"""``python -m bench [--quick]``: measure the daemon, the limit and the single-process design in one run.

Run from the repository root. The full run takes about 10 minutes, ``--quick``
about one. The table is printed at the end and written (JSON and markdown) to
``bench/results/``. See docs/benchmarks-harness.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .harness import Plan, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced counts and durations (about 1 minute)")
    parser.add_argument(
        "--targets", default="limit,single,ours", help="comma-separated subset of limit,single,ours"
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated scenarios: memory,roundtrips,profile,throughput,attach,activations,"
        "punctuality,rehydrate,levels",
    )
    parser.add_argument("--load-procs", type=int, help="number of load processes (default 1)")
    parser.add_argument("--levels", help="comma-separated session counts for the growth table")
    parser.add_argument(
        "--rate", type=float, help="messages per second per session in the round trips (default 2)"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy runs")
    parser.add_argument("--pool-size", type=int, help="the daemon's warm pool size (default: its own)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a daemon setting (SESSIONACTORS_<KEY>), e.g. --set fsync=normal; KEY= restores the default",
    )
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    changes: dict[str, object] = {
        "targets": tuple(t.strip() for t in args.targets.split(",") if t.strip()),
        "only": tuple(s.strip() for s in args.only.split(",") if s.strip()),
    }
    if args.load_procs:
        changes["load_procs"] = args.load_procs
    if args.rate:
        changes["rt_rate"] = args.rate
    if args.levels:
        changes["levels"] = tuple(int(x) for x in args.levels.split(","))
    if args.no_profile:
        changes["profile"] = False
    if args.pool_size is not None:
        changes["pool_size"] = args.pool_size
    if args.set:
        pairs = [item.partition("=") for item in args.set]
        if any(not key or not sep for key, sep, _ in pairs):
            parser.error("--set takes KEY=VALUE")
        changes["settings"] = tuple((key.strip().lower(), value) for key, _, value in pairs)
    run(dataclasses.replace(plan, **changes))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
