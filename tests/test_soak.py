"""Load and faults: a seeded random soak with crashes, a 500-client reconnect storm, and the
bugs they found, each reproduced on its own.

``SOAK_SCALE`` (default 1) multiplies the soaks' sessions and duration (``SOAK_SCALE=5``:
200 sessions for 150 s, at the same offered rate); ``SOAK_SEED`` replays a schedule (the
seed is printed). The driver and the verdict are in ``soak_driver.py``: at the end every
client's view of every session must be exactly the stored log (see its docstring).

Bugs these found, each now reproduced by a test of its own below (they were fixed in the
same change; the exception classes name what each one checks):
- test_killed_session_actors_are_all_restarted: Thespian 4.0.1 lost a child's
  ``ChildActorExited`` when that child died while the supervisor handled another child's
  exit (fixed by ``actorsystem.keep_unreported_child_exits``). The soaks also watch for it:
  a hit is an *incident* (the driver checks its exact signature) and fails the soak.
- test_messages_to_a_dead_session_actor_are_not_lost: an Attach forwarded to a session
  actor that died before answering it was dropped (the supervisor now re-sends it).
- test_supervisor_relinks_after_the_gateway_dies_mid_reply: a supervisor that found the
  gateway gone through a failed send never reconnected.
- test_init_right_after_a_gateway_restart_is_not_refused: a restarted gateway answered
  INIT 503 "Server not ready" until the supervisor had linked up (now held, ``link_wait``).
- test_actions_arriving_with_the_restart_positions_are_not_held: actions read together
  with the restart's "positions" frame waited for some later frame.
- test_a_killed_session_leaves_no_shell_control_dir: a dead session's shell left its
  control directory, with its last command, in /tmp.
"""

from __future__ import annotations

import asyncio
import glob
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import psutil
import pytest

pytest.importorskip("aiohttp", reason="the soak's asyncio clients (bench/sioclient.py) need aiohttp")

from bench.sioclient import SioError
from sessionactors.daemon import pid_alive

from .daemon_harness import wait_for
from .soak_driver import (
    NOT_READY,
    SoakPlan,
    Tab,
    World,
    gateway_pid,
    gather_limited,
    kill_gateway_only,
    kill_gateway_wait,
    run_soak,
    run_storm,
    stop_daemon,
    until,
)

SCALE = max(1, int(os.environ.get("SOAK_SCALE", "1")))
# Soak options: passivate quickly, never give up on a session we keep killing, no 429s.
OPTIONS = {
    "close_delay": 0.5,
    "restart_intensity": 1000,
    "restart_period": 1,
    "rate_limit": 1000,
    "rate_burst": 1000,
}
RESTARTED = "STATUS$SESSION_RESTARTED"


class LostChildExit(AssertionError):
    """The supervisor never learned that a session actor exited."""


class LostToDeadActor(AssertionError):
    """An INIT or action forwarded to a dead session actor vanished."""


class HeldInLink(AssertionError):
    """Actions reached a restarted session actor but waited for an unrelated later frame."""


class LeakedControlDir(AssertionError):
    """A dead session's shell left its control directory (with its last command) in /tmp."""


class RefusedWhileLinking(AssertionError):
    """A restarted gateway answered an INIT 503 before its supervisor link was up."""


def seed() -> int:
    value = int(os.environ.get("SOAK_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"\nsoak seed: {value} (replay the schedule with SOAK_SEED={value})")
    return value


def report(name: str, figures: dict[str, Any]) -> None:
    print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items() if k != "tags"))


def stop(daemon: Any, figures: dict[str, Any], grace: float = 5.0) -> None:
    """Stop the daemon, hard after ``grace`` s (reported as ``stopped_cleanly``).

    Shutdown makes every session actor exit at once, which is when a lost ChildActorExited
    would show: the supervisor would wait 20 s for it. The suite cannot afford that wait;
    test_killed_session_actors_are_all_restarted covers the cause.
    """
    figures["stopped_cleanly"] = stop_daemon(daemon, grace)


def processes_in(workspaces: Path) -> list[int]:
    """Processes whose working directory is inside ``workspaces`` (session shells and their jobs)."""
    found = []
    root = str(workspaces.resolve())
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if cwd.startswith(root) and pid_alive(int(entry)):
                found.append(int(entry))
    return found


def shell_dirs() -> set[str]:
    """The local runtime's per-shell control directories (``tempfile.mkdtemp`` in the temp dir)."""
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "sessionactors-shell-*")))


