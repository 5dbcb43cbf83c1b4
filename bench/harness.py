"""The benchmark run: three targets, the same client load, one table.

The three servers run side by side for the whole run (idle ones cost nothing
measurable) and every scenario visits them back to back, so that the figures
of one row are taken within a minute of each other on this noisy, shared
machine. Scenarios, in order (each one closes its connections and, for ours,
waits until every session it made has passivated before the next starts):

 1. memory baseline, idle connections (frontend RSS growth / connections),
    live sessions (ours: actor process group RSS/PSS growth / sessions);
 2. round trip: S sessions x 2 ``message``/s, open loop, fixed schedule;
 3. (full run) the same under py-spy: gateway and one session actor (ours);
 4. events/s: S sessions x 3 tabs, closed loop (``window`` messages in flight per session);
 5. fan-out: 1 session x 10 and x 50 tabs, closed loop;
 6. attach: INIT with the token of a live session, one after the other;
 7. activations: new INITs; then (ours) the same sessions passivated and INIT again
    (rehydration); disk per session;
 8. passivation punctuality (ours, close_delay = 1 s): lateness of each session's
    passivation (its ``last_active`` stamp in the store) beyond disconnect + close_delay;
 9. rehydrate a session of 10,000 events (single: join + replay of a seeded session);
10. growth: activation and round trip at each size in ``levels`` (the largest is the
    "live sessions held at once" check: errors, memory).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import profile as pyspy
from .load import LoadPool, split
from .report import render
from .targets import REPO, LimitTarget, OursTarget, SingleTarget, Target, memory_kb

__all__ = ["Plan", "run"]

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Plan:
    """Counts and durations of one run (``full()`` or ``quick()``)."""

    mode: str = "full"
    load_procs: int = 1
    close_delay: float = 1.0
    pool_size: int | None = None  # None: the daemon's default
    rt_sessions: int = 100
    rt_rate: float = 2.0
    rt_duration: float = 20.0
    tp_sessions: int = 100
    tp_tabs: int = 3
    tp_window: int = 2
    tp_duration: float = 10.0
    warmup: float = 1.0
    fan_tabs: tuple[int, ...] = (10, 50)
    fan_window: int = 8
    fan_duration: float = 8.0
    attach_count: int = 200
    activations: int = 200
    init_concurrency: int = 32
    punct_sessions: int = 50
    punct_spread: float = 1.0
    replay_events: int = 10_000
    replay_reps: int = 3
    mem_sessions: int = 100
    idle_conns: int = 1000
    levels: tuple[int, ...] = (10, 100, 500)
    level_duration: float = 10.0
    profile: bool = True
    profile_duration: float = 10.0
    targets: tuple[str, ...] = ("limit", "single", "ours")
    settings: tuple[tuple[str, str], ...] = ()  # extra daemon settings (SESSIONACTORS_<KEY>), last wins
    only: tuple[str, ...] = ()

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            mode="quick", rt_sessions=30, rt_duration=3.0, tp_sessions=30, tp_duration=2.0, warmup=0.5,
            fan_tabs=(50,), fan_duration=1.5, attach_count=30, activations=30, punct_sessions=10, punct_spread=0.3,
            replay_reps=1, mem_sessions=20, idle_conns=200, levels=(40,), level_duration=2.0,
            profile=False,
        )  # fmt: skip


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p90": pct(values, 90),
        "p99": pct(values, 99),
        "max": max(values) if values else None,
    }


def _merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the per-worker answers of one step: lists concatenated, numbers summed, wall = max."""
    out: dict[str, Any] = {}
    for res in results:
        for key, value in res.items():
            if key in ("wall_s", "init_elapsed", "join_elapsed", "send_lag_p99_ms"):
                out[key] = max(out.get(key, 0.0), value)
            elif isinstance(value, list):
                out.setdefault(key, []).extend(value)
            elif isinstance(value, dict):
                out.setdefault(key, {}).update(value)
            elif isinstance(value, (int, float)):
                out[key] = out.get(key, 0) + value
            else:
                out[key] = value
    return out


