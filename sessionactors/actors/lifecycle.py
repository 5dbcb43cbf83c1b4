"""How the supervisor keeps session actors: the warm pool, activation, passivation hand-off,
exits (reported or not), restarts with OTP intensity, and shutdown.

A mixin of ``SupervisorActor`` (like ``queries.py``), kept apart so that the routing in
``supervisor.py`` reads on its own. The attributes and methods it uses are the
supervisor's, or Thespian's ``Actor``'s (declared below for the type checker).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from thespian.actors import ActorExitRequest, PoisonMessage  # type: ignore[import-untyped]

from ..actorsystem import pid_alive
from ..messages import (
    Action,
    Activate,
    ActivationFailed,
    Attach,
    Bounced,
    Configure,
    Passivated,
    SessionFailed,
    ShutdownDone,
)
from ..protocol import error_frame, status_update
from .registry import Entry
from .session import SessionActor

if TYPE_CHECKING:
    from ..bridge import Outbox
    from ..config import Config
    from ..store import Store

__all__ = ["SessionLifecycle", "REFILL", "CHECK", "SHUTDOWN_TIMEOUT", "CHECK_PERIOD", "REFILL_QUIET"]

log = logging.getLogger("sessionactors.supervisor")

REFILL = "refill"
CHECK = "check"
SHUTDOWN_TIMEOUT = "shutdown-timeout"
REFILL_QUIET = 0.05  # seconds without an activation before the pool is refilled
CHECK_PERIOD = 1.0  # seconds between two liveness checks of the session actors


class SessionLifecycle:
    """Starts, recycles, restarts and stops the session actors of a supervisor."""

    if TYPE_CHECKING:
        cfg: Config | None
        store: Store | None
        outbox: Outbox | None
        configure_msg: Configure | None
        sessions: dict[str, Entry]
        pool: list[tuple[Any, int | None]]
        stats: dict[str, int]
        stopping: bool
        refill_armed: bool
        last_activation: float
        shutdown_waiter: Any

        def createActor(self, actorClass: Any) -> Any: ...
        def send(self, target: Any, msg: Any) -> None: ...
        def wakeupAfter(self, timePeriod: float, payload: Any = None) -> None: ...
        def _evict(self, entry: Entry, payloads: list[dict[str, Any]], live: bool = False) -> None: ...
        def _deliver(self, entry: Entry, msg: Any) -> None: ...
        def _delete_now(self, entry: Entry) -> None: ...
        def _answer(self, conn_id: str, payloads: list[dict[str, Any]]) -> None: ...
        def _live_elsewhere(self, details: str) -> str: ...

    # -- failures: a message that failed twice, an activation that could not start ------
    def _on_poison(self, msg: PoisonMessage) -> None:
        original = msg.poisonMessage
        log.error("supervisor: message failed twice: %r\n%s", original, getattr(msg, "details", ""))
        conn = getattr(original, "conn_id", None)
        if conn is not None and isinstance(original, (Attach, Action)):
            self._answer(conn, [error_frame("Internal error while handling the request", 500)])
        elif isinstance(original, Activate):
            details = str(getattr(msg, "details", ""))
            if "LeaseLost" in details:  # Thespian passes the traceback text only: another node owns it
                self._activation_failed(
                    original.session_id, original.incarnation, self._live_elsewhere(details)
                )
            else:
                self._activation_failed(original.session_id, original.incarnation)

    def _on_activation_failed(self, msg: ActivationFailed) -> None:
        """The session's stored events cannot be read, or another node owns it: its
        connections are told why."""
        if msg.lease_lost:  # another node holds it: where to go, and that it is temporary
            self._activation_failed(msg.session_id, msg.incarnation, self._live_elsewhere(msg.why))
        else:
            self._activation_failed(msg.session_id, msg.incarnation, msg.why, 500)

    def _activation_failed(
        self,
        session_id: str,
        incarnation: int,
        why: str = "The session could not be started; try again later",
        code: int = 503,
    ) -> None:
        """The session actor could not activate: answer every connection waiting on it, and
        end that actor (the session is passivated; the next INIT tries again)."""
        entry = self.sessions.get(session_id)
        if entry is None or entry.incarnation != incarnation or entry.state != "live":
            return
        self._evict(entry, [status_update("ERROR_RUNTIME", why, "error"), error_frame(why, code)])
        entry.state = "passivating"
        self.send(entry.address, ActorExitRequest())

    def _spawn(self) -> tuple[Any, int | None]:
        assert self.configure_msg is not None
        address = self.createActor(SessionActor)
        self.send(address, self.configure_msg)
        return address, self._child_pid(address)

    def _child_pid(self, address: Any) -> int | None:
        """The pid of a child just created (Thespian 4.0.1 keeps its multiprocessing.Process).

        Known from the start, it lets the liveness check find a pooled or newly activated
        actor that died without Thespian telling us (see ``_check_alive``).
        """
        for child in reversed(getattr(getattr(self, "_myRef", None), "_child_procs", None) or []):
            if child.childAddr == address:
                return getattr(child.childProc, "pid", None)
        return None

    def _refill_pool(self, all_at_once: bool = False) -> None:
        """Top the pool up: one fork per call, and only once activations pause.

        A fork (and the new process's start) costs more CPU than activating a pooled
        actor; during a burst of INITs, forking would slow the very activations the pool
        is there to speed up, so the pool is spent first and refilled after.
        """
        assert self.cfg is not None
        if not all_at_once:
            self.refill_armed = False
            quiet = time.monotonic() - self.last_activation
            if quiet < REFILL_QUIET:
                self._arm_refill(REFILL_QUIET - quiet)
                return
        while len(self.pool) < self.cfg.pool_size and not self.stopping:
            self.pool.append(self._spawn())
            if not all_at_once:
                if len(self.pool) < self.cfg.pool_size:
                    self._arm_refill(0.0)
                return

    def _arm_refill(self, delay: float) -> None:
        if not self.refill_armed:
            self.refill_armed = True
            self.wakeupAfter(delay, payload=REFILL)

    def _activate(self, entry: Entry, created: bool = False, resume: tuple[str, ...] = ()) -> None:
        """Start a new incarnation of ``entry`` and hand it the buffered messages."""
        self.last_activation = time.monotonic()
        if self.pool:
            entry.address, entry.pid = self.pool.pop(0)
            self._arm_refill(REFILL_QUIET)
        else:
            entry.address, entry.pid = self._spawn()
        entry.incarnation += 1
        if not created and not resume:
            self.stats["rehydrations"] += 1
        entry.state = "live"
        buffered, entry.buffered = entry.buffered, []
        activate = Activate(
            entry.session_id, entry.incarnation, created, resume, entry.pid is None, tuple(buffered)
        )
        self.send(entry.address, activate)

    def _on_passivated(self, msg: Passivated) -> None:
        entry = self.sessions.get(msg.session_id)
        if entry is None or entry.incarnation != msg.incarnation or entry.state != "live":
            return
        self.stats["passivations"] += 1
        assert self.cfg is not None
        if len(self.pool) < self.cfg.pool_size and not self.stopping:
            # Recycle the process: it is clean (runtime stopped, record saved) and activating a
            # pooled actor costs one message where a new one costs a fork. Messages we sent it
            # before this point reach it first (per-pair FIFO) and are bounced back to us.
            self.pool.append((entry.address, entry.pid))
            entry.address, entry.pid, entry.state = None, None, "passivated"
            if entry.buffered:
                self._activate(entry)
            return
        entry.state = "passivating"
        self.send(entry.address, ActorExitRequest())

    def _on_bounced(self, msg: Bounced) -> None:
        entry = self.sessions.get(msg.session_id)
        if entry is None:
            return
        bounced = msg.message
        if isinstance(bounced, Attach) and entry.attaching.get(bounced.conn_id) != bounced:
            return  # answered meanwhile by a re-sent copy, or its connection left
        if isinstance(bounced, Action) and bounced.conn_id not in entry.conns:
            return  # its connection left the session
        self._deliver(entry, bounced)

    def _find_by_address(self, address: Any) -> Entry | None:
        for entry in self.sessions.values():
            if entry.address is not None and entry.address == address:
                return entry
        return None

    def _on_child_exited(self, address: Any) -> None:
        assert self.cfg is not None and self.store is not None
        pooled = len(self.pool)
        self.pool = [p for p in self.pool if p[0] != address]
        if len(self.pool) < pooled and not self.stopping:  # a pooled actor died: replace it
            self._arm_refill(0.0)
        entry = self._find_by_address(address)
        if entry is None:  # a pooled actor, or a duplicate notification: nothing to do
            self._maybe_finish_shutdown()
            return
        entry.address = None
        entry.pid = None
        if entry.deleting:
            self._delete_now(entry)
        elif entry.state == "passivating" or self.stopping:
            entry.state = "passivated"
            if not self.stopping:
                # An Attach the exiting actor neither answered nor bounced was lost on the way
                # (overtaken by our exit request): send it again, or its INIT waits forever.
                held = {m.conn_id for m in entry.buffered if isinstance(m, Attach)}
                entry.buffered = [a for c, a in entry.attaching.items() if c not in held] + entry.buffered
            if entry.buffered and not self.stopping:
                self._activate(entry)
        elif entry.state == "live":
            self._restart(entry)
        self._maybe_finish_shutdown()

    def _check_alive(self) -> None:
        """Handle the exits Thespian did not report.

        Thespian 4.0.1 can lose a ``ChildActorExited``: handling one child's exit, its
        ``_childExited`` forgets every other dead child before its SIGCHLD scan reports
        them (the soak tests lost 2-10 of 20 rapid kills). A session never restarted, or a
        dead pooled actor activated, would hang every INIT sent to it.
        """
        for address, pid in list(self.pool):
            if pid is not None and not pid_alive(pid):
                self._exited_unreported(address)
        for entry in list(self.sessions.values()):
            if entry.address is not None and entry.pid is not None and not pid_alive(entry.pid):
                log.warning(
                    "supervisor: session %s's actor (pid %d) died unreported", entry.session_id, entry.pid
                )
                self._exited_unreported(entry.address)

    def _exited_unreported(self, address: Any) -> None:
        """A child found dead by its pid: tell Thespian too, then handle it as an exit.

        Thespian's own list of our children still holds it, and an actor asked to exit
        waits for that list to empty: the admin's shutdown then hung until its 15 s timeout
        (seen after the soak). ``_handleChildExited`` is what a ``ChildActorExited`` runs in
        Thespian 4.0.1; it ignores an address it no longer knows, so a late real
        notification stays harmless.
        """
        manager = getattr(self, "_myRef", None)
        forget = getattr(manager, "_handleChildExited", None)
        if forget is not None:
            try:
                forget(address)
            except Exception:  # Thespian internals: never let them take the supervisor down
                log.exception("supervisor: Thespian did not take the unreported exit")
        self._on_child_exited(address)

    def _restart(self, entry: Entry) -> None:
        assert self.cfg is not None and self.store is not None
        now = time.monotonic()
        while entry.restarts and entry.restarts[0] < now - self.cfg.restart_period:
            entry.restarts.popleft()
        if len(entry.restarts) >= self.cfg.restart_intensity:
            self._fail(entry, "Session failed repeatedly; send initialize again to retry")
            return
        entry.restarts.append(now)
        self.stats["restarts"] += 1
        log.warning("supervisor: session %s exited unexpectedly; restarting", entry.session_id)
        # Connections already attached resume from where the gateway says they are; an
        # Attach the dead actor had not answered is sent again (its INIT still waits).
        entry.attaching = {c: replace(a, restarted=True) for c, a in entry.attaching.items()}
        pending = list(entry.attaching.values())
        entry.buffered = pending + [
            m for m in entry.buffered if not (isinstance(m, Attach) and m.conn_id in entry.attaching)
        ]
        self._activate(entry, resume=tuple(c for c in entry.conns if c not in entry.attaching))

    def _fail(self, entry: Entry, why: str) -> None:
        """Mark ``entry`` failed (stored) and tell every connection why; the next INIT retries."""
        assert self.store is not None
        log.error("supervisor: session %s crashed too often; marked failed", entry.session_id)
        entry.state = "failed"
        self.store.update_session(entry.session_id, state="failed")
        self._evict(entry, [status_update("ERROR_RUNTIME", why, "error"), error_frame(why, 503)])

    def _on_session_failed(self, msg: SessionFailed) -> None:
        """A live session gave up on its runtime (it crashed too often): fail it, end its actor."""
        entry = self.sessions.get(msg.session_id)
        if entry is None or entry.incarnation != msg.incarnation or entry.state != "live":
            return
        self._fail(entry, msg.why)
        self.send(entry.address, ActorExitRequest())

    def _on_shutdown(self, sender: Any) -> None:
        self.shutdown_waiter = sender
        self.stopping = True
        for entry in self.sessions.values():
            if entry.address is not None:
                self.send(entry.address, ActorExitRequest())
        for address, _ in self.pool:
            self.send(address, ActorExitRequest())
        self.wakeupAfter(20.0, payload=SHUTDOWN_TIMEOUT)
        self._maybe_finish_shutdown()

    def _maybe_finish_shutdown(self) -> None:
        if self.shutdown_waiter is None:
            return
        if self.pool or any(e.address is not None for e in self.sessions.values()):
            return
        self._finish_shutdown()

    def _finish_shutdown(self) -> None:
        waiter, self.shutdown_waiter = self.shutdown_waiter, None
        if self.outbox is not None:
            self.outbox.close()
        self.send(waiter, ShutdownDone(len(self.sessions)))
