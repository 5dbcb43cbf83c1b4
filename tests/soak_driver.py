"""An asyncio load-and-fault driver for the soak and reconnect-storm tests (``test_soak.py``).

Every browser tab is a ``Tab``: one ``bench.sioclient.SioConn`` at a time (the lean
asyncio Socket.IO client of the benchmarks; its ``initialize`` helper is not used, so
that every frame, the INIT answer included, reaches ``Tab._on_frame`` in arrival order).
A tab records what it *actually received*, cut into attachment periods: a period starts
with an INIT answered ``ok`` and holds every stored event received until the next INIT
answer, a disconnect or the loss of the connection. The verdict (``World.verify``)
compares each period with the stored log: it must be exactly the run of stored events
that starts at the INIT's ``latest_event_id + 1``, with nothing missing, repeated or
changed; and a period still open at the end must reach the last stored event.

Every action carries a unique tag (``A<slot>.<tab>.<n>``) so that the stored log tells
which actions were stored, and how often (never twice). An action that never reached the
store is excused only when a fault could have swallowed it: it was unseen when its session
actor died, or it was sent on a connection that was then lost (gateway killed), or its
session was wedged by the known supervisor bug (``World.stuck``: an *incident*, after
which the driver leaves that session alone). After killing a session actor the driver
sends nothing to that session until its tabs hear ``STATUS$SESSION_RESTARTED``: what
reaches the supervisor before it has handled the death is lost (a bug of its own, see
``test_soak.py``); what is sent right after the restart must all be stored.

The random schedule (which tab does what, the pauses between operations) comes from one
seeded ``random.Random`` per slot. The pauses are the workload; every check waits for a
condition with a deadline (``until``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psutil

from bench.sioclient import SioConn, SioError, new_http_session
from sessionactors.daemon import pid_alive

__all__ = [
    "SoakPlan",
    "SupervisorNeverReconnected",
    "Tab",
    "World",
    "gateway_pid",
    "kill_gateway_only",
    "kill_gateway_wait",
    "run_soak",
    "run_storm",
    "stop_daemon",
    "until",
]

RESTARTED = "STATUS$SESSION_RESTARTED"
REHYDRATING = "STATUS$REHYDRATING"
RUNTIME_RESTARTED = "STATUS$RUNTIME_RESTARTED"
NOT_READY = "Server not ready"
PROBE = {"action": "probe", "args": {}}  # an unknown action: the gateway answers it at once
PROBE_ANSWER = "unknown action 'probe'"


async def until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.01) -> Any:
    """Poll ``predicate`` until truthy; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(step)


def gateway_pid(daemon_pid: int) -> int | None:
    """The gateway process among the daemon's children (it is restarted with a new pid)."""
    try:
        children = psutil.Process(daemon_pid).children(recursive=True)
    except psutil.Error:
        return None
    for child in children:
        try:
            if "sessionactors.gateway" in " ".join(child.cmdline()) and child.status() != "zombie":
                return int(child.pid)
        except psutil.Error:
            continue
    return None


def tag_of(event: dict[str, Any]) -> str | None:
    """The driver's tag of a user action event (first word of its content or echo argument)."""
    if event.get("source") != "user":
        return None
    args = event.get("args") or {}
    text = args.get("content") if event.get("action") == "message" else args.get("command")
    if not isinstance(text, str):
        return None
    words = text.replace(";", " ").split()
    for word in words[:3]:
        if word.startswith("A") and word.count(".") == 2:
            return word
    return None


@dataclass
class Period:
    """One attachment of one connection to one session, and what it received."""

    session_id: str
    latest: int  # the INIT's latest_event_id (-1: none)
    conn_no: int
    events: list[dict[str, Any]] = field(default_factory=list)
    end: str = ""  # why it ended: reinit, disconnect, lost ("" while open)


@dataclass
class SentAction:
    tag: str
    tab: str
    session_id: str
    conn_no: int
    sent_at: float
    seen: bool = False  # some tab received its event
    excused: str = ""  # a fault that may have swallowed it


