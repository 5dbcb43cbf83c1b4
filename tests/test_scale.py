"""One node's scale, short form (issue 15): 200 live sessions under steady load on a real daemon.

Every session has a tab, a quarter of them a second one (fan-out); each tab sends one tagged
message a second for ``SCALE_SECONDS``. Then every session gets a final ``run`` and every tab
must see its observation; the verdict (``World.verify`` in soak_driver.py) is that nothing is
lost or stored twice, ids are contiguous, no tab got an error frame, and every tab's view is
exactly the stored log. No timing is asserted: the figures are in the benchmark (bench/).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

pytest.importorskip("aiohttp", reason="the clients (bench/sioclient.py) need aiohttp")

from .soak_driver import SentAction, Tab, World, gather_limited, stop_daemon, until

SESSIONS = int(os.environ.get("SCALE_SESSIONS", "200"))
SECONDS = float(os.environ.get("SCALE_SECONDS", "10"))
PERIOD = 1.0  # one message per tab per second: ~250 actions/s over the node


async def steady(tab: Tab, deadline: float, offset: float) -> list[SentAction]:
    """Send one message every ``PERIOD`` s until ``deadline`` (a load schedule, not a sync point)."""
    sent: list[SentAction] = []
    await asyncio.sleep(offset)
    while time.monotonic() < deadline:
        action = await tab.act("message", "steady")
        assert action is not None, f"tab {tab.name} lost its connection under load: {tab.trace[-10:]}"
        sent.append(action)
        await asyncio.sleep(PERIOD)
    return sent


async def scale_run(daemon: Any) -> dict[str, Any]:
    world = World(daemon, 0)
    try:
        firsts = [world.tab(f"{i}.0") for i in range(SESSIONS)]

        async def create(tab: Tab) -> None:
            await tab.connect()
            answer = await tab.init(None) or {}
            assert answer.get("status") == "ok", f"tab {tab.name}: INIT failed: {answer} {tab.errors}"

        await gather_limited([create(t) for t in firsts], 20)
        seconds = [world.tab(f"{i}.1") for i in range(0, SESSIONS, 4)]

        async def join(tab: Tab, first: Tab) -> None:
            await tab.connect()
            answer = await tab.init(first.attached, -1) or {}
            assert answer.get("status") == "ok", f"tab {tab.name}: join failed: {answer} {tab.errors}"

        await gather_limited([join(t, firsts[4 * i]) for i, t in enumerate(seconds)], 20)
        live = {r["session_id"] for r in await world.admin_rows(max_age=0) if r["state"] == "live"}
        assert len(live) == SESSIONS, f"{len(live)} of {SESSIONS} sessions live after the INITs"

        tabs = firsts + seconds
        deadline = time.monotonic() + SECONDS
        sends = [steady(t, deadline, PERIOD * i / len(tabs)) for i, t in enumerate(tabs)]
        await asyncio.gather(*sends)
        finals = []
        for tab in firsts:
            final = await tab.act("run", "final")
            assert final is not None, f"tab {tab.name} lost its connection before the final action"
            finals.append((tab.attached, final))
        await until(lambda: all(a.seen for _, a in finals), 120, "every final action to be stored and seen")

        def observed() -> bool:
            for tab in tabs:
                period = tab.current
                if period is None:
                    return False
                ids = {world.action_ids[a.tag][1] for sid, a in finals if sid == period.session_id}
                if not any(e.get("cause") in ids for e in period.events):
                    return False
            return True

        await until(observed, 120, "every tab to receive its session's final observation")
        figures = await world.verify()
        live = {r["session_id"] for r in await world.admin_rows(max_age=0) if r["state"] == "live"}
        figures["live_at_end"] = len(live)
        return figures
    finally:
        await world.close()


@pytest.mark.timeout(300)
def test_200_live_sessions_under_steady_load_lose_nothing(daemon_factory: Any) -> None:
    """200 sessions (250 tabs) x 1 message/s for 10 s: 0 lost, 0 errors, every view equals its log."""
    daemon = daemon_factory(runtime="echo", close_delay=120, rate_limit=1000, rate_burst=1000)
    figures: dict[str, Any] = {}
    try:
        figures = asyncio.run(scale_run(daemon))
    finally:
        figures["stopped_cleanly"] = stop_daemon(daemon, 30.0)
        print("scale: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    assert figures["sessions"] == SESSIONS, figures
    assert figures["live_at_end"] == SESSIONS, f"sessions passivated or died under load: {figures}"
    assert figures["actions_sent"] >= SESSIONS * SECONDS * 0.5, f"the load was not offered: {figures}"
    assert figures["actions_lost_to_faults"] == 0, figures
