"""The daemon's watch on the supervisor actor, and its recovery when the supervisor dies.

Thespian does not restart a top-level actor: a supervisor killed (SIGKILL, the OOM killer)
left a daemon whose gateway answered 503 forever. So the launcher watches it. Between two
loop ticks it checks the supervisor's pid (learnt from ``SupervisorPong``); every
``PING_PERIOD`` it asks ``SupervisorPing`` with a deadline. A dead pid, or no answer for
``supervisor_timeout`` seconds (then the supervisor is killed), starts the recovery:

1. the gateway is stopped: its connections were routed by the dead supervisor; every tab
   reconnects (Socket.IO clients do) and re-INITs with its token and ``latest_event_id``;
2. the orphaned session actors (the roots of the actor process group whose parent is gone)
   get SIGTERM, which Thespian turns into ``ActorExitRequest``: each persists its record and
   stops its runtime, as at a daemon stop (SIGKILL after ``ORPHAN_GRACE`` s; its stored
   events are safe either way, every event is stored before it is sent);
3. a new supervisor is created under the same global name and configured (it reconciles
   the records those actors left ``live``), then a new gateway; the next INIT of each
   session rehydrates it from the store with the same id and events.

Restarts follow the sessions' OTP intensity (``restart_intensity`` within
``restart_period``); past it, or when a step fails, the daemon exits non-zero with the
reason on one line, for a service manager to restart it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

from .actorsystem import end_processes, group_members, pid_alive, proc_stat
from .errors import DaemonError

if TYPE_CHECKING:
    from .config import Config

__all__ = ["SupervisorRecovery", "PING_PERIOD", "ORPHAN_GRACE", "orphaned_actors"]

log = logging.getLogger("sessionactors.daemon")

PING_PERIOD = 1.0  # seconds between two pings of the supervisor
PING_DEADLINE = 2.0  # seconds one ping may take
ORPHAN_GRACE = 15.0  # seconds an orphaned session actor has to persist and exit
# A silent supervisor that is not stopped may be overloaded, not deaf; past this many times
# ``supervisor_timeout`` of silence it is restarted all the same (a deadlock, a livelock).
BUSY_LIMIT = 10


def orphaned_actors(pgid: int, keep: set[int]) -> list[int]:
    """Members of the actor process group whose parent is not in it (and not in ``keep``):
    the session actors of a dead supervisor (their runtimes' processes hang below them)."""
    members = set(group_members(pgid)) if pgid > 1 else set()
    found = []
    for pid in members - keep:
        try:
            parent = int(proc_stat(pid)[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent not in members:
            found.append(pid)
    return sorted(found)


class SupervisorRecovery:
    """Mixin of ``Daemon``: pings the supervisor and brings a dead one back."""

    if TYPE_CHECKING:
        cfg: Config
        asys: Any
        supervisor: Any
        gateway: subprocess.Popen[bytes] | None
        actor_pgid: int
        admin_pid: int
        stop_event: Any

        def _start_supervisor(self, dead: Any = None) -> None: ...
        def _start_gateway(self) -> None: ...
        def _wait_healthy(self) -> None: ...
        def _write_state(self) -> None: ...

    supervisor_pid = 0
    _answered_at = 0.0
    _pinged_at = 0.0
    _busy_logged = False
    _supervisor_restarts: list[float]

    def ask_supervisor(self, msg: Any, kind: type, timeout: float) -> Any:
        """Ask the supervisor for an answer of type ``kind`` within ``timeout``.

        Skipped on the way: a late ``SupervisorPong`` (a ping that timed out), and the
        ``None`` Thespian returns at once when an earlier send to a dead supervisor fails.
        """
        from .messages import SupervisorPong

        deadline = time.monotonic() + timeout
        reply = self.asys.ask(self.supervisor, msg, timeout)
        while reply is None or (isinstance(reply, SupervisorPong) and kind is not SupervisorPong):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            reply = self.asys.listen(left)
        return reply

    def ping_supervisor(self) -> bool:
        """One ping with a deadline; True when answered (the pid is then known)."""
        from .messages import SupervisorPing, SupervisorPong

        self._pinged_at = time.monotonic()
        try:
            reply = self.asys.ask(self.supervisor, SupervisorPing(), PING_DEADLINE)
        except Exception:  # the actor system's handle: never let it end the watch
            log.exception("pinging the supervisor failed")
            return False
        if isinstance(reply, SupervisorPong):
            self.supervisor_pid = reply.pid
            self._answered_at = time.monotonic()
            self._busy_logged = False
            return True
        return False

    def watch_supervisor(self) -> None:
        """Called at every tick of the daemon's loop; recovers when the supervisor is gone."""
        if self.supervisor_pid and not pid_alive(self.supervisor_pid):
            self.recover_supervisor(f"(pid {self.supervisor_pid}) died")
            return
        now = time.monotonic()
        if now - self._pinged_at < PING_PERIOD:
            return
        if self.ping_supervisor():
            return
        silent = time.monotonic() - self._answered_at
        if silent > self.cfg.supervisor_timeout and not self._busy(silent):
            if self.supervisor_pid and pid_alive(self.supervisor_pid):
                os.kill(self.supervisor_pid, signal.SIGKILL)  # alive but deaf: end it first
            self.recover_supervisor(f"(pid {self.supervisor_pid}) did not answer for {silent:.0f} s")

    def _busy(self, silent: float) -> bool:
        """Whether a supervisor that has not answered for ``silent`` s may still come back.

        Killing a supervisor ends every live session, so silence alone is not enough: at
        1,000 sessions (bench run H) the supervisor went unanswering for over 60 s, part of it
        with its CPU time standing still (blocked on its peers' sockets), and still worked
        when left alone. A silent supervisor counts as deaf only when it is stopped (SIGSTOP:
        state ``T``), or when it has been silent for ``BUSY_LIMIT`` times
        ``supervisor_timeout`` (a deadlock or a livelock). A dead pid is handled at once, apart.
        """
        try:
            fields = proc_stat(self.supervisor_pid) if self.supervisor_pid else None
        except OSError:
            fields = None
        if not fields or fields[0] in "Tt" or silent > BUSY_LIMIT * self.cfg.supervisor_timeout:
            return False
        if not self._busy_logged:
            log.warning("the supervisor has not answered for %.0f s; it is not stopped: waiting", silent)
            self._busy_logged = True
        return True

    def recover_supervisor(self, why: str) -> None:
        """Stop the gateway and the orphaned sessions, start a new supervisor and gateway."""
        old_pid, started = self.supervisor_pid, time.monotonic()
        log.error("the supervisor actor %s; restarting it (every client reconnects)", why)
        self._stop_gateway_now()
        orphans = orphaned_actors(self.actor_pgid, {self.admin_pid, old_pid})
        if orphans:
            log.warning("ending %d orphaned session actor(s) cleanly: pids %s", len(orphans), orphans)
            end_processes(orphans, grace=ORPHAN_GRACE)
        period, intensity = self.cfg.restart_period, self.cfg.restart_intensity
        restarts = [t for t in getattr(self, "_supervisor_restarts", []) if t > started - period]
        if len(restarts) >= intensity:
            self.supervisor = None  # dead: stop() must not wait for its answers
            raise DaemonError(
                f"the supervisor actor died after {len(restarts)} restart(s) within {period:g} s"
                f" (restart_intensity {intensity}); giving up: restart the daemon"
            )
        self._supervisor_restarts = [*restarts, started]
        dead, self.supervisor, self.supervisor_pid = self.supervisor, None, 0
        try:
            self._start_supervisor(dead)
        except Exception as exc:
            raise DaemonError(f"the supervisor actor could not be restarted: {exc}") from None
        self._start_gateway()
        self._wait_healthy()
        self._write_state()
        log.warning(
            "supervisor restarted (pid %d, was %d) in %.1f s; %d orphaned session actor(s) passivated",
            self.supervisor_pid,
            old_pid,
            time.monotonic() - started,
            len(orphans),
        )

    def _stop_gateway_now(self) -> None:
        gateway, self.gateway = self.gateway, None
        if gateway is None or gateway.poll() is not None:
            return
        gateway.terminate()
        try:
            gateway.wait(10)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()

    def supervisor_alive(self) -> bool:
        """Whether asking the supervisor can be answered (else stop() does not wait for it)."""
        return self.supervisor is not None and (not self.supervisor_pid or pid_alive(self.supervisor_pid))