class Tab:
    """A browser tab: connects, INITs, acts, disconnects; reconnects after a lost connection."""

    def __init__(self, world: World, name: str) -> None:
        self.world = world
        self.name = name
        self.conn: SioConn | None = None
        self.conn_no = 0
        self.closing = False
        self.lost = False  # the connection dropped without us closing it
        self.resume_to: str | None = None  # the session to re-INIT after a loss
        self.periods: list[Period] = []
        self.current: Period | None = None
        self.init_future: asyncio.Future[dict[str, Any]] | None = None
        self.init_latest = -1
        self.held: dict[str, int] = {}  # session -> highest event id received
        self.statuses: list[tuple[float, str]] = []
        self.errors: list[tuple[str, dict[str, Any]]] = []
        self.retried: list[dict[str, Any]] = []  # INIT answers 503 "Server not ready" (retried)
        self.seq = 0
        self.attached_at = 0.0
        self.probes = 0  # answers to ``probe()``
        self.trace: list[str] = []  # what happened to this tab, wall-clock stamped (see the daemon log)

    def note(self, what: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime()) + f".{int(time.time() * 1000) % 1000:03d}"
        self.trace.append(f"{stamp} conn {self.conn_no}: {what}")

    # -- frames ------------------------------------------------------------------------
    def _on_frame(self, conn_no: int, payload: dict[str, Any]) -> None:
        if conn_no != self.conn_no:
            self.errors.append(("frame from a replaced connection", payload))
            return
        if self.closing:  # arrived during our own close handshake: the tab is already gone
            return
        if str(payload.get("error", "")).startswith(PROBE_ANSWER):
            self.probes += 1
            return
        fut = self.init_future
        if fut is not None and not fut.done() and (payload.get("status") == "ok" or "error" in payload):
            self.init_future = None
            if payload.get("status") == "ok":
                if self.current is not None:
                    self.current.end = "reinit"
                self.current = Period(str(payload["session_id"]), self.init_latest, conn_no)
                self.periods.append(self.current)
                self.resume_to = None
                self.world.tokens[self.current.session_id] = str(payload["token"])
                self.attached_at = time.monotonic()
            fut.set_result(payload)
            return
        if payload.get("status_update"):
            self.statuses.append((time.monotonic(), str(payload.get("id"))))
            self.world.status_counts[str(payload.get("id"))] += 1
            return
        if "error" in payload or "status" in payload:
            self.errors.append(("unexpected frame", payload))
            self.note(f"unexpected {payload}")
            return
        event_id = payload.get("id")
        if type(event_id) is not int:
            self.errors.append(("frame without an event id", payload))
            return
        if self.current is None:
            self.errors.append(("event while not attached", payload))
            return
        self.current.events.append(payload)
        sid = self.current.session_id
        if event_id > self.held.get(sid, -1):
            self.held[sid] = event_id
        tag = tag_of(payload)
        if tag is not None:
            action = self.world.actions.get(tag)
            if action is not None:
                action.seen = True
                self.world.action_ids[tag] = (sid, event_id)
        self.world.last_frame = time.monotonic()

    def _on_reader_done(self, conn_no: int) -> None:
        if conn_no != self.conn_no or self.closing:
            return
        self.lost = True
        self.note("connection lost")
        self._end("lost")
        for action in self.world.actions.values():  # what it sent and nobody saw may be gone
            if action.tab == self.name and action.conn_no == conn_no and not action.seen:
                action.excused = action.excused or "its connection was lost"

    def _end(self, why: str) -> None:
        if self.current is not None:
            if why == "lost":
                self.resume_to = self.current.session_id
            self.current.end = why
            self.current = None
        fut, self.init_future = self.init_future, None
        if fut is not None and not fut.done():
            fut.set_exception(SioError(f"connection ended ({why})"))
            fut.exception()  # retrieved: nobody may be waiting for it any more

    # -- state ---------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed and not self.lost

    @property
    def attached(self) -> str | None:
        """The session this tab is attached to (INIT answered ok, connection alive)."""
        return self.current.session_id if self.current is not None and self.connected else None

    def count_status(self, name: str, since: float = 0.0) -> int:
        return sum(1 for at, sid in self.statuses if sid == name and at >= since)

    # -- operations ----------------------------------------------------------------------
    async def _emit(self, payload: dict[str, Any]) -> None:
        """Send on the current connection; SioError for any way a dying connection can fail."""
        if self.conn is None or self.lost:
            raise SioError("not connected")
        try:
            await self.conn.emit(payload)
        except (aiohttp.ClientError, ConnectionError, OSError, RuntimeError) as exc:
            raise SioError(f"send failed: {exc!r}") from None

    async def connect(self, timeout: float = 20.0) -> None:
        """Open a new connection (raises SioError); the previous one must be closed."""
        if self.conn is not None and self.conn.closed and not self.lost:
            # Its reader has ended but the done-callback has not run yet (it runs on a later
            # loop turn, and would then be ignored as coming from a replaced connection): the
            # tab would go on acting on a new connection as if it were still attached.
            self._on_reader_done(self.conn_no)
        assert not self.connected
        self.conn_no += 1
        no = self.conn_no
        self.note("connect")
        self.lost = False
        self.closing = False
        conn = SioConn(self.world.http, self.world.url, on_event=lambda p, _t, n=no: self._on_frame(n, p))
        self.conn = conn
        try:
            await asyncio.wait_for(conn.connect(timeout), timeout + 5)
        except (SioError, asyncio.TimeoutError) as exc:
            await conn.close()
            self.conn = None
            raise SioError(f"connect failed: {exc!r}") from None
        assert conn.reader is not None
        conn.reader.add_done_callback(lambda _task, n=no: self._on_reader_done(n))
        self.note(f"connected as {conn.sid}")

    async def init(
        self,
        session_id: str | None = None,
        latest: int | None = None,
        timeout: float = 60.0,
        patience: float = 5.0,
        probe: bool = False,
    ) -> dict[str, Any] | None:
        """Send INIT (new session, or join ``session_id``); the answer, or None if the connection died.

        After ``patience`` seconds without an answer, a session the supervisor has lost track
        of (``World.stuck``) gives ``{"wedged": why}``; anything else waits up to ``timeout``.
        ``probe``: send ``PROBE`` right after the INIT (its answer says the INIT was passed on).
        """
        assert self.init_future is None, f"{self.name}: an INIT is already in flight"
        if not self.connected or self.conn is None:
            return None  # it died since the caller looked (the gateway was just killed)
        frame: dict[str, Any] = {"action": "initialize", "args": {"agent": "soak", "tab": self.name}}
        if session_id is not None:
            frame["token"] = self.world.tokens[session_id]
        if latest is not None:
            frame["latest_event_id"] = latest
        self.init_latest = -1 if latest is None else latest
        self.note(f"INIT {session_id[:8] if session_id else '(new)'} latest {self.init_latest}")
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.init_future = fut
        try:
            await self._emit(frame)
            if probe:
                await self._emit(PROBE)
            try:
                answer = await asyncio.wait_for(asyncio.shield(fut), min(patience, timeout))
            except asyncio.TimeoutError:
                why = await self.world.still_stuck(session_id) if session_id is not None else None
                if why is not None and not fut.done():
                    return {"wedged": why}
                answer = await asyncio.wait_for(asyncio.shield(fut), max(0.0, timeout - patience))
        except SioError:
            return None
        except asyncio.TimeoutError:
            why = await self.world.diagnose(session_id) if session_id else ""
            raise AssertionError(
                f"{self.name}: INIT {'into ' + session_id if session_id else '(new)'} "
                f"not answered within {timeout} s (seed {self.world.seed}) {why}"
            ) from None
        self.note(f"INIT answer {answer.get('session_id', '')[:8] or answer}")
        if answer.get("status") == "ok":
            if session_id is not None and answer.get("session_id") != session_id:
                self.errors.append(("INIT answered for another session", answer))
            self.world.inits += 1
        elif answer.get("error") == NOT_READY:
            self.retried.append(answer)
            self.world.not_ready_at.append(time.monotonic())
        else:
            self.errors.append(("INIT refused", answer))
        return answer

    async def act(self, kind: str, extra: str = "") -> SentAction | None:
        """Send one tagged action on the attached session (None when the connection is gone)."""
        assert self.current is not None and self.conn is not None
        self.seq += 1
        tag = f"A{self.name}.{self.seq}"
        if kind == "message":
            payload = {"action": "message", "args": {"content": f"{tag} {extra}".strip()}}
        elif kind == "run":
            payload = {"action": "run", "args": {"command": f"echo {tag} {extra}".strip()}}
        else:  # a command of our choice with the tag in it (": {tag}; sleep 1" for the shell)
            payload = {"action": "run", "args": {"command": kind.format(tag=tag)}}
        action = SentAction(tag, self.name, self.current.session_id, self.conn_no, time.monotonic())
        self.world.actions[tag] = action
        self.note(f"sent {tag} to {action.session_id[:8]}")
        try:
            await self._emit(payload)
        except SioError:
            action.excused = "sent on a dead connection"
            return None
        self.world.sent += 1
        return action

    async def probe(self) -> None:
        """An unknown action: once it is answered, the gateway has handled what was sent before."""
        await self._emit(PROBE)

    async def send_raw(self, payload: dict[str, Any]) -> bool:
        """An untagged action (``run sleep``); False when the connection is gone."""
        try:
            await self._emit(payload)
        except SioError:
            return False
        self.world.sent += 1
        return True

    async def disconnect(self) -> None:
        self.closing = True
        self.note("disconnect")
        self._end("disconnect")
        if self.conn is not None:
            await self.conn.close()
        self.conn = None
        self.lost = False
        self.resume_to = None

    async def recover(self, deadline: float) -> None:
        """After a lost connection: reconnect (with back-off) and resume where it was."""
        rng = self.world.rng_for(self.name + ".recover")
        delay = 0.05
        while True:
            if not self.connected:
                if self.conn is not None:
                    self.closing = True
                    await self.conn.close()
                    self.conn = None
                try:
                    await self.connect(timeout=10.0)
                except SioError:
                    self.world.refusals.append(time.monotonic())
                    if time.monotonic() > deadline:
                        raise AssertionError(
                            f"{self.name}: could not reconnect before the deadline"
                        ) from None
                    await asyncio.sleep(delay * rng.uniform(0.5, 1.5))  # back-off, as socket.io-client
                    delay = min(delay * 2, 0.5)
                    continue
            if self.resume_to is None:
                return
            target = self.resume_to
            answer = await self.init(target, self.held.get(target, -1))
            if answer is not None and answer.get("status") == "ok":
                self.resume_to = None
                return
            if answer is not None and "wedged" in answer:
                self.world.wedge(target, answer["wedged"])
                await self.disconnect()
                return
            if answer is not None and answer.get("error") != NOT_READY:
                raise AssertionError(f"{self.name}: resuming INIT refused: {answer}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: could not resume before the deadline ({answer})")
            await asyncio.sleep(0.05)