def our_leaked_dirs(before: set[str], tags: Iterable[str], grace: float = 5.0) -> list[str]:
    """New control directories whose last command carries one of our tags and that are still
    there ``grace`` s later (an orphaned shell runs its EXIT trap when it notices, on a loaded
    machine not at once); removed, and listed."""
    wanted = set(tags)

    def ours() -> list[str]:
        found = []
        for path in sorted(shell_dirs() - before):
            try:
                text = Path(path, "command.sh").read_text(errors="replace")
            except OSError:
                continue
            if any(word in wanted for word in text.replace(";", " ").split()):
                found.append(path)
        return found

    deadline = time.monotonic() + grace
    leaked = ours()
    while leaked and time.monotonic() < deadline:
        time.sleep(0.1)  # polling a directory listing: nothing to wait on
        leaked = ours()
    for path in leaked:
        shutil.rmtree(path, ignore_errors=True)
    return leaked


async def one_tab_session(world: World) -> tuple[Tab, str]:
    """Tab 0.0 connected and attached to a new session: (the tab, the session id)."""
    tab = world.tab("0.0")
    await tab.connect()
    answer = await tab.init(None) or {}
    assert answer.get("status") == "ok", f"the first INIT failed: {answer}"
    return tab, str(answer["session_id"])


def drive(daemon: Any, figures: dict[str, Any], name: str, main: Callable[[], Awaitable[None]]) -> None:
    """Run the async ``main`` against ``daemon``, then stop the daemon and print the figures."""
    try:
        asyncio.run(main())
    finally:
        stop(daemon, figures)
        report(name, figures)


def soak(daemon: Any, plan: SoakPlan, name: str) -> dict[str, Any]:
    s = seed()
    figures: dict[str, Any] = {}
    try:
        figures = asyncio.run(run_soak(daemon, plan, s))
    finally:
        stop(daemon, figures)
        report(name, figures)
    return figures


def no_incidents(figures: dict[str, Any]) -> None:
    """Everything else held; the lost-ChildActorExited signature must not have shown up either."""
    assert not figures["incidents"], (
        f"{len(figures['incidents'])} hit(s) of the lost-ChildActorExited bug "
        f"(test_killed_session_actors_are_all_restarted): {figures['incidents'][:3]}"
    )


@pytest.mark.timeout(150 + 60 * SCALE)
def test_soak_with_session_and_gateway_kills(daemon_factory: Any) -> None:
    """Echo runtime: random tabs, INITs, actions, passivations, session SIGKILLs, one gateway SIGKILL."""
    daemon = daemon_factory(runtime="echo", **OPTIONS)
    plan = SoakPlan(sessions=40 * SCALE, duration=30.0 * SCALE, session_kills=12 * SCALE)
    figures = soak(daemon, plan, "soak (echo)")
    assert figures["faults"]["session actor"] >= 8 * SCALE, figures
    assert figures["faults"]["gateway"] == 1, figures
    assert figures["statuses"].get(RESTARTED, 0) >= 1, figures
    assert figures["statuses"].get("STATUS$REHYDRATING", 0) >= 5, "sessions did not passivate and rehydrate"
    no_incidents(figures)


@pytest.mark.timeout(120 + 40 * SCALE)
def test_soak_local_runtime_with_shell_and_session_kills(daemon_factory: Any) -> None:
    """Local runtime (a bash per live session): SIGKILL of shells (mid-command) and of session actors."""
    daemon = daemon_factory(runtime="local", **OPTIONS)
    workspaces = daemon.data_dir / "workspaces"
    plan = SoakPlan(
        sessions=10 * SCALE,
        duration=12.0 * SCALE,
        runtime="local",
        session_kills=4 * SCALE,
        shell_kills=5 * SCALE,
        gateway_kill_at=None,
        rate=50.0,  # every live session has a bash
    )
    before = shell_dirs()
    figures = soak(daemon, plan, "soak (local)")
    leaked = our_leaked_dirs(before, figures["tags"])
    assert not leaked, f"shell control dirs left by killed sessions (removed): {leaked}"
    assert figures["faults"]["runtime shell"] >= 3 * SCALE, figures
    assert figures["faults"]["session actor"] >= 3 * SCALE, figures
    assert figures["statuses"].get("STATUS$RUNTIME_RESTARTED", 0) >= 3 * SCALE, figures
    wait_for(lambda: processes_in(workspaces) == [], 15, "the sessions' shells to end with the daemon")
    no_incidents(figures)


