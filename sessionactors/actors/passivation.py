"""When a session actor stops: its wakeup timers (passivation after ``close_delay``, the
runtime's deadlines, the metrics flush), passivation itself and shutdown.

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

from ..messages import Passivated

if TYPE_CHECKING:
    from collections import deque

    from ..bridge import Outbox
    from ..config import Config
    from ..runtimes.base import Output, Runtime
    from ..store import Store

__all__ = ["SessionTimers"]

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

        def send(self, target: Any, msg: Any) -> None: ...
        def wakeupAfter(self, timePeriod: float, payload: Any = None) -> None: ...
        def outbox_send(self, frame: dict[str, Any]) -> None: ...
        def _handle_outputs(self, outputs: list[Output], extra: list[str] | None = None) -> None: ...

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
                self._handle_outputs(self.runtime.poll([]))
        elif isinstance(payload, tuple) and payload[0] == "passivate":
            if payload[1] != self.generation or self.conns or self.state != "live":
                return  # stale: a connection attached since this timer was armed
            assert self.runtime is not None
            if self.runtime.busy or self.queue:
                self.passivate_when_idle = True
            else:
                self._passivate()

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
        runtime_state: dict[str, Any] = {}
        if self.runtime is not None:
            try:
                if self.started:
                    runtime_state = self.runtime.state()
            finally:
                self.runtime.stop()
        fields: dict[str, Any] = {"state": "passivated", "last_active": time.time()}
        if self.started:
            fields["runtime_state"] = runtime_state
        self.store.update_session(self.session_id, **fields)
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
