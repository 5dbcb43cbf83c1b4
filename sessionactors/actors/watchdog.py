"""Liveness with deadlines: the daemon pings the supervisor, the supervisor pings its sessions.

A process that is alive but does not answer (frozen with SIGSTOP, stuck in a call, paging)
is not seen by the pid checks of ``lifecycle.py``. So:

- the supervisor sends every live session a ``SessionPing`` every third of
  ``session_ping_timeout``; a session that has not answered for ``session_ping_timeout``
  seconds is *not responding*: its connections get the status update
  ``STATUS$SESSION_NOT_RESPONDING`` (type ``error``), and ``STATUS$SESSION_RESPONDING``
  once it answers again. The session is not restarted for it: it may only be slow, and a
  restart of a frozen process would leave two actors writing one event log.
- the daemon asks the supervisor ``SupervisorPing`` (``recovery.py``); the ``SupervisorPong``
  carries the supervisor's pid, which the daemon watches between pings.

``SessionWatchdog`` is a mixin of ``SupervisorActor``; its messages are in ``messages.py``.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from ..messages import SessionPing, SessionPong, SupervisorPong
from ..protocol import status_update

if TYPE_CHECKING:
    from ..bridge import Outbox
    from ..config import Config
    from .registry import Entry

__all__ = [
    "SessionWatchdog",
    "NOT_RESPONDING",
    "RESPONDING",
]

log = logging.getLogger("sessionactors.supervisor")

NOT_RESPONDING = "SESSION_NOT_RESPONDING"
RESPONDING = "SESSION_RESPONDING"


class SessionWatchdog:
    """Pings the live sessions and tells their connections when one stops answering."""

    if TYPE_CHECKING:
        cfg: Config | None
        outbox: Outbox | None
        sessions: dict[str, Entry]

        def send(self, target: Any, msg: Any) -> None: ...

    # session id -> (incarnation, when it last answered, or was activated)
    _answered: dict[str, tuple[int, float]]
    _silent: set[str]  # session ids told "not responding"
    _last_ping = 0.0
    _ping_seq = itertools.count(1)

    def _pong(self) -> SupervisorPong:
        return SupervisorPong(os.getpid(), len(self.sessions))

    def _ping_sessions(self) -> None:
        """Called at every liveness check: ping when due, and judge who missed the deadline."""
        assert self.cfg is not None
        if not hasattr(self, "_answered"):
            self._answered, self._silent = {}, set()
        timeout = self.cfg.session_ping_timeout
        now = time.monotonic()
        due = now - self._last_ping >= timeout / 3
        if due:
            self._last_ping = now
        seq = next(self._ping_seq)
        live = set()
        for entry in self.sessions.values():
            if entry.state != "live" or entry.address is None:
                continue
            live.add(entry.session_id)
            seen = self._answered.get(entry.session_id)
            if seen is None or seen[0] != entry.incarnation:
                self._answered[entry.session_id] = seen = (entry.incarnation, now)
                self._silent.discard(entry.session_id)
            if due:
                self.send(entry.address, SessionPing(seq))
            if now - seen[1] > timeout and entry.session_id not in self._silent:
                self._silent.add(entry.session_id)
                log.warning(
                    "supervisor: session %s (pid %s) has not answered for %.0f s",
                    entry.session_id,
                    entry.pid,
                    now - seen[1],
                )
                why = "The session is not responding; actions wait until it does"
                self._tell(entry, status_update(NOT_RESPONDING, why, "error"))
        for gone in set(self._answered) - live:
            del self._answered[gone]
            self._silent.discard(gone)

    def _on_session_pong(self, msg: SessionPong) -> None:
        entry = self.sessions.get(msg.session_id)
        if entry is None or entry.incarnation != msg.incarnation or not hasattr(self, "_answered"):
            return
        self._answered[msg.session_id] = (msg.incarnation, time.monotonic())
        if msg.session_id in self._silent:
            self._silent.discard(msg.session_id)
            log.warning("supervisor: session %s answers again", msg.session_id)
            self._tell(entry, status_update(RESPONDING, "The session is responding again"))

    def _tell(self, entry: Entry, payload: dict[str, Any]) -> None:
        if self.outbox is not None and entry.conns:
            self.outbox.send({"t": "emit", "to": list(entry.conns), "events": [payload]})