@pytest.mark.timeout(240)
def test_reconnect_storm_after_gateway_kill(daemon_factory: Any) -> None:
    """500 attached clients (100 sessions x 5); the gateway is killed; all resume at once."""
    s = seed()
    daemon = daemon_factory(runtime="echo", close_delay=60)
    figures: dict[str, Any] = {}
    try:
        figures = asyncio.run(run_storm(daemon, sessions=100, tabs=5, seed=s))
    finally:
        stop(daemon, figures)
        report("reconnect storm", figures)
    # Every client resumed exactly (run_storm checked it against the stored logs).
    assert figures["error_frames"] == 0, f"error frames during the storm: {figures}"
    assert figures["refused_after_healthy"] == 0, f"connections refused by a healthy gateway: {figures}"
    assert figures["init_503_after_healthy"] == 0, f"'Server not ready' from a healthy gateway: {figures}"


# -- the bugs, one at a time --------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_killed_session_actors_are_all_restarted(daemon_factory: Any) -> None:
    """20 session actors SIGKILLed 10 ms apart: the supervisor restarts every one of them."""
    daemon = daemon_factory(runtime="echo", close_delay=60, restart_intensity=1000, restart_period=1)
    figures: dict[str, Any] = {}

    async def run() -> None:
        world = World(daemon, 0)
        try:
            tabs = [world.tab(f"{i}.0") for i in range(20)]

            async def attach(tab: Any) -> None:
                await tab.connect()
                assert (await tab.init(None) or {}).get("status") == "ok"

            await gather_limited([attach(t) for t in tabs], 10)
            pids = {t.attached: await world.session_pid(t.attached) for t in tabs}
            for pid in pids.values():
                os.kill(pid, signal.SIGKILL)
                await asyncio.sleep(0.01)  # the spacing is the point: deaths overlapping exit handling

            def restarted() -> bool:
                return all(t.count_status(RESTARTED) >= 1 for t in tabs)

            try:
                await until(restarted, 6, "every session to be restarted")
            except AssertionError:
                rows = {r["session_id"]: r for r in await world.admin_rows(max_age=0)}
                lost = [
                    f"{sid[:8]}: pid {pid} (dead) still listed as live"
                    for sid, pid in pids.items()
                    if rows[sid]["state"] == "live" and rows[sid]["pid"] == pid and not pid_alive(pid)
                ]
                figures["lost"] = lost
                if lost:
                    raise LostChildExit(
                        f"{len(lost)} of 20 killed sessions never restarted: {lost}"
                    ) from None
                raise
            for tab in tabs:  # and each answers again
                sent = await tab.act("message", "after the restart")
                assert sent is not None
            await until(lambda: all(a.seen for a in world.actions.values()), 30, "every session to answer")
        finally:
            await world.close()

    drive(daemon, figures, "kill 20", run)


@pytest.mark.timeout(120)
def test_messages_to_a_dead_session_actor_are_not_lost(daemon_factory: Any) -> None:
    """An INIT and actions reach the supervisor after the session actor died, before it noticed.

    The supervisor is SIGSTOPped around the kill, so that the frames are queued before the
    death is seen; a frame the gateway answers at once (an unknown action) on each connection
    tells that the ones before it have been passed on.
    """
    # The supervisor is SIGSTOPped below: the daemon must not replace it meanwhile.
    daemon = daemon_factory(runtime="echo", close_delay=60, supervisor_timeout=300)
    figures: dict[str, Any] = {}

    async def run() -> None:
        world = World(daemon, 0)
        supervisor = 0
        try:
            first, second = world.tab("0.0"), world.tab("0.1")
            await first.connect()
            sid = str((await first.init(None) or {}).get("session_id"))
            warm = await first.act("message", "before")
            assert warm is not None
            await until(lambda: warm.seen, 15, "the first event")
            await second.connect()
            pid = await world.session_pid(sid)
            supervisor = psutil.Process(pid).ppid()
            os.kill(supervisor, signal.SIGSTOP)
            await world.kill(pid, "session actor")
            sent = [await first.act("message", f"after {i}") for i in range(3)]
            await first.probe()
            joining = asyncio.create_task(second.init(sid, -1, timeout=20, patience=20, probe=True))
            await until(
                lambda: first.probes == 1 and second.probes == 1, 15, "the gateway to pass the frames on"
            )
            os.kill(supervisor, signal.SIGCONT)
            supervisor = 0
            await until(lambda: first.count_status(RESTARTED) == 1, 30, "the restart")

            def all_back() -> bool:
                return joining.done() and all(a is not None and a.seen for a in sent)

            try:
                await until(all_back, 5, "the INIT answer and the actions")
            except AssertionError:
                seen = sum(1 for a in sent if a is not None and a.seen)
                figures.update(init_answered=joining.done(), actions_seen=seen)
                raise LostToDeadActor(
                    f"INIT answered: {joining.done()}; actions stored and seen: {seen} of 3; "
                    f"the joining tab got {second.count_status(RESTARTED)} {RESTARTED} without an INIT answer"
                ) from None
            answer = joining.result()
            assert answer is not None and answer.get("status") == "ok", answer
        finally:
            if supervisor:
                os.kill(supervisor, signal.SIGCONT)
            await world.close()

    drive(daemon, figures, "dead letters", run)


