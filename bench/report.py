"""The markdown report of one run: the figures table, the growth table, CPU, profiles, errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["render", "ROWS", "fmt"]

Figures = dict[str, dict[str, Any]]


def fmt(value: Any, digits: int = 3) -> str:
    """A number with about ``digits`` significant digits (no scientific notation); '-' for None."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        mag = abs(value)
        if mag >= 10 ** (digits - 1):
            return f"{value:,.0f}"
        decimals = digits - 1 - int(f"{mag:e}".split("e")[1])
        return f"{value:.{max(0, decimals)}f}"
    return str(value)


def _get(figs: Figures, key: str, target: str) -> Any:
    return figs.get(key, {}).get(target)


def _ratio(a: Any, b: Any) -> str:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return f"{a / b:.2f}x"
    return "-"


Check = Callable[[Figures], tuple[str, bool | None]]


def _le(key: str, limit: float, text: str) -> Check:
    def check(figs: Figures) -> tuple[str, bool | None]:
        v = _get(figs, key, "ours")
        return text, (v <= limit) if isinstance(v, (int, float)) else None

    return check


def _ge(key: str, limit: float, text: str) -> Check:
    def check(figs: Figures) -> tuple[str, bool | None]:
        v = _get(figs, key, "ours")
        return text, (v >= limit) if isinstance(v, (int, float)) else None

    return check


def _rt_p50(figs: Figures) -> tuple[str, bool | None]:
    ours, limit = _get(figs, "rt_p50_ms", "ours"), _get(figs, "rt_p50_ms", "limit")
    ok = ours <= 2 * limit if isinstance(ours, (int, float)) and isinstance(limit, (int, float)) else None
    return "<= 2x the limit", ok


def _tp(figs: Figures) -> tuple[str, bool | None]:
    ours, single = _get(figs, "tp_events_s", "ours"), _get(figs, "tp_events_s", "single")
    ok = ours >= 0.5 * single if isinstance(ours, (int, float)) and isinstance(single, (int, float)) else None
    return ">= 50% of single", ok


def _live(figs: Figures) -> tuple[str, bool | None]:
    held, errors = _get(figs, "live_held", "ours"), _get(figs, "live_errors", "ours")
    if held is None:
        return "500 without errors", None
    return "500 without errors", held >= 500 and errors == 0


# (key, label, lower is better, check or None)
ROWS: list[tuple[str, str, Check | None]] = [
    ("rt_p50_ms", "round trip p50 (ms)", _rt_p50),
    ("rt_p99_ms", "round trip p99 (ms)", _le("rt_p99_ms", 25, "<= 25 ms")),
    ("rt_lost", "round trip: lost echoes + errors", None),
    ("tp_events_s", "events delivered/s, S x 3 tabs closed loop", _tp),
    ("fan10_events_s", "fan-out 1 x 10: events/s delivered", None),
    ("fan50_events_s", "fan-out 1 x 50: events/s delivered", _ge("fan50_events_s", 2000, ">= 2,000/s")),
    ("act_new_s", "activations/s: new INITs", _ge("act_new_s", 100, ">= 100/s")),
    ("act_new_p50_ms", "new INIT p50 (ms, under the burst)", None),
    ("act_rehydrate_s", "activations/s: rehydrating INITs", _ge("act_rehydrate_s", 100, ">= 100/s")),
    ("act_rehydrate_p50_ms", "rehydrating INIT p50 (ms, under the burst)", None),
    ("attach_p50_ms", "attach to a live session p50 (ms)", _le("attach_p50_ms", 5, "<= 5 ms")),
    ("attach_p99_ms", "attach to a live session p99 (ms)", None),
    (
        "rehydrate_answer_ms",
        "rehydrate 10k events: INIT answer (ms)",
        _le("rehydrate_answer_ms", 200, "<= 200 ms"),
    ),
    (
        "rehydrate_replay_ms",
        "rehydrate 10k events: full replay (ms)",
        _le("rehydrate_replay_ms", 1000, "<= 1,000 ms"),
    ),
    ("passivation_late_p50_ms", "passivation lateness p50 (ms)", None),
    (
        "passivation_late_p99_ms",
        "passivation lateness p99 (ms)",
        _le("passivation_late_p99_ms", 250, "<= 250 ms"),
    ),
    ("passivation_late_max_ms", "passivation lateness max (ms)", None),
    ("mem_session_rss_mb", "memory per live session, RSS (MB)", _le("mem_session_rss_mb", 20, "<= 20 MB")),
    ("mem_session_pss_mb", "memory per live session, PSS (MB)", None),
    ("mem_actor_proc_rss_mb", "RSS of one actor process, median (MB)", None),
    ("mem_baseline_mb", "actor system RSS with 0 sessions (MB)", None),
    ("mem_conn_kb", "memory per idle connection, frontend RSS (kB)", None),
    ("disk_session_kb", "disk per session: db files / sessions (kB)", None),
    ("disk_event_b", "disk per stored event: db files / events (bytes)", None),
    ("live_held", "live sessions held at once", _live),
    ("live_errors", "errors while holding them (INIT + lost)", None),
]