@dataclass
class Run:
    """State of one benchmark run."""

    plan: Plan
    workdir: Path
    pool: LoadPool
    targets: dict[str, Target]
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    growth: list[dict[str, Any]] = field(default_factory=list)
    cpu: dict[str, dict[str, Any]] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ours_baseline_procs: int = 0
    done: set[str] = field(default_factory=set)

    # -- helpers --------------------------------------------------------------------
    def log(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def put(self, key: str, target: str, value: Any) -> None:
        self.figures.setdefault(key, {})[target] = value

    def active(self, *names: str) -> list[Target]:
        return [self.targets[n] for n in names if n in self.targets]

    def wanted(self, scenario: str) -> bool:
        return not self.plan.only or scenario in self.plan.only

    def measured(
        self, scenario: str, target: Target, step: str, params: Any, one: bool = False
    ) -> dict[str, Any]:
        """Run a load step on every worker (or worker 0 alone), with the target's and the load's
        CPU use around it."""
        before = target.cpu()
        t0 = time.monotonic()
        if one:
            result = self.pool.one(step, params)
        else:
            result = _merge(self.pool.call(step, params))
        wall = time.monotonic() - t0
        after = target.cpu()
        server = {role: round(100 * (after.get(role, 0) - before.get(role, 0)) / wall, 1) for role in after}
        load_wall = result.get("wall_s") or wall
        info = self.cpu.setdefault(scenario, {})[target.name] = {
            "server_cpu_pct": server,
            "load_cpu_pct": round(100 * result.get("cpu_s", 0.0) / load_wall, 1),
            "load_procs": 1 if one else self.pool.n,
        }
        if result.get("inits"):  # a burst of INITs: what one costs each process, in CPU ms
            n = result["inits"]
            info["server_ms_per_init"] = {
                role: round(1000 * (after.get(role, 0) - before.get(role, 0)) / n, 1) for role in after
            }
            info["load_ms_per_init"] = round(1000 * result.get("cpu_s", 0.0) / n, 1)
        return result

    def shards(self, total: int, **params: Any) -> list[dict[str, Any] | None]:
        return [dict(params, sessions=k) if k else None for k in split(total, self.pool.n)]

    def open_sessions(self, target: Target, n: int, tabs: int = 1, **extra: Any) -> dict[str, Any]:
        params = self.shards(n, url=target.url, tabs=tabs, concurrency=self.plan.init_concurrency, **extra)
        return _merge(self.pool.call("open_sessions", params))

    def close_sessions(self, spread: float = 0.0) -> dict[str, float]:
        return dict(_merge(self.pool.call("close_sessions", {"spread": spread})).get("closed_at", {}))

    def settle(self, target: Target, timeout: float = 60.0) -> None:
        """Ours: wait until no session is live and the actor processes are back to the baseline count."""
        if not isinstance(target, OursTarget):
            return
        deadline = time.monotonic() + timeout
        time.sleep(self.plan.close_delay)
        while time.monotonic() < deadline:
            live = [s for s in target.admin_sessions() if s and s.get("state") == "live"]
            if not live and len(target.actor_pids()) <= self.ours_baseline_procs:
                return
            time.sleep(0.25)
        self.notes.append(f"settle: ours still had live sessions or extra actor processes after {timeout} s")

    def warm_up(self, target: Target, sessions: int, timeout: float = 15.0) -> None:
        """Ours: let the pool refill after the INITs (its forks would land in the measurement)."""
        if not isinstance(target, OursTarget):
            return
        deadline = time.monotonic() + timeout
        while len(target.actor_pids()) < self.ours_baseline_procs + sessions and time.monotonic() < deadline:
            time.sleep(0.1)

    def wait_passivated(self, target: OursTarget, sessions: list[tuple[str, str]], timeout: float) -> int:
        """Poll ``GET /api/sessions/<id>`` (bearer token) until every one is passivated; answers how many are."""
        todo = dict(sessions)
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            for sid, token in list(todo.items()):
                if target.session_state(sid, token) == "passivated":
                    del todo[sid]
            if todo:
                time.sleep(0.1)
        return len(sessions) - len(todo)

    # -- scenarios ------------------------------------------------------------------------
    def memory(self) -> None:
        plan = self.plan
        for target in self.targets.values():
            pid = target.frontend_pid()
            assert pid is not None
            rss0, _ = memory_kb([pid])
            res = _merge(
                self.pool.call(
                    "open_idle", [{"url": target.url, "n": k} for k in split(plan.idle_conns, self.pool.n)]
                )
            )
            time.sleep(1.0)
            rss1, _ = memory_kb([pid])
            self.pool.call("close_idle", {})
            opened = res.get("open", 0)
            if opened:
                self.put("mem_conn_kb", target.name, (rss1 - rss0) / opened)
            if res.get("errors"):
                self.errors.append(
                    f"{target.name} idle connections: {len(res['errors'])} errors, e.g. {res['errors'][0]}"
                )
            self.log(f"{target.name}: {opened} idle connections, frontend RSS +{(rss1 - rss0) / 1024:.1f} MB")
        for target in self.active("ours", "single"):
            time.sleep(0.5)
            if isinstance(target, OursTarget):
                pids = target.actor_pids()
                rss0, pss0 = memory_kb(pids)
                self.put("mem_baseline_mb", target.name, round(rss0 / 1024, 1))
            else:
                pids = [target.proc.pid] if target.proc else []
                rss0, pss0 = memory_kb(pids)
            res = self.open_sessions(target, plan.mem_sessions)
            time.sleep(1.0)
            if isinstance(target, OursTarget):
                pids = target.actor_pids()
                per = sorted(memory_kb([p])[0] for p in pids)
                self.put("mem_actor_proc_rss_mb", target.name, round(per[len(per) // 2] / 1024, 1))
            rss1, pss1 = memory_kb(pids)
            n = res.get("inits", 0) or 1
            self.put("mem_session_rss_mb", target.name, (rss1 - rss0) / 1024 / n)
            self.put("mem_session_pss_mb", target.name, (pss1 - pss0) / 1024 / n)
            self.log(
                f"{target.name}: {n} live sessions, RSS +{(rss1 - rss0) / 1024:.0f} MB, PSS +{(pss1 - pss0) / 1024:.0f} MB"
            )
            self.close_sessions()
            self.settle(target)

    def roundtrip(self, target: Target, sessions: int, duration: float, scenario: str) -> dict[str, Any]:
        opened = self.open_sessions(target, sessions)
        self.warm_up(target, sessions)
        res = self.measured(scenario, target, "roundtrip", {"rate": self.plan.rt_rate, "duration": duration})
        self.close_sessions()
        lat = summary(res.get("lat_ms", []))
        errors = len(opened.get("errors", [])) + len(res.get("errors", []))
        out = {
            "sessions": sessions,
            "inits": opened.get("inits", 0),
            "activation_per_s": opened["inits"] / opened["init_elapsed"]
            if opened.get("init_elapsed")
            else None,
            "init_p50_ms": pct(opened.get("init_ms", []), 50),
            "rt": lat,
            "sent": res.get("sent", 0),
            "lost": res.get("lost", 0),
            "errors": errors,
            "error_samples": (opened.get("errors", []) + res.get("errors", []))[:3],
            "send_lag_p99_ms": res.get("send_lag_p99_ms"),
        }
        self.log(
            f"{target.name}: round trip {sessions} sessions: p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms "
            f"({res.get('received', 0)}/{res.get('sent', 0)}, lost {out['lost']}, errors {errors})"
            if lat["n"]
            else f"{target.name}: round trip {sessions} sessions: no samples ({out['error_samples']})"
        )
        self.settle(target)
        return out

    def roundtrips(self) -> None:
        plan = self.plan
        for target in self.targets.values():
            out = self.roundtrip(target, plan.rt_sessions, plan.rt_duration, "roundtrip")
            self.put("rt_p50_ms", target.name, out["rt"]["p50"])
            self.put("rt_p99_ms", target.name, out["rt"]["p99"])
            self.put("rt_lost", target.name, out["lost"] + out["errors"])
            self._growth_row(plan.rt_sessions, target.name, out)

    def _growth_row(self, level: int, target: str, out: dict[str, Any]) -> None:
        for row in self.growth:
            if row["sessions"] == level:
                row[target] = out
                return
        self.growth.append({"sessions": level, target: out})
        self.growth.sort(key=lambda r: r["sessions"])

    def profile(self) -> None:
        """py-spy on ours during a round trip, a closed loop and a burst of new INITs (not counted)."""
        ours = self.targets.get("ours")
        if not isinstance(ours, OursTarget) or not pyspy.available():
            self.notes.append("profile skipped (no py-spy or no ours target)")
            return
        plan = self.plan
        dur = plan.profile_duration
        phases: list[tuple[str, str, dict[str, Any], int, int, tuple[str, ...]]] = [
            ("roundtrip", "roundtrip", {"rate": plan.rt_rate, "duration": dur + 2}, plan.rt_sessions, 1,
             ("gateway", "session-wall")),
            ("throughput", "closed_loop", {"duration": dur + 1, "warmup": plan.warmup, "window": plan.tp_window},
             plan.tp_sessions, plan.tp_tabs, ("gateway", "session-wall")),
            ("activation", "open_sessions", {}, plan.activations, 1, ("supervisor", "supervisor-wall", "gateway")),
            ("one-session", "closed_loop", {"duration": dur + 1, "warmup": plan.warmup, "window": 1}, 1, 1,
             ("session", "session-wall")),
        ]  # fmt: skip
        for label, step, params, sessions, tabs, roles in phases:
            if step != "open_sessions":
                self.open_sessions(ours, sessions, tabs)
            live = [s for s in ours.admin_sessions() if s.get("state") == "live" and s.get("pid")]
            pids = {
                "gateway": ours.gateway_pid(),
                "session": live[0]["pid"] if live else None,
                "supervisor": ours.supervisor_pid(),
            }
            records = {}
            for role in roles:
                pid = pids.get(role.removesuffix("-wall").removesuffix("-tree"))
                if pid:
                    out = RESULTS / f"profile-{label}-{role}.raw"
                    records[role] = (
                        out,
                        pyspy.start_record(
                            pid, out, dur, idle=role.endswith("-wall"), children="-tree" in role
                        ),
                    )
            time.sleep(0.3)  # py-spy attaches
            if step == "open_sessions":
                self.open_sessions(ours, sessions, tabs)
            else:
                self.pool.call(step, params)
            for role, (out, proc) in records.items():
                err = pyspy.finish_record(proc)
                costs = pyspy.top_costs(out)
                costs["raw_file"] = str(out.relative_to(REPO))
                costs["idle_included"] = role.endswith("-wall")
                if err:
                    costs["error"] = err
                self.profiles[f"{label}/{role}"] = costs
                self.log(f"profile {label}/{role}: {costs['samples']} samples {err}")
            self.close_sessions()
            self.settle(ours)

    def throughput(self) -> None:
        plan = self.plan
        for target in self.active("single", "ours"):
            opened = self.open_sessions(target, plan.tp_sessions, plan.tp_tabs)
            res = self.measured(
                "throughput", target, "closed_loop",
                {"duration": plan.tp_duration, "warmup": plan.warmup, "window": plan.tp_window},
            )  # fmt: skip
            self.close_sessions()
            rate = res["events"] / res["wall_s"] if res.get("wall_s") else None
            self.put("tp_events_s", target.name, rate)
            self.put("tp_errors", target.name, len(opened.get("errors", [])) + len(res.get("errors", [])))
            self.log(
                f"{target.name}: {plan.tp_sessions}x{plan.tp_tabs} closed loop: {rate:.0f} events/s, {res['actions'] / res['wall_s']:.0f} actions/s"
            )
            self.settle(target)
        for tabs in plan.fan_tabs:
            for target in self.active("single", "ours"):
                opened = self.pool.one("open_sessions", {"url": target.url, "sessions": 1, "tabs": tabs})
                res = self.measured(
                    f"fanout1x{tabs}", target, "closed_loop",
                    {"duration": plan.fan_duration, "warmup": plan.warmup, "window": plan.fan_window}, one=True,
                )  # fmt: skip
                self.pool.one("close_sessions", {})
                rate = res["events"] / res["wall_s"]
                self.put(f"fan{tabs}_events_s", target.name, rate)
                if opened.get("errors") or res.get("errors"):
                    self.errors.append(
                        f"{target.name} fan-out 1x{tabs}: {(opened.get('errors', []) + res.get('errors', []))[:2]}"
                    )
                self.log(f"{target.name}: fan-out 1x{tabs}: {rate:.0f} events/s")
                self.settle(target)

    def attach(self) -> None:
        plan = self.plan
        for target in self.targets.values():
            opened = self.pool.one("open_sessions", {"url": target.url, "sessions": 1})
            sid, token = opened["sessions"][0]
            last = self.pool.one("send_messages", {"count": 2})["last_ids"].get(sid, -1)
            res = self.pool.one(
                "attach",
                {"url": target.url, "token": token, "count": plan.attach_count, "latest_event_id": last},
            )
            self.pool.one("close_sessions", {})
            self.put("attach_p50_ms", target.name, pct(res["lat_ms"], 50))
            self.put("attach_p99_ms", target.name, pct(res["lat_ms"], 99))
            if res["errors"]:
                self.errors.append(
                    f"{target.name} attach: {len(res['errors'])} errors, e.g. {res['errors'][0]}"
                )
            self.log(f"{target.name}: attach p50 {pct(res['lat_ms'], 50):.2f} ms over {len(res['lat_ms'])}")
            self.settle(target)

    def activations(self) -> None:
        plan = self.plan
        for target in self.targets.values():
            params = self.shards(
                plan.activations, url=target.url, tabs=1, concurrency=plan.init_concurrency
            )  # measured: where the CPU of a burst goes, per process role
            opened = self.measured("activations (new)", target, "open_sessions", params)
            rate = opened["inits"] / opened["init_elapsed"] if opened.get("init_elapsed") else None
            self.put("act_new_s", target.name, rate)
            self.put("act_new_p50_ms", target.name, pct(opened.get("init_ms", []), 50))
            self.log(
                f"{target.name}: {opened['inits']} new INITs: {rate:.0f}/s ({len(opened['errors'])} errors)"
            )
            sessions = [s for s in opened["sessions"] if s[0]]
            self.pool.call("send_messages", {"count": 2})
            self.close_sessions()
            if not isinstance(target, OursTarget):
                continue
            done = self.wait_passivated(target, sessions, plan.close_delay + 60)
            self.settle(target)
            if done < len(sessions):
                self.errors.append(f"ours: only {done}/{len(sessions)} sessions passivated in time")
            tokens = [tok for _, tok in sessions]
            again = self.measured("activations (rehydrating)", target, "open_sessions", [
                {"url": target.url, "tokens": tokens[i::self.pool.n], "concurrency": plan.init_concurrency}
                for i in range(self.pool.n)])  # fmt: skip
            rate = again["inits"] / again["init_elapsed"] if again.get("init_elapsed") else None
            self.put("act_rehydrate_s", target.name, rate)
            self.put("act_rehydrate_p50_ms", target.name, pct(again.get("init_ms", []), 50))
            self.log(
                f"ours: {again['inits']} rehydrating INITs: {rate:.0f}/s ({len(again['errors'])} errors)"
            )
            if again.get("errors"):
                self.errors.append(f"ours rehydrating INITs: {again['errors'][:2]}")
            self.close_sessions()
            self.settle(target)

    def disk(self) -> None:
        """Disk per session and per event: the store's files over what they hold (after the other scenarios)."""
        for target in self.active("single", "ours"):
            size = target.db_size()  # type: ignore[attr-defined]
            sessions, events = target.db_counts()  # type: ignore[attr-defined]
            self.put("disk_session_kb", target.name, size / 1024 / max(1, sessions))
            self.put("disk_event_b", target.name, size / max(1, events))
            self.log(f"{target.name}: store {size / 1e6:.1f} MB for {sessions} sessions, {events} events")

    def punctuality(self) -> None:
        ours = self.targets.get("ours")
        if not isinstance(ours, OursTarget):
            return
        plan = self.plan
        opened = self.open_sessions(ours, plan.punct_sessions)
        sessions = [s for s in opened["sessions"] if s[0]]
        self.pool.call("send_messages", {"count": 1})
        closed_at = self.close_sessions(spread=plan.punct_spread)
        ids = list(closed_at)
        deadline = time.monotonic() + plan.close_delay + plan.punct_spread + 60
        times: dict[str, tuple[str, float]] = {}
        while time.monotonic() < deadline:
            times = ours.passivation_times(ids)
            if all(times.get(i, ("", 0))[0] == "passivated" for i in ids):
                break
            time.sleep(0.1)
        late = [
            (times[i][1] - closed_at[i] - plan.close_delay) * 1000
            for i in ids
            if times.get(i, ("", 0))[0] == "passivated"
        ]
        api_ok = sum(1 for sid, tok in sessions[:10] if ours.session_state(sid, tok) == "passivated")
        self.put("passivation_late_p50_ms", "ours", pct(late, 50))
        self.put("passivation_late_p99_ms", "ours", pct(late, 99))
        self.put("passivation_late_max_ms", "ours", max(late) if late else None)
        if len(late) < len(ids):
            self.errors.append(f"ours: {len(ids) - len(late)} of {len(ids)} sessions did not passivate")
        self.log(
            f"ours: passivation lateness p50 {pct(late, 50)} ms p99 {pct(late, 99)} ms (API agrees on {api_ok}/{min(10, len(sessions))})"
        )
        self.settle(ours)

    def rehydrate(self) -> None:
        plan = self.plan
        ours = self.targets.get("ours")
        if isinstance(ours, OursTarget):
            opened = self.pool.one("open_sessions", {"url": ours.url, "sessions": 1})
            sid, token = opened["sessions"][0]
            self.pool.one("send_messages", {"count": 1})
            self.pool.one("close_sessions", {})
            answers, replays = [], []
            for rep in range(plan.replay_reps):
                if self.wait_passivated(ours, [(sid, token)], plan.close_delay + 30) != 1:
                    self.errors.append("ours: the 10k-event session did not passivate")
                    break
                if rep == 0:
                    last = ours.append_events(
                        sid, plan.replay_events - 1
                    )  # + the message event = replay_events
                self.settle(ours)
                res = self.pool.one("replay", {"url": ours.url, "token": token, "expect_last": last})
                if "error" in res:
                    self.errors.append(f"ours replay: {res}")
                    break
                answers.append(res["answer_ms"])
                replays.append(res["replay_ms"])
                self.log(
                    f"ours: rehydrate {res['events']} events: answer {res['answer_ms']:.0f} ms, replay {res['replay_ms']:.0f} ms, out of order {res['out_of_order']}"
                )
            self.put("rehydrate_answer_ms", "ours", statistics.median(answers) if answers else None)
            self.put("rehydrate_replay_ms", "ours", statistics.median(replays) if replays else None)
        single = self.targets.get("single")
        if isinstance(single, SingleTarget) and single.seeded:
            token, _ = single.seeded
            answers, replays = [], []
            for _rep in range(plan.replay_reps):
                res = self.pool.one(
                    "replay", {"url": single.url, "token": token, "expect_last": plan.replay_events - 1}
                )
                if "error" in res:
                    self.errors.append(f"single replay: {res}")
                    break
                answers.append(res["answer_ms"])
                replays.append(res["replay_ms"])
                self.log(
                    f"single: join+replay {res['events']} events: answer {res['answer_ms']:.0f} ms, replay {res['replay_ms']:.0f} ms"
                )
            self.put("rehydrate_answer_ms", "single", statistics.median(answers) if answers else None)
            self.put("rehydrate_replay_ms", "single", statistics.median(replays) if replays else None)

    def levels(self) -> None:
        plan = self.plan
        top = max(plan.levels)
        for level in plan.levels:
            if level == plan.rt_sessions and "roundtrip" in self.done:
                continue
            for target in self.targets.values():
                if level == top and isinstance(target, OursTarget):
                    out = self._hold(target, level)
                else:
                    out = self.roundtrip(target, level, plan.level_duration, f"roundtrip@{level}")
                self._growth_row(level, target.name, out)

    def _hold(self, ours: OursTarget, level: int) -> dict[str, Any]:
        """The largest level on ours: hold ``level`` live sessions, measure memory, run the round trip."""
        rss0, pss0 = memory_kb(ours.actor_pids())
        opened = self.open_sessions(ours, level)
        time.sleep(1.0)
        pids = ours.actor_pids()
        rss1, pss1 = memory_kb(pids)
        sessions = ours.admin_sessions()
        live = sum(1 for s in sessions if s.get("state") == "live")
        records = {}
        if self.plan.profile and pyspy.available():  # where the time goes when it does not keep up
            session_pid = next(
                (s["pid"] for s in sessions if s.get("state") == "live" and s.get("pid")), None
            )
            duration = min(self.plan.profile_duration, self.plan.level_duration)
            for role, pid, idle in (
                ("gateway", ours.gateway_pid(), False),
                ("session-wall", session_pid, True),
                ("supervisor", ours.supervisor_pid(), False),
            ):
                if pid:
                    path = RESULTS / f"profile-hold{level}-{role}.raw"
                    records[role] = (path, pyspy.start_record(pid, path, duration, idle=idle))
            time.sleep(0.3)
        res = self.measured(
            f"roundtrip@{level}",
            ours,
            "roundtrip",
            {"rate": self.plan.rt_rate, "duration": self.plan.level_duration},
        )
        for role, (path, proc) in records.items():
            err = pyspy.finish_record(proc)
            costs = pyspy.top_costs(path)
            costs["raw_file"] = str(path.relative_to(REPO))
            costs["idle_included"] = role.endswith("-wall")
            if err:
                costs["error"] = err
            self.profiles[f"hold{level}/{role}"] = costs
        self.close_sessions()
        errors = opened.get("errors", []) + res.get("errors", [])
        out = {
            "sessions": level,
            "inits": opened.get("inits", 0),
            "live": live,
            "actor_processes": len(pids),
            "activation_per_s": opened["inits"] / opened["init_elapsed"]
            if opened.get("init_elapsed")
            else None,
            "init_p50_ms": pct(opened.get("init_ms", []), 50),
            "rt": summary(res.get("lat_ms", [])),
            "sent": res.get("sent", 0),
            "lost": res.get("lost", 0),
            "errors": len(errors),
            "error_samples": errors[:3],
            "rss_mb_total": round(rss1 / 1024),
            "pss_mb_total": round(pss1 / 1024),
            "rss_mb_per_session": (rss1 - rss0) / 1024 / max(1, opened.get("inits", 0)),
            "pss_mb_per_session": (pss1 - pss0) / 1024 / max(1, opened.get("inits", 0)),
        }
        self.put("live_held", "ours", live)
        self.put("live_errors", "ours", len(errors) + out["lost"])
        self.log(
            f"ours: held {live}/{level} live sessions, {len(pids)} actor processes, RSS {out['rss_mb_total']} MB, errors {len(errors)}, lost {out['lost']}"
        )
        self.settle(ours, timeout=120)
        return out


def fsync_calibration(directory: Path, commits: int = 200) -> dict[str, float]:
    """What the disk allows right now: one-row SQLite commits (WAL, synchronous=FULL) per second."""
    import sqlite3

    path = directory / "calibration.db"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body TEXT)")
        times = []
        for i in range(commits):
            t0 = time.perf_counter()
            db.execute("BEGIN")
            db.execute("INSERT INTO t (body) VALUES (?)", ("x" * 300 + str(i),))
            db.execute("COMMIT")
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    return {"commits_per_s": round(1000 * len(times) / sum(times)), "p50_ms": pct(times, 50) or 0.0}


def machine() -> dict[str, Any]:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    versions: dict[str, str | None] = {}
    for pkg in ("thespian", "eventlet", "python-socketio", "python-engineio", "aiohttp", "uvloop", "py-spy"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg)
        except Exception:
            versions[pkg] = None
    return {
        "git_head": sh(f"git -C {REPO} rev-parse --short HEAD"),
        "git_dirty": sh(f"git -C {REPO} status --short sessionactors").splitlines(),
        "nproc": os.cpu_count(),
        "free_h": sh("free -h"),
        "loadavg_start": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def run(plan: Plan, out_dir: Path = RESULTS) -> dict[str, Any]:
    """Start the targets and the load, run every scenario, stop everything, write and print the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    meta = machine()
    workdir = Path(tempfile.mkdtemp(prefix="sa-bench-"))
    targets: dict[str, Target] = {}
    if "limit" in plan.targets:
        targets["limit"] = LimitTarget(workdir / "limit")
    if "single" in plan.targets:
        targets["single"] = SingleTarget(workdir / "single")
        targets["single"].seed(plan.replay_events)  # type: ignore[attr-defined]
    if "ours" in plan.targets:
        settings: dict[str, Any] = {
            "runtime": "echo",
            "close_delay": plan.close_delay,
            "rate_limit": 1e9,  # the per-connection action limit (50/s) would cap the closed loops
            "rate_burst": 1_000_000,
            "max_connections_per_session": max(64, max(plan.fan_tabs) + 2),
            "log_level": "warning",
        }
        if plan.pool_size is not None:
            settings["pool_size"] = plan.pool_size
        for key, value in plan.settings:
            if value == "":
                settings.pop(key, None)  # --set key= : the daemon's own default
            else:
                settings[key] = value
        targets["ours"] = OursTarget(workdir / "ours", settings)
    workdir.mkdir(parents=True, exist_ok=True)
    meta["fsync_start"] = fsync_calibration(workdir)
    pool = LoadPool(plan.load_procs)
    state = Run(plan, workdir, pool, targets)
    stops: dict[str, Any] = {}
    startup: dict[str, float] = {}
    try:
        for name, target in targets.items():
            startup[name] = round(target.start(), 2)
            state.log(f"{name} up on {target.url} in {startup[name]} s")
        ours = targets.get("ours")
        if isinstance(ours, OursTarget):
            time.sleep(1.0)  # let the warm pool fill
            state.ours_baseline_procs = len(ours.actor_pids())
        for scenario in ("memory", "roundtrips", "profile", "throughput", "attach", "activations",
                         "punctuality", "rehydrate", "levels", "disk"):  # fmt: skip
            if scenario == "profile" and not plan.profile and "profile" not in plan.only:
                continue
            if not state.wanted(scenario):
                continue
            state.log(f"--- {scenario}")
            try:
                getattr(state, scenario)()
                state.done.add(scenario)
            except Exception:
                state.errors.append(f"scenario {scenario} failed: {traceback.format_exc()[-1500:]}")
                state.log(state.errors[-1])
                try:
                    pool.call("close_sessions", {}, timeout=60)
                    pool.call("close_idle", {}, timeout=60)
                except Exception:
                    pass
    finally:
        load_pids = pool.pids
        pool.close()
        for name, target in targets.items():
            stops[name] = target.stop()
            if isinstance(target, OursTarget):
                stops[name]["log"] = target.log_counts()
            state.log(f"{name} stopped: {stops[name]}")
        left_load = [p for p in load_pids if os.path.exists(f"/proc/{p}")]
        if left_load:
            state.errors.append(f"load processes left: {left_load}")
    meta["loadavg_end"] = os.getloadavg()
    meta["fsync_end"] = fsync_calibration(workdir)
    meta["duration_s"] = round(time.time() - started, 1)
    meta["startup_s"] = startup
    meta["plan"] = asdict(plan)
    ours_target = targets.get("ours")
    meta["daemon_settings"] = ours_target.settings if isinstance(ours_target, OursTarget) else {}
    result: dict[str, Any] = {
        "meta": meta,
        "figures": state.figures,
        "growth": state.growth,
        "cpu": state.cpu,
        "profiles": state.profiles,
        "stops": stops,
        "notes": state.notes,
        "errors": state.errors,
    }
    result["markdown"] = render(result)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"bench-{plan.mode}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    (out_dir / f"bench-{plan.mode}-{stamp}.md").write_text(str(result["markdown"]))
    print(result["markdown"])
    print(f"\n(results written to {path.relative_to(REPO)})")
    return result
