"""Load processes: each holds many Socket.IO connections and runs one step of a scenario at a time.

The harness (``bench.harness``) starts ``LoadPool(n)``: n spawned processes,
each running an asyncio loop (uvloop when installed) and a ``Worker`` that keeps
its connections between commands. A scenario is a sequence of steps sent to
every worker at once (``pool.call(step, [params per worker])``), e.g.
``open_sessions`` -> ``roundtrip`` -> ``close_sessions``, so that the harness
can sample the servers' CPU and memory between steps. Sessions are sharded
across workers; single-session steps go to worker 0. Every step answers a dict
that includes the worker's CPU seconds (user + system) and wall seconds for the
step, so the load's own cost is reported next to the figures.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import resource
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .sioclient import SioConn, SioError, new_http_session

__all__ = ["LoadPool", "Worker", "split"]


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as possible."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Group:
    """One session as seen by the load: its tabs (tab 0 sends) and the counters of a step."""

    index: int
    tabs: list[SioConn] = field(default_factory=list)
    token: str | None = None
    session_id: str | None = None
    pending: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    window: asyncio.Semaphore | None = None


class Worker:
    """The connections of one load process and the scenario steps it can run."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.http = new_http_session()
        self.groups: list[Group] = []
        self.idle: list[SioConn] = []
        self.counting = False
        self.events = 0
        self.frames = 0

    # -- helpers ---------------------------------------------------------------------
    def _counter(self, payload: dict[str, Any], now: float) -> None:
        if self.counting:
            self.frames += 1
            if type(payload.get("id")) is int:
                self.events += 1

    async def _connect_many(
        self, url: str, n: int, concurrency: int
    ) -> tuple[list[SioConn | None], list[str]]:
        sem = asyncio.Semaphore(concurrency)
        errors: list[str] = []

        async def one() -> SioConn | None:
            async with sem:
                conn = SioConn(self.http, url, self._counter)
                try:
                    await conn.connect()
                    return conn
                except SioError as exc:
                    errors.append(str(exc))
                    return None

        conns = await asyncio.gather(*(one() for _ in range(n)))
        return list(conns), errors

    # -- steps -------------------------------------------------------------------------
    async def open_sessions(
        self,
        url: str,
        sessions: int = 0,
        tabs: int = 1,
        concurrency: int = 32,
        tokens: list[str] | None = None,
        latest_event_id: int | None = None,
    ) -> dict[str, Any]:
        """Connect ``sessions * tabs`` connections (untimed), then INIT tab 0 of each (timed: the
        activation phase; new sessions, or ``tokens`` to rehydrate/join), then the other tabs join."""
        if tokens is not None:
            sessions = len(tokens)
        conns, errors = await self._connect_many(url, sessions * tabs, concurrency)
        base = len(self.groups)
        groups: list[Group] = []
        for i in range(sessions):
            group = Group(base + i)
            group.tabs = [c for c in conns[i * tabs : (i + 1) * tabs] if c is not None]
            groups.append(group)
        sem = asyncio.Semaphore(concurrency)
        init_ms: list[float] = []
        join_ms: list[float] = []

        async def init(group: Group, tab: int, token: str | None, out: list[float]) -> None:
            if tab >= len(group.tabs):
                return
            async with sem:
                t0 = time.perf_counter()
                try:
                    answer = await group.tabs[tab].initialize(token, latest_event_id)
                except (SioError, asyncio.TimeoutError) as exc:
                    errors.append(f"INIT: {exc!r}")
                    return
                if answer.get("status") != "ok":
                    errors.append(f"INIT answered {answer}")
                    return
                out.append((time.perf_counter() - t0) * 1000)
                if tab == 0:
                    group.token, group.session_id = answer.get("token"), answer.get("session_id")

        cpu0, t0 = _cpu(), time.perf_counter()
        await asyncio.gather(
            *(init(g, 0, tokens[i] if tokens else None, init_ms) for i, g in enumerate(groups))
        )
        init_elapsed = time.perf_counter() - t0
        cpu_init = _cpu() - cpu0
        t1 = time.perf_counter()
        await asyncio.gather(
            *(init(g, t, g.token, join_ms) for g in groups for t in range(1, tabs) if g.token)
        )
        join_elapsed = time.perf_counter() - t1
        self.groups.extend(groups)
        return {
            "inits": len(init_ms),
            "init_ms": init_ms,
            "init_elapsed": init_elapsed,
            "join_ms": join_ms,
            "join_elapsed": join_elapsed,
            "errors": errors,
            "cpu_s": cpu_init,
            "wall_s": init_elapsed,
            "sessions": [(g.session_id, g.token) for g in groups],
        }

    async def close_sessions(self, spread: float = 0.0) -> dict[str, Any]:
        """Close every connection; with ``spread`` > 0, session i closes at i * spread / n.
        Answers the wall-clock time each session's last tab was closed."""
        groups, self.groups = self.groups, []
        closed_at: dict[str, float] = {}
        t0 = time.perf_counter()

        async def close(i: int, group: Group) -> None:
            if spread:
                await asyncio.sleep(max(0.0, t0 + i * spread / max(1, len(groups)) - time.perf_counter()))
            await asyncio.gather(*(c.close() for c in group.tabs))
            if group.session_id:
                closed_at[group.session_id] = time.time()

        await asyncio.gather(*(close(i, g) for i, g in enumerate(groups)))
        return {"closed_at": closed_at}

    async def open_idle(self, url: str, n: int, concurrency: int = 64) -> dict[str, Any]:
        """Connections that connect and do nothing else (no INIT)."""
        conns, errors = await self._connect_many(url, n, concurrency)
        self.idle.extend(c for c in conns if c is not None)
        return {"open": sum(1 for c in conns if c is not None), "errors": errors}

    async def close_idle(self) -> dict[str, Any]:
        conns, self.idle = self.idle, []
        alive = sum(1 for c in conns if not c.closed)
        await asyncio.gather(*(c.close() for c in conns))
        return {"alive_before_close": alive}

    async def roundtrip(self, rate: float, duration: float, drain: float = 5.0) -> dict[str, Any]:
        """Open loop: tab 0 of every session sends ``message`` at ``rate``/s on a fixed schedule
        (random phase); latency = echo received - scheduled send time (no coordinated omission)."""
        period = 1.0 / rate
        loop_lag: list[float] = []
        errors: list[str] = []
        for group in self.groups:
            group.pending, group.latencies = {}, []
            if group.tabs:
                group.tabs[0].on_event = self._rt_handler(group)
        cpu0 = _cpu()
        start = time.perf_counter() + 0.05
        end = start + duration
        sent = 0

        async def sender(group: Group) -> None:
            nonlocal sent
            conn = group.tabs[0]
            t = start + random.random() * period
            k = 0
            while t < end:
                delay = t - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                loop_lag.append(time.perf_counter() - t)
                key = f"rt{group.index}:{k}"
                group.pending[key] = t
                try:
                    await conn.emit({"action": "message", "args": {"content": key}})
                except SioError as exc:
                    errors.append(str(exc))
                    return
                sent += 1
                k += 1
                t += period

        await asyncio.gather(*(sender(g) for g in self.groups if g.tabs))
        deadline = time.perf_counter() + drain
        while time.perf_counter() < deadline and any(g.pending for g in self.groups):
            await asyncio.sleep(0.02)
        wall = time.perf_counter() - start
        lat = [x for g in self.groups for x in g.latencies]
        lost = sum(len(g.pending) for g in self.groups)
        for group in self.groups:
            if group.tabs:
                group.tabs[0].on_event = self._counter
        loop_lag.sort()
        return {
            "lat_ms": lat,
            "sent": sent,
            "received": len(lat),
            "lost": lost,
            "errors": errors,
            "send_lag_p99_ms": loop_lag[int(0.99 * (len(loop_lag) - 1))] * 1000 if loop_lag else 0.0,
            "cpu_s": _cpu() - cpu0,
            "wall_s": wall,
        }

    def _rt_handler(self, group: Group) -> Any:
        pending, latencies = group.pending, group.latencies

        def handler(payload: dict[str, Any], now: float) -> None:
            args = payload.get("args")
            if isinstance(args, dict):
                sched = pending.pop(str(args.get("content")), None)
                if sched is not None:
                    latencies.append((now - sched) * 1000)

        return handler

    async def closed_loop(self, duration: float, warmup: float = 1.0, window: int = 1) -> dict[str, Any]:
        """Tab 0 of every session keeps ``window`` messages in flight (sends the next when its own
        echo comes back); events received by every tab are counted after ``warmup`` for ``duration``."""
        stop = False
        actions = 0
        errors: list[str] = []

        def handler_for(group: Group) -> Any:
            window_sem = group.window
            assert window_sem is not None

            def handler(payload: dict[str, Any], now: float) -> None:
                self._counter(payload, now)
                if (
                    type(payload.get("id")) is int or "action" in payload
                ):  # a stored event, or the limit's echo
                    window_sem.release()

            return handler

        for group in self.groups:
            group.window = asyncio.Semaphore(window)
            if group.tabs:
                group.tabs[0].on_event = handler_for(group)

        async def sender(group: Group) -> None:
            nonlocal actions
            conn, sem = group.tabs[0], group.window
            assert sem is not None
            k = 0
            while not stop:
                try:
                    await asyncio.wait_for(sem.acquire(), 5.0)
                except asyncio.TimeoutError:
                    if not stop:
                        errors.append(f"session {group.index}: no echo within 5 s")
                    return
                if stop:
                    return
                try:
                    await conn.emit({"action": "message", "args": {"content": f"cl{k}"}})
                except SioError as exc:
                    errors.append(str(exc))
                    return
                actions += 1
                k += 1

        tasks = [asyncio.ensure_future(sender(g)) for g in self.groups if g.tabs]
        await asyncio.sleep(warmup)
        self.events = self.frames = 0
        actions = 0
        cpu0, t0 = _cpu(), time.perf_counter()
        self.counting = True
        await asyncio.sleep(duration)
        self.counting = False
        wall = time.perf_counter() - t0
        cpu = _cpu() - cpu0
        counted_actions = actions
        stop = True
        for group in self.groups:
            if group.window is not None:
                group.window.release()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.5)  # let in-flight echoes land before the next step
        for group in self.groups:
            if group.tabs:
                group.tabs[0].on_event = self._counter
        return {
            "events": self.events,
            "frames": self.frames,
            "actions": counted_actions,
            "errors": errors,
            "cpu_s": cpu,
            "wall_s": wall,
        }

    async def attach(self, url: str, token: str, count: int, latest_event_id: int) -> dict[str, Any]:
        """``count`` times, one after the other: a new connection INITs with ``token`` (no replay:
        ``latest_event_id`` is the session's last id); the INIT round trip is timed, then it closes."""
        lat: list[float] = []
        errors: list[str] = []
        cpu0, t0 = _cpu(), time.perf_counter()
        for _ in range(count):
            conn = SioConn(self.http, url)
            try:
                await conn.connect()
                t = time.perf_counter()
                answer = await conn.initialize(token, latest_event_id)
                if answer.get("status") == "ok":
                    lat.append((time.perf_counter() - t) * 1000)
                else:
                    errors.append(str(answer))
            except (SioError, asyncio.TimeoutError) as exc:
                errors.append(repr(exc))
            finally:
                await conn.close()
        return {"lat_ms": lat, "errors": errors, "cpu_s": _cpu() - cpu0, "wall_s": time.perf_counter() - t0}

    async def replay(self, url: str, token: str, expect_last: int, timeout: float = 60.0) -> dict[str, Any]:
        """A new connection INITs with ``token`` and ``latest_event_id = -1``: time to the INIT answer
        and to the event ``expect_last`` (the end of the replay); checks the ids arrive 0, 1, 2, ..."""
        done = asyncio.get_running_loop().create_future()
        state = {"count": 0, "next": 0, "gaps": 0, "t_last": 0.0}

        def handler(payload: dict[str, Any], now: float) -> None:
            event_id = payload.get("id")
            if type(event_id) is not int:
                return
            state["count"] += 1
            if event_id != state["next"]:
                state["gaps"] += 1
            state["next"] = event_id + 1
            if event_id >= expect_last and not done.done():
                state["t_last"] = now
                done.set_result(True)

        conn = SioConn(self.http, url, handler)
        cpu0 = _cpu()
        try:
            await conn.connect()
            t0 = time.perf_counter()
            answer = await conn.initialize(token, -1, timeout=timeout)
            t_ok = time.perf_counter()
            if answer.get("status") != "ok":
                return {"error": str(answer)}
            await asyncio.wait_for(done, timeout)
            return {
                "answer_ms": (t_ok - t0) * 1000,
                "replay_ms": (state["t_last"] - t0) * 1000,
                "events": state["count"],
                "out_of_order": state["gaps"],
                "cpu_s": _cpu() - cpu0,
            }
        except (SioError, asyncio.TimeoutError) as exc:
            return {"error": repr(exc), "events": state["count"]}
        finally:
            await conn.close()

    async def send_messages(self, count: int) -> dict[str, Any]:
        """Tab 0 of each session sends ``count`` messages and waits for their echoes (setup, not timed)."""
        results = []
        for group in self.groups:
            if group.tabs:
                results.append(self._send_some(group, count))
        await asyncio.gather(*results)
        return {"last_ids": {g.session_id: g.tabs[0].last_id for g in self.groups if g.tabs}}

    async def _send_some(self, group: Group, count: int) -> None:
        conn = group.tabs[0]
        got = asyncio.Event()
        seen = 0

        def handler(payload: dict[str, Any], now: float) -> None:
            nonlocal seen
            args = payload.get("args")
            if isinstance(args, dict) and str(args.get("content", "")).startswith("setup"):
                seen += 1
                if seen >= count:
                    got.set()

        previous, conn.on_event = conn.on_event, handler
        try:
            for k in range(count):
                await conn.emit({"action": "message", "args": {"content": f"setup{k}"}})
            await asyncio.wait_for(got.wait(), 30)
        except (SioError, asyncio.TimeoutError):
            pass
        finally:
            conn.on_event = previous

    async def shutdown(self) -> dict[str, Any]:
        await self.close_sessions()
        await self.close_idle()
        await self.http.close()
        return {}