@pytest.mark.timeout(120)
def test_init_right_after_a_gateway_restart_is_not_refused(daemon_factory: Any) -> None:
    """A client resuming while the supervisor has not linked up to the new gateway yet.

    The supervisor is SIGSTOPped across the gateway restart, which stretches the window the
    storm falls into; it is let go once the gateway has handled the INIT (a probe after it
    is answered). A gateway that held the INIT, or refused connections, until the link is up
    would pass.
    """
    # The supervisor is SIGSTOPped below: the daemon must not replace it meanwhile.
    daemon = daemon_factory(runtime="echo", close_delay=60, supervisor_timeout=300)
    figures: dict[str, Any] = {}

    async def run() -> None:
        world = World(daemon, 0)
        supervisor = 0
        try:
            tab, sid = await one_tab_session(world)
            sent = await tab.act("message", "before")
            assert sent is not None
            await until(lambda: sent.seen, 15, "the first event")
            supervisor = psutil.Process(await world.session_pid(sid)).ppid()
            assert daemon.proc is not None
            victim = gateway_pid(daemon.proc.pid)
            assert victim is not None
            os.kill(supervisor, signal.SIGSTOP)
            await world.kill(victim, "gateway")
            await until(lambda: tab.lost, 15, "the client to see the gateway die")
            deadline = time.monotonic() + 30
            while True:  # reconnect as a client does; let the supervisor go if we cannot
                try:
                    await tab.connect(timeout=5)
                    break
                except SioError:
                    if supervisor and time.monotonic() > deadline - 25:
                        os.kill(supervisor, signal.SIGCONT)
                        supervisor = 0
                    assert time.monotonic() < deadline, "could not reconnect to the restarted gateway"
                    await asyncio.sleep(0.1)
            resuming = asyncio.create_task(tab.init(sid, 0, timeout=30, patience=30, probe=True))
            await until(lambda: tab.probes == 1, 15, "the gateway to handle the INIT")
            if supervisor:
                os.kill(supervisor, signal.SIGCONT)
                supervisor = 0
            answer = await resuming
            figures["answer"] = answer
            if answer is not None and answer.get("error") == NOT_READY:
                raise RefusedWhileLinking(f"INIT answered {answer}")
            assert answer is not None and answer.get("status") == "ok", answer
        finally:
            if supervisor:
                os.kill(supervisor, signal.SIGCONT)
            await world.close()

    drive(daemon, figures, "INIT after a gateway restart", run)


