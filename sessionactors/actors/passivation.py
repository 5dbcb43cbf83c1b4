"""When a session actor stops: its wakeup timers (passivation after ``close_delay``, the
runtime's deadlines, the metrics flush), passivation itself and shutdown, and what happens
when the runtime raises (restarted in place, or the session marked failed).

A mixin of ``SessionActor`` (like ``lifecycle.py`` for the supervisor), kept apart so that
``session.py`` reads as what a live session does with its connections and events. The
attributes and methods it uses are the session's, or Thespian's ``Actor``'s (declared
below for the type checker).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from ..errors import LeaseLost
from ..messages import Passivated, SessionFailed
from ..protocol import error_frame, status_update
from ..runtimes.base import error_observation, load_runtime

if TYPE_CHECKING:
    from collections import deque

    from ..bridge import Outbox
    from ..config import Config
    from ..runtimes.base import Output, Runtime, RuntimeContext
    from ..store import Store

__all__ = ["SessionTimers", "NOT_RUN"]

NOT_RUN = "Not run: the runtime failed too often and the session is marked failed"

log = logging.getLogger("sessionactors.session")


class SessionTimers:
    """Arms and handles a session actor's wakeups; persists and stops it."""

    if TYPE_CHECKING:
        cfg: Config | None
        supervisor: Any
        outbox: Outbox | None
        store: Store | None
        runtime: Runtime | None
        started: bool
        session_id: str | None
        incarnation: int
        conns: dict[str, None]
        generation: int
        state: str
        queue: deque[dict[str, Any]]
        passivate_when_idle: bool
        armed_deadline: float | None
        samples: dict[str, Any]
        samples_flushed: float
        samples_armed: bool
        running: int | None
        crashed: bool
        crashes: deque[float]

        runtime_error: str | None
        runtime_ctx: RuntimeContext | None

        def send(self, target: Any, msg: Any) -> None: ...
        def wakeupAfter(self, timePeriod: float, payload: Any = None) -> None: ...
        def outbox_send(self, frame: dict[str, Any]) -> None: ...
        def _handle_outputs(self, outputs: list[Output], extra: list[str] | None = None) -> None: ...
        def _send_to(self, conns: list[str], payloads: list[dict[str, Any]]) -> None: ...
        def _emit(self, fields_list: list[dict[str, Any]]) -> list[dict[str, Any]]: ...
        def _on_snapshot_wakeup(self, token: int) -> None: ...
        def _archive_workspace_at_passivation(self) -> None: ...

    def _report_samples(self, force: bool = False) -> None:
        """Send latency samples at most every 0.25 s (a wakeup flushes the stragglers)."""
        if not (self.samples["append"] or self.samples["actions"]) or self.state == "pooled":
            return
        now = time.monotonic()
        if force or now - self.samples_flushed >= 0.25:
            self.outbox_send({"t": "metrics", **self.samples})
            self.samples = {"append": [], "actions": [], "stored": 0}
            self.samples_flushed = now
        elif not self.samples_armed:
            self.samples_armed = True
            self.wakeupAfter(0.3, payload="metrics")

    def _on_wakeup(self, payload: Any) -> None:
        if payload == "runtime":
            self.armed_deadline = None
            if self.runtime is not None and self.started:
                self._poll([])
        elif isinstance(payload, tuple) and payload[0] == "passivate":
            if payload[1] != self.generation or self.conns or self.state != "live":
                return  # stale: a connection attached since this timer was armed
            if (self.runtime is not None and self.runtime.busy) or self.queue:
                self.passivate_when_idle = True
            else:
                self._passivate()
        elif isinstance(payload, tuple) and payload[0] == "ws_snapshot":
            self._on_snapshot_wakeup(payload[1])  # workspace_sync.py

    def _arm_passivation(self) -> None:
        assert self.cfg is not None
        self.generation += 1
        self.wakeupAfter(self.cfg.close_delay, payload=("passivate", self.generation))

    def _arm_runtime_deadline(self) -> None:
        if self.runtime is None or not self.started:
            return
        deadline = self.runtime.next_deadline()
        if deadline is None:
            return
        if self.armed_deadline is not None and self.armed_deadline <= deadline + 0.001:
            return
        self.armed_deadline = deadline
        self.wakeupAfter(max(0.0, deadline - time.monotonic()), payload="runtime")

    # -- passivation and shutdown -------------------------------------------------
    def _persist_and_stop(self) -> None:
        assert self.store is not None and self.session_id is not None
        runtime_state: dict[str, Any] | None = None
        if self.runtime is not None:
            # A plugin's state() or stop() that raises is logged; the session still stops
            # (with the state it saved last time when state() failed).
            try:
                if self.started:
                    runtime_state = self.runtime.state()
            except Exception:
                log.exception("session %s: the runtime's state() raised", self.session_id)
            try:
                self.runtime.stop()
            except Exception:
                log.exception("session %s: the runtime's stop() raised", self.session_id)
        # The runtime is stopped: the files are quiescent; the lease is still ours (fenced).
        self._archive_workspace_at_passivation()
        fields: dict[str, Any] = {"state": "passivated", "last_active": time.time()}
        if self.started and runtime_state is not None:
            fields["runtime_state"] = runtime_state
        self.store.update_session(self.session_id, **fields)
        release = getattr(self.store, "release_lease", None)  # a shared store's (leases.py)
        if release is not None:
            release(self.session_id)  # after the last write: another node may take it at once
        self.started = False
        self._report_samples(force=True)
        if self.outbox is not None:
            self.outbox.close()

    def _passivate(self) -> None:
        log.info("passivating (pid %d)", os.getpid(), extra={"session_id": self.session_id})
        self._persist_and_stop()
        self.state = "passivated"
        self.send(self.supervisor, Passivated(self.session_id or "", self.incarnation))

    def _shutdown(self) -> None:
        if self.state == "live":
            try:
                self._persist_and_stop()
            except Exception:
                log.exception("session %s: error while shutting down", self.session_id)
            self.state = "passivated"
        if self.store is not None:
            self.store.close()

    # -- ownership (a shared store's lease: store/leases.py) ---------------------------
    def _claim(self, session_id: str) -> int:
        """Take the session's lease when the store has leases (LeaseLost when another node
        holds it), then the last stored id: read after the lease, so no other node can
        append behind our back."""
        assert self.store is not None
        acquire = getattr(self.store, "acquire_lease", None)
        if acquire is not None:
            acquire(session_id)
        return self.store.last_event_id(session_id)

    def _append(self, events: list[dict[str, Any]]) -> None:
        """Append durably; a write fenced by the lease stops this copy, then raises."""
        assert self.store is not None and self.session_id is not None
        try:
            self.store.append(self.session_id, events)
        except LeaseLost as exc:
            self._fenced(exc)
            raise

    def _fenced(self, exc: LeaseLost) -> None:
        """Another node owns the session now: stop this copy without writing anything (its
        record and lease are the new owner's); the connections are told to reconnect."""
        log.error("session %s: %s; stopping this copy", self.session_id, exc)
        why = "This session is now served by another node; reconnect"
        self._send_to(list(self.conns), [error_frame(why, 503)])
        self.queue.clear()
        self._stop_runtime()
        release = getattr(self.store, "release_lease", None)
        if release is not None:
            release(self.session_id)  # forgets the lost lease; writes nothing
        if self.outbox is not None:
            self.outbox.close()
        self.state = "passivated"
        self.send(self.supervisor, Passivated(self.session_id or "", self.incarnation))

    # -- a runtime that raised ----------------------------------------------------
    def _new_runtime(self) -> Runtime | None:
        """A new instance of the configured runtime, or None (and why) when its constructor raises."""
        assert self.cfg is not None and self.runtime_ctx is not None
        try:
            runtime, self.runtime_error = load_runtime(self.cfg.runtime)(self.runtime_ctx), None
            return runtime
        except Exception as exc:  # a plugin's bug (e.g. it assigns the read-only `busy`)
            log.exception("session %s: the runtime's constructor raised", self.session_id)
            self.runtime_error = f"runtime failed to start: {exc.__class__.__name__}"
            return None

    def _poll(self, ready: list[int]) -> None:
        """Let the runtime make progress; a runtime that raises is answered like one in ``begin``."""
        assert self.runtime is not None
        try:
            outputs = self.runtime.poll(ready)
        except Exception as exc:
            log.exception("session %s: runtime crashed in poll", self.session_id)
            self._runtime_crashed("poll", exc)
            return
        self._handle_outputs(outputs)

    def _runtime_crashed(self, where: str, exc: Exception) -> None:
        """The runtime raised: answer its action, then restart the runtime in place.

        Its state is unknown, so it is stopped and replaced by a new instance (constructed
        and started like at activation); the queued actions then run on the new one and no
        connection is detached, so nothing in flight is lost. After ``restart_intensity``
        crashes within ``restart_period`` the session gives up: the supervisor marks it
        failed, tells its connections and ends this actor.
        """
        assert self.cfg is not None
        why = f"runtime error in {where}: {exc.__class__.__name__}"
        events = [error_observation(why, self.running)] if self.running is not None else []
        self.running = None
        self._send_to(list(self.conns), [status_update("ERROR_RUNTIME", why, "error")])
        self._stop_runtime()
        if events:
            self._emit([e.fields for e in events])
        now = time.monotonic()
        while self.crashes and self.crashes[0] < now - self.cfg.restart_period:
            self.crashes.popleft()
        if len(self.crashes) >= self.cfg.restart_intensity:
            self._give_up()
            return
        self.crashes.append(now)
        self.runtime = self._new_runtime()
        outputs: list[Output] = []
        if self.runtime is not None:
            try:
                outputs = self.runtime.start()
            except Exception:
                log.exception("session %s: the restarted runtime's start() raised", self.session_id)
                self.runtime = None
        if self.runtime is None:
            self._give_up()
            return
        self.started = True
        restarted = status_update("RUNTIME_RESTARTED", f"The runtime was restarted after a {why}")
        self._send_to(list(self.conns), [restarted])
        self._handle_outputs(outputs)

    def _stop_runtime(self) -> None:
        if self.runtime is not None:
            try:
                self.runtime.stop()
            except Exception:
                log.exception("session %s: the runtime's stop() raised", self.session_id)
        self.started = False

    def _give_up(self) -> None:
        """Too many runtime crashes: answer what is queued, and let the supervisor fail us."""
        self.crashed = True
        if self.queue:
            self._emit([error_observation(NOT_RUN, queued["id"]).fields for queued in self.queue])
            self.queue.clear()
        why = "Session failed repeatedly; send initialize again to retry"
        self.send(self.supervisor, SessionFailed(self.session_id or "", self.incarnation, why))