async def _serve(pipe: Connection, index: int) -> None:
    worker = Worker(index)
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, pipe.recv)
        if command is None:
            await worker.shutdown()
            pipe.send(("ok", {}))
            return
        step, params = command
        try:
            result = await getattr(worker, step)(**params)
            pipe.send(("ok", result))
        except Exception:
            pipe.send(("error", traceback.format_exc()))


def _main(pipe: Connection, index: int) -> None:
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(pipe, index))


class LoadPool:
    """``n`` load processes (spawned, so that they share nothing with the harness)."""

    def __init__(self, n: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for i in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_main, args=(child, i), daemon=True, name=f"bench-load-{i}")
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    @property
    def n(self) -> int:
        return len(self.pipes)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def call(
        self, step: str, params: Sequence[dict[str, Any] | None] | dict[str, Any], timeout: float = 600
    ) -> list[Any]:
        """Run ``step`` on every worker (``params`` per worker, or the same dict for all) and wait."""
        per_worker: list[dict[str, Any] | None] = (
            list(params) if not isinstance(params, dict) else [params] * self.n
        )
        active = [(pipe, p) for pipe, p in zip(self.pipes, per_worker, strict=True) if p is not None]
        for pipe, p in active:
            pipe.send((step, p))
        results = []
        for pipe, _ in active:
            if not pipe.poll(timeout):
                raise TimeoutError(f"load step {step} did not finish within {timeout} s")
            status, value = pipe.recv()
            if status != "ok":
                raise RuntimeError(f"load step {step} failed in a worker:\n{value}")
            results.append(value)
        return results

    def one(self, step: str, params: dict[str, Any], timeout: float = 600) -> Any:
        """Run ``step`` on worker 0 only."""
        return self.call(step, [params] + [None] * (self.n - 1), timeout)[0]

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(None)
                if pipe.poll(15):
                    pipe.recv()
            except (OSError, EOFError):
                pass
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