def _unread_bytes(pid: int) -> int | None:
    """Bytes queued for ``pid``'s Unix sockets (``ss``), or None without ``ss``."""
    try:
        out = subprocess.run(["ss", "-xpn"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sum(int(line.split()[2]) for line in out.splitlines() if f"pid={pid}," in line)


@pytest.mark.timeout(120)
def test_actions_arriving_with_the_restart_positions_are_not_held(daemon_factory: Any) -> None:
    """Actions the gateway passes to a just-restarted session actor in one read with 'positions'.

    The gateway is stopped while the session actor is killed and restarted, the new
    incarnation is stopped once it has said hello; the gateway then answers it and passes
    two actions on; the incarnation resumes and reads them all at once.
    """
    daemon = daemon_factory(runtime="echo", close_delay=60)
    figures: dict[str, Any] = {}

    async def run() -> None:
        world = World(daemon, 0)
        stopped: list[int] = []
        try:
            tab, sid = await one_tab_session(world)
            warm = await tab.act("message", "before")
            assert warm is not None
            await until(lambda: warm.seen, 15, "the first event")
            pid = await world.session_pid(sid)
            assert daemon.proc is not None
            gateway = gateway_pid(daemon.proc.pid)
            assert gateway is not None
            if _unread_bytes(gateway) is None:
                pytest.skip("needs ss (iproute2) to see socket queues")
            os.kill(gateway, signal.SIGSTOP)
            stopped.append(gateway)
            await world.kill(pid, "session actor")
            activated = re.compile(rf"session activated \(incarnation 2, pid (\d+)\) \[{sid}\]")

            def new_pid() -> int | None:
                found = activated.search(daemon.log_path.read_text(errors="replace"))
                return int(found.group(1)) if found else None

            incarnation = await until(new_pid, 15, "the new incarnation (it has said hello)")
            os.kill(incarnation, signal.SIGSTOP)
            stopped.append(incarnation)
            queued = _unread_bytes(incarnation) or 0
            os.kill(gateway, signal.SIGCONT)
            stopped.remove(gateway)
            await until(lambda: (_unread_bytes(incarnation) or 0) > queued, 10, "the positions answer")
            sent = [await tab.act("message", f"during the restart {i}") for i in range(2)]
            await tab.probe()
            await until(lambda: tab.probes == 1, 10, "the gateway to pass the actions on")
            os.kill(incarnation, signal.SIGCONT)
            stopped.remove(incarnation)
            await until(lambda: tab.count_status(RESTARTED) == 1, 15, "the restart")
            try:
                await until(lambda: all(a is not None and a.seen for a in sent), 5, "the actions")
                return
            except AssertionError:
                pass
            later = await tab.act("message", "an unrelated later frame")
            assert later is not None
            await until(lambda: later.seen, 15, "the later action")
            seen = [a is not None and a.seen for a in sent]
            figures["held_then_seen"] = seen
            if all(seen):
                raise HeldInLink("the two actions were stored only after a later frame arrived") from None
            raise AssertionError(f"actions lost, not just held: {seen}")
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
            await world.close()

    drive(daemon, figures, "held in link", run)


@pytest.mark.timeout(120)
def test_a_killed_session_leaves_no_shell_control_dir(daemon_factory: Any) -> None:
    """Local runtime: a command runs, the session actor is SIGKILLed and restarted, the daemon stops."""
    daemon = daemon_factory(runtime="local", close_delay=60)
    figures: dict[str, Any] = {}
    before = shell_dirs()
    tags: list[str] = []

    async def run() -> None:
        world = World(daemon, 0)
        try:
            tab, sid = await one_tab_session(world)
            sent = await tab.act("run", "a command")
            assert sent is not None
            tags.append(sent.tag)
            await until(lambda: sent.seen, 15, "the command")
            action_id = world.action_ids[sent.tag][1]
            await until(
                lambda: any(e.get("cause") == action_id for e in (tab.current.events if tab.current else [])),
                15,
                "its output",
            )
            await world.kill(await world.session_pid(sid), "session actor")
            await until(lambda: tab.count_status(RESTARTED) == 1, 20, "the restart")
        finally:
            await world.close()

    try:
        asyncio.run(run())
    finally:
        stop(daemon, figures)
        figures["leaked"] = our_leaked_dirs(before, tags)
        report("shell control dir", figures)
    if figures["leaked"]:
        raise LeakedControlDir(f"left in {tempfile.gettempdir()}: {figures['leaked']}")


@pytest.mark.timeout(120)
def test_supervisor_relinks_after_the_gateway_dies_mid_reply(daemon_factory: Any) -> None:
    """The gateway dies while the supervisor holds a query it has not answered yet.

    The supervisor is SIGSTOPped while /api/health puts a ping on its link, the gateway is
    SIGKILLed, then the supervisor goes on: its reply fails. (The SOAK_SCALE=5 soak got
    there by itself: the supervisor was busy answering when the gateway was killed.)
    """
    daemon = daemon_factory(runtime="echo", close_delay=60)
    figures: dict[str, Any] = {}

    async def run() -> None:
        world = World(daemon, 0)
        supervisor = 0
        try:
            _, sid = await one_tab_session(world)
            supervisor = psutil.Process(await world.session_pid(sid)).ppid()
            if _unread_bytes(supervisor) is None:
                pytest.skip("needs ss (iproute2) to see socket queues")
            os.kill(supervisor, signal.SIGSTOP)
            queued = _unread_bytes(supervisor) or 0
            health = asyncio.create_task(world.get("/api/health", ""))
            await until(lambda: (_unread_bytes(supervisor) or 0) > queued, 10, "the ping at the supervisor")
            await kill_gateway_only(world)
            os.kill(supervisor, signal.SIGCONT)
            supervisor = 0
            await health
            figures["healthy_after_s"] = await kill_gateway_wait(world, timeout=12)
        finally:
            if supervisor:
                os.kill(supervisor, signal.SIGCONT)
            await world.close()

    drive(daemon, figures, "supervisor relink", run)