@dataclass
class SoakPlan:
    """What a soak run does.

    ``rate`` is the offered load over all slots (operations per second, each one pause
    apart): more sessions means more connections and sessions, not more load. (At 200
    sessions with the pauses of 40, ~650 operations/s, the supervisor fell minutes behind
    on this 2-core machine: INITs went unanswered for over 60 s.)
    """

    sessions: int = 40
    tabs: int = 3
    duration: float = 30.0
    close_delay: float = 0.5
    runtime: str = "echo"
    session_kills: int = 12  # SIGKILLs of session actors, at seeded random times
    shell_kills: int = 0  # SIGKILLs of runtime shells (local runtime)
    gateway_kill_at: float | None = 0.45  # fraction of the duration, None: no gateway kill
    rate: float = 200.0

    @property
    def pause(self) -> tuple[float, float]:
        mean = self.sessions / self.rate
        return (0.25 * mean, 1.75 * mean)


class World:
    """Shared state of one run: the daemon, the tabs, tokens, tagged actions, the faults."""

    def __init__(self, daemon: Any, seed: int) -> None:
        self.daemon = daemon
        self.url = daemon.url
        self.seed = seed
        self.http: aiohttp.ClientSession = new_http_session()
        self.admin_token = (daemon.data_dir / "run" / "admin.token").read_text().strip()
        self.tokens: dict[str, str] = {}
        self.actions: dict[str, SentAction] = {}
        self.action_ids: dict[str, tuple[str, int]] = {}
        self.tabs: list[Tab] = []
        self.status_counts: Counter[str] = Counter()
        self.faults: list[tuple[float, str]] = []
        self.killed_pids: set[int] = set()
        self.inits = 0
        self.ops = 0
        self.sent = 0
        self.refusals: list[float] = []
        self.not_ready_at: list[float] = []  # INIT answered 503 "Server not ready"
        self.last_frame = 0.0
        self.notes: list[str] = []
        self.gateway_killed: tuple[float, int] = (0.0, 0)  # when, which pid
        self._admin_lock = asyncio.Lock()
        self._admin_at = 0.0
        self._admin_rows: list[dict[str, Any]] = []
        self.incidents: list[str] = []  # hits of the known supervisor bug (World.stuck)
        self.wedged: set[str] = set()

    def rng_for(self, name: str) -> random.Random:
        return random.Random(f"{self.seed}:{name}")

    def tab(self, name: str) -> Tab:
        tab = Tab(self, name)
        self.tabs.append(tab)
        return tab

    async def close(self) -> None:
        for tab in self.tabs:
            if tab.conn is not None:
                tab.closing = True
                with contextlib.suppress(Exception):
                    await tab.conn.close()
        await self.http.close()

    # -- HTTP ----------------------------------------------------------------------------
    async def get(self, path: str, token: str) -> tuple[int, Any]:
        try:
            async with self.http.get(
                self.url + path,
                headers={"Authorization": f"Bearer {token}"},
                timeout=aiohttp.ClientTimeout(20),
            ) as resp:
                return resp.status, await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return 0, None

    async def admin_rows(self, max_age: float = 0.5) -> list[dict[str, Any]]:
        """``/api/admin/sessions``, shared by concurrent callers and reused for ``max_age`` s.

        The list costs the supervisor a store read per session: under load, every slot
        asking for it at once would be the driver overloading the supervisor by itself.
        """
        async with self._admin_lock:
            if time.monotonic() - self._admin_at > max_age:
                status, rows = await self.get("/api/admin/sessions", self.admin_token)
                self._admin_rows = list(rows) if status == 200 else []
                self._admin_at = time.monotonic()
            return self._admin_rows

    async def session_pid(
        self, session_id: str, timeout: float = 30.0, wanted: Callable[[], bool] = lambda: True
    ) -> int | None:
        """The pid of the session's current incarnation (never one we already killed).

        None as soon as ``wanted()`` turns false (its tabs left: a gateway kill, say).
        """
        deadline = time.monotonic() + timeout
        while True:
            rows = await self.admin_rows()
            row = next((r for r in rows if r["session_id"] == session_id), None)
            pid = int(row["pid"] or 0) if row else 0
            if pid and pid not in self.killed_pids and pid_alive(pid):
                return pid
            if not wanted():
                return None
            if time.monotonic() > deadline:
                raise AssertionError(f"no live pid for session {session_id} within {timeout} s ({row})")
            await asyncio.sleep(0.2)  # the list costs the supervisor a store read per session

    async def stored_log(self, session_id: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while True:
            status, page = await self.get(
                f"/api/sessions/{session_id}/events?start_id={len(events)}&limit=10000",
                self.tokens[session_id],
            )
            assert status == 200, f"GET events of {session_id}: {status} {page}"
            events.extend(page)
            if len(page) < 10000:
                return events

    async def stuck(self, session_id: str) -> str | None:
        """Why a session does not answer, when it is the supervisor bug of ``test_soak.py``.

        Thespian 4.0.1 drops a child's ``ChildActorExited`` when that child dies while the
        supervisor handles another child's exit; the supervisor then believes the dead actor
        is still live (it forwards everything to it) or still passivating (it buffers every
        INIT for an incarnation it never starts). None: the session is stuck some other way.
        """
        rows = await self.admin_rows()
        row = next((r for r in rows if r["session_id"] == session_id), None)
        if row is None:
            return None
        pid = int(row.get("pid") or 0)
        if row["state"] == "live" and pid and not pid_alive(pid):
            return f"session {session_id}: the supervisor lists exited pid {pid} as its live actor"
        if row["state"] == "passivated":
            last = None
            for line in self.daemon.log_path.read_text(errors="replace").splitlines():
                if f"[{session_id}]" in line and ("session activated" in line or "passivating (pid" in line):
                    last = line
            if last is not None and "passivating (pid" in last:
                gone = int(last.split("passivating (pid ")[1].split(")")[0])
                if not pid_alive(gone):
                    return (
                        f"session {session_id}: passivated by pid {gone}, which has exited, and never "
                        "rehydrated: the supervisor still waits for that actor's exit"
                    )
        return None

    async def diagnose(self, session_id: str) -> str:
        """What the supervisor and the log say about a session (for failure messages)."""
        rows = await self.admin_rows(max_age=0)
        row = next((r for r in rows if r["session_id"] == session_id), None)
        view = {k: row[k] for k in ("state", "pid", "connections")} if row else "no admin row"
        last = "none"
        for line in self.daemon.log_path.read_text(errors="replace").splitlines():
            if f"[{session_id}]" in line and ("session activated" in line or "passivating (pid" in line):
                last = line[11:23] + " " + line.split(": ", 1)[-1][:60]
        status = ""
        if "pid " in last:
            pid = int(last.split("pid ")[1].split(")")[0])
            try:
                status = psutil.Process(pid).status()
            except psutil.Error:
                status = "gone"
        return f"supervisor: {view}; last in log: {last} (that pid: {status or '?'})"

    async def still_stuck(self, session_id: str, recheck: float = 5.0) -> str | None:
        """``stuck`` twice, ``recheck`` seconds apart: a slow supervisor is not the bug."""
        if await self.stuck(session_id) is None:
            return None
        await asyncio.sleep(recheck)  # a deadline between two observations, not a synchronisation
        return await self.stuck(session_id)

    def wedge(self, session_id: str, why: str) -> None:
        """Record a hit of the known bug; the driver leaves the session alone from now on."""
        if session_id not in self.wedged:
            self.wedged.add(session_id)
            self.incidents.append(f"{time.strftime('%H:%M:%S')} {why}")
        self.excuse("its session was wedged by the known supervisor bug", session_id)

    # -- faults --------------------------------------------------------------------------
    async def kill(self, pid: int, what: str) -> None:
        """SIGKILL ``pid`` and wait until it is dead (its sockets closed)."""
        self.killed_pids.add(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await until(lambda: not pid_alive(pid), 10, f"{what} (pid {pid}) to die")
        self.faults.append((time.monotonic(), f"{what} (pid {pid} at {time.strftime('%H:%M:%S')})"))

    def excuse(self, why: str, session_id: str | None = None) -> None:
        """Actions not yet seen when a fault hit may have died with it."""
        for action in self.actions.values():
            if not action.seen and not action.excused and session_id in (None, action.session_id):
                action.excused = why

    # -- the verdict -----------------------------------------------------------------------
    async def verify(self) -> dict[str, Any]:
        """Compare every tab's view with the stored logs; return figures, raise on any mismatch."""
        problems: list[str] = []
        sessions = sorted({p.session_id for t in self.tabs for p in t.periods})
        logs: dict[str, list[dict[str, Any]]] = {}
        for sid in sessions:
            log = await self.stored_log(sid)
            ids = [e["id"] for e in log]
            if ids != list(range(len(ids))):
                dupes = [i for i, n in Counter(ids).items() if n > 1]
                problems.append(
                    f"session {sid}: stored ids not contiguous from 0 (dupes {dupes[:5]}, {ids[:5]}..)"
                )
            logs[sid] = log
        periods = 0
        for tab in self.tabs:
            for i, period in enumerate(tab.periods):
                periods += 1
                log = logs[period.session_id]
                got = [e.get("id") for e in period.events]
                want_ids = list(range(period.latest + 1, period.latest + 1 + len(got)))
                where = f"tab {tab.name} period {i} (session {period.session_id[:8]}, latest {period.latest}, end {period.end or 'open'})"
                if got != want_ids:
                    problems.append(f"{where}: received ids {_runs(got)}, expected {_runs(want_ids)}")
                    continue
                for event in period.events:
                    if event["id"] >= len(log) or log[event["id"]] != event:
                        stored = log[event["id"]] if event["id"] < len(log) else None
                        problems.append(f"{where}: event {event['id']} differs: got {event}, stored {stored}")
                        break
                if not period.end:
                    last = got[-1] if got else period.latest
                    if last != len(log) - 1:
                        problems.append(f"{where}: open at the end but holds up to {last} of {len(log) - 1}")
            for why, frame in tab.errors:
                problems.append(f"tab {tab.name}: {why}: {frame}")
            if tab.errors:
                problems.extend(f"  tab {tab.name} trace: {line}" for line in tab.trace[-40:])
        stored_tags: Counter[str] = Counter()
        where_stored: dict[str, str] = {}
        for sid, log in logs.items():
            for event in log:
                tag = tag_of(event)
                if tag is not None:
                    stored_tags[tag] += 1
                    where_stored[tag] = sid
        for tag, n in stored_tags.items():
            if n > 1:
                problems.append(f"action {tag} stored {n} times")
        lost = excused = 0
        for tag, action in self.actions.items():
            if tag in where_stored:
                if where_stored[tag] != action.session_id:
                    problems.append(f"action {tag} sent to {action.session_id} stored in {where_stored[tag]}")
                continue
            if action.excused:
                excused += 1
            else:
                lost += 1
                problems.append(
                    f"action {tag} (tab {action.tab}, session {action.session_id[:8]}) was never stored"
                )
        figures = {
            "sessions": len(sessions),
            "events": sum(len(v) for v in logs.values()),
            "periods": periods,
            "operations": self.ops,
            "inits": self.inits,
            "actions_sent": self.sent,
            "actions_lost_to_faults": excused,
            "faults": Counter(what.split(" (")[0] for _, what in self.faults),
            "statuses": dict(self.status_counts),
            "connect_refused": len(self.refusals),
            "init_retried_503": sum(len(t.retried) for t in self.tabs),
        }
        if problems:
            head = "\n".join(problems[:120])
            raise AssertionError(
                f"seed {self.seed}: {len(problems)} problem(s) ({figures}):\n{head}\n"
                f"daemon log: {self.daemon.log_path}"
            )
        return figures


def _runs(ids: Iterable[Any]) -> str:
    """``0-5,7,9-12``: a compact view of an id list."""
    out: list[str] = []
    start = prev = None
    for i in ids:
        if start is not None and isinstance(i, int) and i == prev + 1:  # type: ignore[operator]
            prev = i
            continue
        if start is not None:
            out.append(f"{start}-{prev}" if start != prev else f"{start}")
        start = prev = i
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else f"{start}")
    return ",".join(out[:30]) + (",..." if len(out) > 30 else "")


# -- the soak ----------------------------------------------------------------------------------


class Slot:
    """A user's sessions and tabs; its operations run one after another (a seeded schedule)."""

    def __init__(self, world: World, plan: SoakPlan, index: int) -> None:
        self.world = world
        self.plan = plan
        self.index = index
        self.rng = world.rng_for(f"slot{index}")
        self.tabs = [world.tab(f"{index}.{j}") for j in range(plan.tabs)]
        self.sessions: list[str] = []  # every session this slot created, newest last
        self.faults: list[tuple[float, str]] = []  # (monotonic time, "session" | "shell"), sorted

    def attached_tabs(self, session_id: str | None = None) -> list[Tab]:
        return [t for t in self.tabs if t.attached and session_id in (None, t.attached)]

    async def recover(self, timeout: float = 90.0) -> None:
        for tab in self.tabs:
            if tab.lost or (tab.resume_to is not None and tab.connected and tab.current is None):
                await tab.recover(time.monotonic() + timeout)

    async def join(self, tab: Tab, session_id: str | None = None) -> None:
        """INIT on ``tab``: into ``session_id`` (or the slot's newest), with a random latest_event_id."""
        rng = self.rng
        if session_id is None:
            if not self.sessions:
                await self.create(tab)
                return
            session_id = self.sessions[-1] if rng.random() < 0.8 else rng.choice(self.sessions)
        held = tab.held.get(session_id, -1)
        roll = rng.random()
        if roll < 0.6:
            latest: int | None = held  # resume where this tab is
        elif roll < 0.75:
            latest = None  # the whole log
        elif roll < 0.9:
            latest = rng.randint(-1, max(held, -1))  # from somewhere before
        else:
            latest = -1
        answer = await tab.init(session_id, latest)
        if answer is not None and answer.get("status") != "ok" and answer.get("error") == NOT_READY:
            tab.resume_to = session_id  # the gateway just restarted: the recovery retries
        if answer is not None and "wedged" in answer:
            self.world.wedge(session_id, answer["wedged"])
            await self.abandon()

    async def abandon(self) -> None:
        """Leave the sessions the known bug wedged: no tab stays on them, no INIT goes there."""
        for tab in self.tabs:
            if tab.init_future is not None or (tab.current and tab.current.session_id in self.world.wedged):
                await tab.disconnect()
        self.sessions = [s for s in self.sessions if s not in self.world.wedged]

    async def create(self, tab: Tab) -> None:
        answer = await tab.init(None)
        if answer is not None and answer.get("status") == "ok":
            self.sessions.append(str(answer["session_id"]))

    async def run(self, deadline: float) -> None:
        plan, rng = self.plan, self.rng
        while time.monotonic() < deadline:
            await self.recover()
            if any(s in self.world.wedged for s in self.sessions):
                await self.abandon()
            if self.faults and time.monotonic() >= self.faults[0][0]:
                kind = self.faults[0][1]
                done = await (self.kill_session() if kind == "session" else self.kill_shell())
                if done or time.monotonic() > self.faults[0][0] + 5:  # else retried next turn
                    self.faults.pop(0)
            elif rng.random() < 0.04:
                await self.idle()
            else:
                await self.tab_op(rng.choice(self.tabs))
            self.world.ops += 1
            await asyncio.sleep(rng.uniform(*plan.pause))  # the workload's pacing

    async def tab_op(self, tab: Tab) -> None:
        rng = self.rng
        try:
            if not tab.connected:
                await tab.connect()
                if rng.random() < 0.85:
                    await self.join(tab)
                return
            if tab.current is None:
                if rng.random() < 0.05 or not self.sessions:
                    await self.create(tab)
                else:
                    await self.join(tab)
                return
            roll = rng.random()
            if roll < 0.35:
                await tab.act("message", rng.choice(["hello", "ünïcødé ✓", "x" * rng.randint(1, 300)]))
            elif roll < 0.55:
                await tab.act("run")
            elif roll < 0.60:
                await self.busy(tab)
            elif roll < 0.72:
                for _ in range(rng.randint(3, 6)):
                    await tab.act(rng.choice(["message", "run"]))
            elif roll < 0.80:
                await self.join(tab, tab.current.session_id)  # a second INIT on the same connection
            elif roll < 0.82:
                await self.create(tab)  # move this connection to a new session
            elif roll < 0.85 and len(self.sessions) > 1:
                await self.join(tab, rng.choice(self.sessions[:-1]))  # back to an older session
            else:
                await tab.disconnect()
        except SioError:
            pass  # the connection died under the operation (gateway killed): recovered next turn

    async def busy(self, tab: Tab) -> None:
        """A command that keeps the runtime busy (passivation then waits for it)."""
        if self.plan.runtime == "local":
            await tab.act(": {tag}; sleep 0.3")
        else:
            await tab.send_raw({"action": "run", "args": {"command": "sleep 0.3"}})

    async def idle(self) -> None:
        """Every tab leaves for longer than close_delay: the sessions passivate, then rehydrate."""
        for tab in self.tabs:
            if tab.conn is not None:
                await tab.disconnect()
        await asyncio.sleep(self.plan.close_delay * self.rng.uniform(1.5, 4.0))

    async def ensure_attached(self) -> list[Tab]:
        """The attached tabs; if none, attach one to the newest session (a fault needs a witness)."""
        if not self.attached_tabs():
            tab = self.tabs[0]
            try:
                if not tab.connected:
                    await tab.connect()
                await self.join(tab, self.sessions[-1] if self.sessions else None)
            except SioError:
                pass
        return self.attached_tabs()

    async def kill_session(self) -> bool:
        """SIGKILL an attached session's actor with actions in flight; its tabs must be resumed."""
        attached = await self.ensure_attached()
        if not attached:
            return False
        world, rng = self.world, self.rng
        sid = rng.choice(attached).attached
        assert sid is not None
        pid = await world.session_pid(sid, wanted=lambda: bool(self.attached_tabs(sid)))
        if pid is None:
            return False
        shells = _shells(pid)
        for tab in self.attached_tabs(sid):  # in flight when it dies: may be lost (excused)
            for _ in range(rng.randint(0, 3)):
                await tab.act("message", "in flight")
        victims = self.attached_tabs(sid)
        before = {t.name: t.count_status(RESTARTED) for t in victims}
        await world.kill(pid, f"session actor ({sid[:8]})")
        world.excuse("its session actor was killed", sid)

        # Nothing is sent to the session until its tabs hear it was restarted: whatever reaches
        # the supervisor before it has processed the death is forwarded to the dead actor and
        # lost, INITs included (test_soak.py::test_messages_to_a_dead_session_actor_are_not_lost).
        def restarted() -> bool:
            return all(t.lost or t.count_status(RESTARTED) > before[t.name] for t in victims)

        try:
            await until(restarted, 5, RESTARTED)
        except AssertionError:
            why = await world.still_stuck(sid)
            if why is not None and not restarted():
                world.wedge(sid, why)
                await self.abandon()
                return True
            await until(restarted, 45, f"{RESTARTED} on every tab of {sid[:8]} (seed {world.seed})")
        after: list[SentAction] = []  # right after the restart: must all be stored and seen
        for _ in range(rng.randint(1, 4)):
            for tab in self.attached_tabs(sid):
                sent = await tab.act("message", "after restart")
                if sent is not None:
                    after.append(sent)
        await until(
            lambda: all(a.seen or a.excused for a in after),
            30,
            f"actions sent after the restart of {sid[:8]} to come back (seed {world.seed}): "
            f"{[a.tag for a in after if not a.seen]}",
        )
        if shells:  # the dead actor's shell must not outlive it
            await until(lambda: not any(pid_alive(p) for p in shells), 30, f"old shells {shells} to exit")
        return True

    async def kill_shell(self) -> bool:
        """SIGKILL the runtime's bash while a command runs: the command ends, the runtime restarts."""
        attached = await self.ensure_attached()
        if not attached:
            return False
        world = self.world
        tab = self.rng.choice(attached)
        sid = tab.attached
        assert sid is not None
        action = await tab.act(": {tag}; sleep 5")
        if action is None:
            return False
        await until(lambda: action.seen or not tab.attached, 30, f"{action.tag} to be echoed")
        if not tab.attached or tab.attached != sid:
            return False
        pid = await world.session_pid(sid, wanted=lambda: tab.attached == sid)
        if pid is None:
            return False
        shells = _shells(pid)
        if not shells:
            world.notes.append(f"no shell under session pid {pid}")
            return False
        everything = set(shells)
        for shell in shells:
            with contextlib.suppress(psutil.Error):
                everything |= {c.pid for c in psutil.Process(shell).children(recursive=True)}
        before = tab.count_status(RUNTIME_RESTARTED)
        for shell in shells:
            await world.kill(shell, f"runtime shell ({sid[:8]})")
        action_id = world.action_ids[action.tag][1]

        def ended() -> bool:
            if not tab.attached:
                return True
            period = tab.current
            assert period is not None
            return any(
                e.get("cause") == action_id and "exit_code" in e.get("extras", {}) for e in period.events
            )

        await until(ended, 30, f"the command killed with its shell to end ({action.tag}, seed {world.seed})")
        if tab.attached:
            await until(lambda: tab.count_status(RUNTIME_RESTARTED) > before, 10, RUNTIME_RESTARTED)
        await until(lambda: not any(pid_alive(p) for p in everything), 30, f"{everything} to be gone")
        return True


def _shells(session_pid: int) -> list[int]:
    """The session's bash: its child, or in the sandbox the child of bwrap's init (bwrap's
    monitor is the session's child, its init the monitor's)."""
    try:
        found = []
        for c in psutil.Process(session_pid).children():
            if c.name() == "bwrap":
                candidates = [s for init in c.children() for s in init.children()]
            else:
                candidates = [c]
            found += [s.pid for s in candidates if s.name() == "bash" and s.status() != "zombie"]
        return found
    except psutil.Error:
        return []


async def settle(world: World, slots: list[Slot], timeout: float = 90.0) -> None:
    """Resume every lost tab, then end with one ``run`` per attached session seen by all its tabs."""
    for slot in slots:
        await slot.recover()
    finals: list[tuple[list[Tab], SentAction]] = []
    for slot in slots:
        by_session: dict[str, list[Tab]] = {}
        for tab in slot.attached_tabs():
            by_session.setdefault(tab.attached or "", []).append(tab)
        for tabs in by_session.values():
            sent = await tabs[0].act("run", "final")
            assert sent is not None, f"tab {tabs[0].name} lost its connection while settling"
            finals.append((tabs, sent))
    await until(lambda: all(a.seen for _, a in finals), timeout, "every final action to be echoed")

    def all_done() -> bool:
        for tabs, action in finals:
            action_id = world.action_ids[action.tag][1]
            for tab in tabs:
                period = tab.current
                if period is None or not any(e.get("cause") == action_id for e in period.events):
                    return False
        return True

    await until(
        all_done, timeout, f"every tab to receive its session's final observation (seed {world.seed})"
    )


async def run_soak(daemon: Any, plan: SoakPlan, seed: int) -> dict[str, Any]:
    """The soak: slots of tabs doing random operations, faults, then the verdict."""
    world = World(daemon, seed)
    try:
        slots = [Slot(world, plan, i) for i in range(plan.sessions)]
        started = time.monotonic()
        deadline = started + plan.duration

        async def first(slot: Slot) -> None:  # every slot starts with one attached tab and one session
            await slot.tabs[0].connect()
            await slot.create(slot.tabs[0])
            assert slot.sessions, f"slot {slot.index}: the first INIT failed: {slot.tabs[0].errors}"

        await gather_limited([first(s) for s in slots], 20)
        rng = world.rng_for("faults")
        kinds = ["session"] * plan.session_kills + ["shell"] * plan.shell_kills
        for kind in kinds:
            at = started + plan.duration * rng.uniform(0.1, 0.85)
            rng.choice(slots).faults.append((at, kind))
        for slot in slots:
            slot.faults.sort()
        tasks = [asyncio.create_task(s.run(deadline)) for s in slots]
        gateway_restart = None
        if plan.gateway_kill_at is not None:
            await asyncio.sleep(plan.duration * plan.gateway_kill_at)  # the schedule, not a sync point
            gateway_restart = await kill_gateway(world)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        ran = time.monotonic()
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise AssertionError(
                f"seed {seed}: {len(failures)} slot(s) failed: {failures[:5]!r}"
            ) from failures[0]
        await settle(world, slots)
        settled = time.monotonic()
        figures = await world.verify()
        figures["phases_s"] = {
            "run": round(ran - started, 1),
            "settle": round(settled - ran, 1),
            "verify": round(time.monotonic() - settled, 1),
        }
        figures["gateway_restart_s"] = gateway_restart
        figures["incidents"] = world.incidents
        figures["tags"] = list(world.actions)
        figures["duration_s"] = round(time.monotonic() - started, 1)
        figures["notes"] = world.notes
        return figures
    finally:
        await world.close()


async def gather_limited(jobs: list[Any], limit: int) -> list[Any]:
    """Run coroutines concurrently, at most ``limit`` at a time; re-raise the first failure."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Any) -> Any:
        async with gate:
            return await job

    return list(await asyncio.gather(*(one(j) for j in jobs)))


async def wait_healthy(world: World, since: float, timeout: float = 60.0) -> float:
    """Seconds from ``since`` until /api/health answers 200."""
    while True:
        status, _ = await world.get("/api/health", "")
        if status == 200:
            return time.monotonic() - since
        if time.monotonic() - since > timeout:
            raise AssertionError(f"the restarted gateway did not become healthy within {timeout} s")
        await asyncio.sleep(0.02)


async def kill_gateway(world: World) -> float:
    """SIGKILL the gateway; return the seconds until the daemon's new one answers /api/health."""
    await kill_gateway_only(world)
    return await kill_gateway_wait(world)


async def kill_gateway_only(world: World) -> None:
    assert world.daemon.proc is not None
    victim = gateway_pid(world.daemon.proc.pid)
    assert victim is not None, "no gateway process found"
    await world.kill(victim, "gateway")
    world.excuse("the gateway was killed")
    world.gateway_killed = (time.monotonic(), victim)


async def kill_gateway_wait(world: World, timeout: float = 30.0) -> float:
    """Seconds from the gateway's death until the new one is healthy (the supervisor linked)."""
    dead, victim = world.gateway_killed
    assert world.daemon.proc is not None
    await until(lambda: gateway_pid(world.daemon.proc.pid) not in (None, victim), 60, "a new gateway process")
    try:
        took = await wait_healthy(world, dead, timeout)
    except AssertionError:
        log = world.daemon.log_path.read_text(errors="replace")
        after = log[log.rfind("gateway exited with code -9") :]
        if "gateway link lost" not in after:
            raise SupervisorNeverReconnected(
                "the supervisor never noticed the gateway died (no 'gateway link lost' after the "
                "restart): it stays unlinked, /api/health stays 503 and every INIT gets 'Server not ready'"
            ) from None
        raise
    world.daemon.remember_pids()
    return round(took, 2)


class SupervisorNeverReconnected(AssertionError):
    """The supervisor dropped its bridge link on a failed send and never reconnected."""


# -- the reconnect storm -------------------------------------------------------------------------


async def run_storm(daemon: Any, sessions: int, tabs: int, seed: int) -> dict[str, Any]:
    """``sessions`` x ``tabs`` attached clients; the gateway is killed; all reconnect at once.

    Before the kill each session runs ``sleep 1.5`` (echo runtime): its observation is stored
    while the gateway is down or restarting, so every client must get it from the replay of
    its resuming INIT (``latest_event_id`` = the highest id it holds).
    """
    world = World(daemon, seed)
    try:
        groups = [[world.tab(f"{i}.{j}") for j in range(tabs)] for i in range(sessions)]

        async def create(group: list[Tab]) -> str:
            await group[0].connect()
            answer = await group[0].init(None)
            assert answer is not None and answer.get("status") == "ok", answer
            return str(answer["session_id"])

        ids = await gather_limited([create(g) for g in groups], 20)

        async def join(tab: Tab, sid: str) -> None:
            await tab.connect()
            answer = await tab.init(sid)
            assert answer is not None and answer.get("status") == "ok", answer

        await gather_limited([join(t, sid) for g, sid in zip(groups, ids, strict=True) for t in g[1:]], 50)
        for group in groups:
            for _ in range(2):
                assert await group[0].act("message", "before the storm") is not None
        every = [t for g in groups for t in g]
        await until(
            lambda: all(t.held.get(t.attached or "") == 1 for t in every), 60, "events 0-1 everywhere"
        )
        for group in groups:
            assert await group[0].send_raw({"action": "run", "args": {"command": "sleep 1.5"}})
        await until(lambda: all(t.held.get(t.attached or "") == 2 for t in every), 60, "event 2 everywhere")
        world.excuse("the gateway was killed")  # nothing is in flight: nothing to excuse
        assert daemon.proc is not None
        victim = gateway_pid(daemon.proc.pid)
        assert victim is not None, "no gateway process found"
        await world.kill(victim, "gateway")
        dead = time.monotonic()
        errors_before = sum(len(t.errors) for t in every)

        async def come_back(tab: Tab) -> None:
            await until(lambda: tab.lost, 30, f"tab {tab.name} to notice the gateway died")
            await tab.recover(dead + 120)

        health = asyncio.create_task(wait_healthy(world, dead, 120))
        await asyncio.gather(*(come_back(t) for t in every))
        attached_s = max(t.attached_at for t in every) - dead
        healthy_s = await health
        assert daemon.proc is not None
        daemon.remember_pids()
        await until(lambda: all(t.held.get(t.attached or "") == 3 for t in every), 60,
                    "the observation stored during the outage, on every client")  # fmt: skip
        for group in groups:
            assert await group[0].act("message", "after the storm") is not None
        await until(lambda: all(t.held.get(t.attached or "") == 4 for t in every), 60, "event 4 everywhere")
        figures = await world.verify()
        healthy_at = dead + healthy_s
        figures.update(
            clients=len(every),
            gateway_healthy_s=round(healthy_s, 2),
            all_attached_s=round(attached_s, 2),
            attached_after_healthy_s=round(attached_s - healthy_s, 2),
            refused_while_down=sum(1 for r in world.refusals if r <= healthy_at),
            refused_after_healthy=sum(1 for r in world.refusals if r > healthy_at),
            init_503_after_healthy=sum(1 for r in world.not_ready_at if r > healthy_at),
            error_frames=sum(len(t.errors) for t in every) - errors_before,
        )
        return figures
    finally:
        await world.close()


def stop_daemon(daemon: Any, grace: float) -> bool:
    """SIGTERM the daemon; if it is not gone within ``grace`` s, SIGKILL all of it.

    True when it stopped by itself with exit code 0. (A supervisor hit by the lost
    ``ChildActorExited`` bug waits 20 s for the lost exits, then the launcher waits for
    Thespian: about 45 s; the suite cannot afford that.)
    """
    import subprocess

    assert daemon.proc is not None
    daemon.remember_pids()
    daemon.proc.send_signal(signal.SIGTERM)
    try:
        clean = daemon.proc.wait(grace) == 0
    except subprocess.TimeoutExpired:
        daemon.remember_pids()
        for pid in sorted(daemon.known_pids):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        daemon.proc.wait()
        clean = False
    left = daemon.stop()
    assert left == [], f"processes left behind: {left}"
    return clean