def render(result: dict[str, Any]) -> str:
    figs: Figures = result.get("figures", {})
    meta = result.get("meta", {})
    plan = meta.get("plan", {})
    lines = [
        f"## sessionactors benchmark ({plan.get('mode', '?')} run, {meta.get('duration_s', '?')} s)",
        "",
        f"Code: {meta.get('git_head')} plus uncommitted changes to {len(meta.get('git_dirty', []))} file(s) of "
        f"sessionactors/. Machine: {meta.get('nproc')} cores, Python {meta.get('python')}; load average at start "
        f"{', '.join(f'{x:.1f}' for x in meta.get('loadavg_start', []))}, at end "
        f"{', '.join(f'{x:.1f}' for x in meta.get('loadavg_end', []))}. "
        f"S = {plan.get('rt_sessions')} sessions for the round trip ({plan.get('rt_rate')}/s each, "
        f"{plan.get('rt_duration')} s), {plan.get('tp_sessions')} x {plan.get('tp_tabs')} tabs for events/s "
        f"(window {plan.get('tp_window')}), fan-out window {plan.get('fan_window')}; "
        f"{plan.get('load_procs')} load process(es). Disk: one-row fsynced SQLite commits "
        f"{meta.get('fsync_start', {}).get('commits_per_s')}/s at start, "
        f"{meta.get('fsync_end', {}).get('commits_per_s')}/s at end (what bounds every design's events/s).",
        "",
        "| figure | ours | limit | single | ours/limit | ours/single | target | met |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for key, label, check in ROWS:
        if key not in figs:
            continue
        o, li, s = (_get(figs, key, t) for t in ("ours", "limit", "single"))
        target, met = check(figs) if check else ("", None)
        lines.append(
            f"| {label} | {fmt(o)} | {fmt(li)} | {fmt(s)} | {_ratio(o, li)} | {_ratio(o, s)} | {target} | "
            f"{'' if met is None else ('yes' if met else '**no**')} |"
        )
    growth = result.get("growth", [])
    if growth:
        lines += [
            "",
            f"### Cost growth with the number of live sessions (round trip at {plan.get('rt_rate')} messages/s per session)",
            "",
            "| sessions | ours new INIT/s | ours RT p50 / p99 (ms) | limit RT p50 / p99 | single new INIT/s "
            "| single RT p50 / p99 | ours lost + errors |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in growth:
            o, li, s = row.get("ours", {}), row.get("limit", {}), row.get("single", {})

            def rt(r: dict[str, Any]) -> str:
                lat = r.get("rt") or {}
                return f"{fmt(lat.get('p50'))} / {fmt(lat.get('p99'))}" if lat else "-"

            bad = (o.get("lost", 0) + o.get("errors", 0)) if o else None
            lines.append(
                f"| {row['sessions']} | {fmt(o.get('activation_per_s'))} | {rt(o)} | {rt(li)} | "
                f"{fmt(s.get('activation_per_s'))} | {rt(s)} | {fmt(bad)} |"
            )
        for row in growth:
            o = row.get("ours", {})
            if "rss_mb_total" in o:
                lines.append(
                    f"\nAt {row['sessions']} sessions ours held {o.get('live')} live, {o.get('actor_processes')} actor "
                    f"processes, RSS {o['rss_mb_total']:,} MB / PSS {o['pss_mb_total']:,} MB in total "
                    f"({fmt(o['rss_mb_per_session'])} MB RSS, {fmt(o['pss_mb_per_session'])} MB PSS per session); "
                    f"errors: {o.get('error_samples') or 'none'}."
                )
    cpu = result.get("cpu", {})
    if cpu:
        lines += [
            "",
            "### CPU during the measured steps (% of one core)",
            "",
            "| step | target | load processes | server processes |",
            "|---|---|---:|---|",
        ]
        for step, per_target in cpu.items():
            for target, info in per_target.items():
                server = ", ".join(f"{k} {v}" for k, v in info.get("server_cpu_pct", {}).items()) or "-"
                per_init = info.get("server_ms_per_init")
                if per_init:  # processes that exited during the step (passivated actors) are missing
                    costs = ", ".join(f"{k} {v}" for k, v in per_init.items())
                    server += f"; CPU ms per INIT: {costs}, load {info.get('load_ms_per_init')}"
                lines.append(
                    f"| {step} | {target} | {info.get('load_cpu_pct')} ({info.get('load_procs')} proc) | {server} |"
                )
    profiles = result.get("profiles", {})
    if profiles:
        lines += ["", "### Where the time goes in ours (py-spy, share of samples)", ""]
        for name, prof in profiles.items():
            kind = (
                "wall clock: waiting included" if prof.get("idle_included") else "CPU: running samples only"
            )
            lines.append(
                f"**{name}** ({kind}; {prof.get('samples', 0)} samples, `{prof.get('raw_file', '')}`)"
            )
            lines.append("")
            lines.append("| self (function) | % | self (line) | % | inclusive | % |")
            lines.append("|---|---:|---|---:|---|---:|")
            cols = [prof.get(k, [])[:10] for k in ("self", "self_lines", "inclusive")]
            for i in range(max(len(c) for c in cols)):
                cells = []
                for col in cols:
                    name, share = col[i] if i < len(col) else ("", "")
                    cells.append(f"`{name}` | {share}" if name else " | ")
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    stops = result.get("stops", {})
    if stops:
        lines += ["", "Stops: " + "; ".join(
            f"{n}: exit {s.get('exit_code')}, leftovers {s.get('leftovers') or 'none'}"
            + (f", {s['stop_s']} s" if "stop_s" in s else "")
            + (f" (daemon log: {', '.join(f'{k} {v}' for k, v in s['log'].items())})" if s.get("log") else "")
            for n, s in stops.items())]  # fmt: skip
    for title, items in (("Notes", result.get("notes", [])), ("Errors", result.get("errors", []))):
        if items:
            lines += ["", f"{title}:", *(f"- {x}" for x in items)]
    return "\n".join(lines)
