"""The supervisor actor: the registry of sessions, the router of INIT and disconnect.

It is the only top-level (``globalName``) actor; every session actor is its
child, so that Thespian tells it when one exits. It keeps, by session id (never
by ``ActorAddress``, which is unhashable): the session's state (live,
passivating, passivated, failed), its current actor and incarnation, its
connections, and the messages buffered while it is passivating (they are handed
to the next incarnation, as Akka's ``Passivate`` does). A session that exits
without having passivated is restarted (OTP: a *transient* child) unless it
crashed more than ``restart_intensity`` times within ``restart_period`` seconds.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import replace
from typing import Any

from thespian.actors import (  # type: ignore[import-untyped]
    Actor,
    ActorExitRequest,
    ChildActorExited,
    PoisonMessage,
    ThespianWatch,
    WakeupMessage,
    WatchMessage,
)

from .actorsystem import pid_alive
from .bridge import CallbackOutbox, LinkOutbox, Outbox
from .config import Config
from .errors import StoreError
from .messages import (
    Action,
    Activate,
    Activated,
    Attach,
    Attached,
    AttachFailed,
    Bounced,
    Configure,
    Configured,
    Detach,
    Disconnect,
    Frame,
    Init,
    Passivated,
    Query,
    QueryReply,
    Shutdown,
    ShutdownDone,
)
from .protocol import error_frame, status_update
from .queries import RETENTION, SessionQueries
from .registry import Entry
from .runtime import load_runtime
from .session import SessionActor
from .store import SessionRecord, Store, open_store

__all__ = ["SupervisorActor", "SUPERVISOR_NAME"]

log = logging.getLogger("sessionactors.supervisor")

SUPERVISOR_NAME = "sessionactors-supervisor"
_RECONNECT = "reconnect"
_REFILL = "refill"
_SHUTDOWN_TIMEOUT = "shutdown-timeout"
_CHECK = "check"
REFILL_QUIET = 0.05  # seconds without an activation before the pool is refilled
CHECK_PERIOD = 1.0


class SupervisorActor(SessionQueries, Actor):  # type: ignore[misc]
    """Routes connections to sessions, restarts crashed sessions, knows which exist."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg: Config | None = None
        self.configure_msg: Configure | None = None
        self.outbox: Outbox | None = None
        self.store: Store | None = None
        self.sessions: dict[str, Entry] = {}
        self.conn_session: dict[str, str] = {}
        # conn -> the session it had, while its INIT for another one is being answered
        self.moving: dict[str, str] = {}
        # new sessions whose records are not committed yet (see _create_batch)
        self.creating: list[tuple[Entry, SessionRecord]] = []
        # warm, configured, not yet activated session actors: (address, pid)
        self.pool: list[tuple[Any, int | None]] = []
        self.shutdown_waiter: Any = None
        self.stopping = False  # set by Shutdown: no new actors, no restarts
        self.reconnect_armed = False
        self.refill_armed = False
        self.last_activation = 0.0
        self.stats = {"created": 0, "passivations": 0, "rehydrations": 0, "restarts": 0}

    # -- Thespian entry point ---------------------------------------------------
    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        if isinstance(msg, WatchMessage):
            try:
                self._on_bridge()
            except Exception:
                log.exception("supervisor: error handling bridge input")
        elif isinstance(msg, Configure):
            self._configure(msg, sender)
        elif self.cfg is None:
            log.warning("supervisor: %r before Configure, ignored", type(msg).__name__)
        elif self.stopping and isinstance(msg, (Init, Action)):
            conn = msg.conn_id
            self._answer(conn, [error_frame("The server is shutting down", 503)])
        elif isinstance(msg, Init):
            self._on_init(msg)
        elif isinstance(msg, Disconnect):
            self._on_disconnect(msg.conn_id)
        elif isinstance(msg, Action):
            self._on_action(msg)
        elif isinstance(msg, Query):
            status, body = self._on_query(msg)
            self.send(sender, QueryReply(msg.req, status, body))
        elif isinstance(msg, Passivated):
            self._on_passivated(msg)
        elif isinstance(msg, Activated):
            entry = self.sessions.get(msg.session_id)
            if entry is not None and entry.incarnation == msg.incarnation:
                entry.pid = msg.pid
        elif isinstance(msg, Bounced):
            self._on_bounced(msg)
        elif isinstance(msg, Attached):
            entry = self.sessions.get(msg.session_id)
            if entry is not None:
                entry.attaching.pop(msg.conn_id, None)
            if self.moving.get(msg.conn_id) and self.conn_session.get(msg.conn_id) == msg.session_id:
                self._detach_from(msg.conn_id, self.moving.pop(msg.conn_id))
        elif isinstance(msg, AttachFailed):
            self._on_attach_failed(msg)
        elif isinstance(msg, ChildActorExited):
            self._on_child_exited(msg.childAddress)
        elif isinstance(msg, WakeupMessage):
            self._on_wakeup(msg.payload)
        elif isinstance(msg, PoisonMessage):
            self._on_poison(msg)
        elif isinstance(msg, Shutdown):
            self._on_shutdown(sender)
        elif isinstance(msg, ActorExitRequest):
            if self.store is not None:
                self.store.close()
        if self.creating:
            self._create_batch()
        return self._watch()

    def _create_batch(self) -> None:
        """Commit the records of the sessions created by this message (one bridge read may
        carry many INITs) in one transaction, then activate them: one fsync for a burst."""
        assert self.store is not None
        creating, self.creating = self.creating, []
        try:
            self.store.create_sessions([record for _, record in creating])
        except StoreError as exc:
            log.error("supervisor: could not store %d new session(s): %s", len(creating), exc)
            for entry, _ in creating:
                self._evict(entry, [error_frame("The session could not be created; try again", 503)])
                self.sessions.pop(entry.session_id, None)
            return
        for entry, _ in creating:
            if entry.buffered and not self.stopping:  # else every connection left already
                self._activate(entry, created=True)

    def _watch(self) -> Any:
        if isinstance(self.outbox, LinkOutbox) and self.outbox.link is not None:
            return ThespianWatch([self.outbox.link.fileno()])
        return None

    def _configure(self, msg: Configure, sender: Any) -> None:
        self.cfg = Config.from_json(msg.config_json)
        self.configure_msg = msg
        self.store = open_store(self.cfg.data_dir, fsync=self.cfg.fsync)
        load_runtime(self.cfg.runtime)  # cached before the session actors are forked from us
        reconciled = self.store.reconcile_live_sessions()  # type: ignore[attr-defined]
        if reconciled:
            log.warning("supervisor: %d session(s) were live when the daemon stopped", len(reconciled))
        if msg.bridge_path:
            self.outbox = LinkOutbox(
                msg.bridge_path, {"t": "hello", "role": "supervisor"}, on_lost=self._on_link_lost
            )
            if self.outbox.connect() is None:
                self._arm_reconnect()
        else:
            frames_to = msg.frames_to
            self.outbox = CallbackOutbox(lambda frame: self.send(frames_to, Frame(frame)))
        self._refill_pool(all_at_once=True)
        self._sweep_retention()
        self.wakeupAfter(CHECK_PERIOD, payload=_CHECK)
        self.send(sender, Configured(self.store.count_sessions()))

    # -- helpers ----------------------------------------------------------------
    def _answer(self, conn: str, payloads: list[dict[str, Any]]) -> None:
        if self.outbox is not None:
            self.outbox.send({"t": "emit", "to": [conn], "events": payloads})

    def _entry(self, session_id: str) -> Entry | None:
        entry = self.sessions.get(session_id)
        if entry is None:
            assert self.store is not None
            record = self.store.get_session(session_id)
            if record is None:
                return None
            entry = Entry(session_id, record.owner, record.token_version)
            entry.state = "failed" if record.state == "failed" else "passivated"
            self.sessions[session_id] = entry
        return entry

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
            self.wakeupAfter(delay, payload=_REFILL)

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

    def _deliver(self, entry: Entry, msg: Any) -> None:
        if entry.state == "live" and entry.pid is not None and not pid_alive(entry.pid):
            # Dead, and Thespian has not told us yet: what we sent it now would be lost.
            entry.buffered.append(msg)
            self._on_child_exited(entry.address)
        elif entry.state == "live":
            self.send(entry.address, msg)
        elif entry.state == "passivating":
            entry.buffered.append(msg)
        else:
            entry.buffered.append(msg)
            self._activate(entry)

    # -- routing ------------------------------------------------------------------
    def _on_init(self, msg: Init) -> None:
        assert self.cfg is not None and self.store is not None
        conn = msg.conn_id
        if msg.session_id is None:
            if msg.user_id is not None:
                live = sum(
                    1
                    for e in self.sessions.values()
                    if e.owner == msg.user_id and e.state in ("live", "passivating")
                ) + sum(1 for e, _ in self.creating if e.owner == msg.user_id)
                if live >= self.cfg.max_live_sessions_per_user:
                    self._answer(conn, [error_frame("Too many live sessions for this user", 429)])
                    return
            now = time.time()
            session_id = uuid.uuid4().hex
            record = SessionRecord(
                session_id=session_id,
                owner=msg.user_id,
                owner_login=msg.user_login,
                args=dict(msg.args),
                created_at=now,
                last_active=now,
                state="live",
            )
            self.stats["created"] += 1
            entry = Entry(session_id, msg.user_id)
            self.creating.append((entry, record))
            self.sessions[session_id] = entry
            created = True
        else:
            found = self._entry(msg.session_id)
            if found is None or found.deleting:
                self._answer(conn, [error_frame("Invalid token", 401)])
                return
            entry, created = found, False
            if msg.token_version < entry.token_version:  # issued before a revoke
                self._answer(conn, [error_frame("Invalid token", 401)])
                return
            if entry.owner is not None and entry.owner != msg.user_id:
                self._answer(conn, [error_frame("Forbidden", 403)])
                return
            if conn not in entry.conns and len(entry.conns) >= self.cfg.max_connections_per_session:
                self._answer(conn, [error_frame("Too many connections to this session", 429)])
                return
        self._move_conn(conn, entry.session_id)
        entry.conns[conn] = None
        attach = Attach(conn, msg.latest_event_id, entry.token_version)
        entry.attaching[conn] = attach
        if created:
            entry.buffered.append(attach)  # activated once its record is committed: _create_batch
        else:
            if entry.state == "failed":
                entry.restarts.clear()
            self._deliver(entry, attach)

    def _move_conn(self, conn: str, session_id: str) -> None:
        """Route ``conn`` to ``session_id``; it leaves its old session once the new one attached it."""
        old = self.moving.pop(conn, None) or self.conn_session.get(conn)
        if old is not None and old != session_id:
            self.moving[conn] = old
        self.conn_session[conn] = session_id

    def _drop_conn(self, conn: str) -> None:
        old = self.moving.pop(conn, None)
        if old is not None:
            self._detach_from(conn, old)
        session_id = self.conn_session.pop(conn, None)
        if session_id is not None:
            self._detach_from(conn, session_id)

    def _evict(self, entry: Entry, payloads: list[dict[str, Any]]) -> None:
        """Tell every connection of ``entry`` why, and detach them (a failed or deleted session)."""
        for conn in list(entry.conns):
            self._answer(conn, payloads)
            if self.conn_session.get(conn) == entry.session_id:
                old = self.moving.pop(conn, None)
                if old is not None:  # it was moving here: it stays where it was
                    self.conn_session[conn] = old
                    continue
                del self.conn_session[conn]
                if self.outbox is not None:
                    self.outbox.send({"t": "detach", "conn": conn})
            elif self.moving.get(conn) == entry.session_id:
                del self.moving[conn]
        entry.conns.clear()
        entry.attaching.clear()
        entry.buffered.clear()

    def _detach_from(self, conn: str, session_id: str) -> None:
        entry = self.sessions.get(session_id)
        if entry is None or conn not in entry.conns:
            return
        del entry.conns[conn]
        entry.attaching.pop(conn, None)
        if entry.state == "live":
            self.send(entry.address, Detach(conn))
        else:  # not live: forget its pending attach instead of waking the session for nothing
            entry.buffered = [m for m in entry.buffered if getattr(m, "conn_id", None) != conn]

    def _on_disconnect(self, conn: str) -> None:
        self._drop_conn(conn)

    def _on_action(self, msg: Action) -> None:
        entry = self.sessions.get(msg.session_id)
        if entry is None or msg.conn_id not in entry.conns:
            self._answer(msg.conn_id, [error_frame("Not attached to a session; send initialize first", 400)])
            return
        self._deliver(entry, msg)

    # -- lifecycle ----------------------------------------------------------------
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
        if entry is not None:
            self._deliver(entry, msg.message)

    def _on_attach_failed(self, msg: AttachFailed) -> None:
        entry = self.sessions.get(msg.session_id)
        if entry is not None:
            entry.attaching.pop(msg.conn_id, None)
        if entry is not None and self.conn_session.get(msg.conn_id) == msg.session_id:
            entry.conns.pop(msg.conn_id, None)
            old = self.moving.pop(msg.conn_id, None)
            if old is not None:  # the contract: it stays attached to the session it had
                self.conn_session[msg.conn_id] = old
            else:
                del self.conn_session[msg.conn_id]

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
                self._on_child_exited(address)
        for entry in list(self.sessions.values()):
            if entry.address is not None and entry.pid is not None and not pid_alive(entry.pid):
                log.warning(
                    "supervisor: session %s's actor (pid %d) died unreported", entry.session_id, entry.pid
                )
                self._on_child_exited(entry.address)

    def _restart(self, entry: Entry) -> None:
        assert self.cfg is not None and self.store is not None
        now = time.monotonic()
        while entry.restarts and entry.restarts[0] < now - self.cfg.restart_period:
            entry.restarts.popleft()
        if len(entry.restarts) >= self.cfg.restart_intensity:
            log.error("supervisor: session %s crashed too often; marked failed", entry.session_id)
            entry.state = "failed"
            self.store.update_session(entry.session_id, state="failed")
            why = "Session failed repeatedly; send initialize again to retry"
            self._evict(entry, [status_update("ERROR_RUNTIME", why, "error"), error_frame(why, 503)])
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

    def _on_poison(self, msg: PoisonMessage) -> None:
        original = msg.poisonMessage
        log.error("supervisor: message failed twice: %r\n%s", original, getattr(msg, "details", ""))
        conn = getattr(original, "conn_id", None)
        if conn is not None and isinstance(original, (Attach, Action)):
            self._answer(conn, [error_frame("Internal error while handling the request", 500)])

    def _on_wakeup(self, payload: Any) -> None:
        if payload == _RECONNECT:
            self.reconnect_armed = False
            if isinstance(self.outbox, LinkOutbox) and self.outbox.connect() is None:
                self._arm_reconnect()
        elif payload == _REFILL:
            self._refill_pool()
        elif payload == RETENTION:
            self._sweep_retention()
        elif payload == _CHECK:
            self._check_alive()
            self.wakeupAfter(CHECK_PERIOD, payload=_CHECK)
        elif payload == _SHUTDOWN_TIMEOUT and self.shutdown_waiter is not None:
            log.error("supervisor: sessions did not all stop in time")
            self._finish_shutdown()

    def _arm_reconnect(self) -> None:
        if not self.reconnect_armed:
            self.reconnect_armed = True
            self.wakeupAfter(0.1, payload=_RECONNECT)

    def _on_link_lost(self) -> None:
        """The gateway is gone (EOF, or a failed send): its connections went with it."""
        log.warning("supervisor: gateway link lost; detaching every connection")
        for conn in list(self.conn_session):
            self._drop_conn(conn)
        self._arm_reconnect()

    def _on_bridge(self) -> None:
        assert isinstance(self.outbox, LinkOutbox) and self.outbox.link is not None
        frames = self.outbox.link.receive()
        if frames is None:
            self.outbox.link = None
            self._on_link_lost()
            return
        for frame in frames:
            kind = frame.get("t")
            if kind in ("init", "action") and self.stopping:
                self._answer(frame["conn"], [error_frame("The server is shutting down", 503)])
            elif kind == "init":
                self._on_init(
                    Init(
                        frame["conn"],
                        frame.get("session_id"),
                        frame.get("user_id"),
                        frame.get("user_login"),
                        frame.get("args") or {},
                        frame.get("latest_event_id", -1),
                        int(frame.get("token_version") or 0),
                    )
                )
            elif kind == "disconnect":
                self._on_disconnect(frame["conn"])
            elif kind == "action":
                self._on_action(Action(frame["conn"], frame["session_id"], frame["action"]))
            elif kind == "query" and frame.get("op") in ("list_files", "read_file"):
                self._on_file_query(frame)
            elif kind == "query":
                status, body = self._on_query(
                    Query(frame["op"], frame.get("session_id"), frame.get("req", 0))
                )
                self.outbox.send({"t": "reply", "req": frame.get("req", 0), "status": status, "body": body})

    # -- shutdown -----------------------------------------------------------------
    def _on_shutdown(self, sender: Any) -> None:
        self.shutdown_waiter = sender
        self.stopping = True
        for entry in self.sessions.values():
            if entry.address is not None:
                self.send(entry.address, ActorExitRequest())
        for address, _ in self.pool:
            self.send(address, ActorExitRequest())
        self.wakeupAfter(20.0, payload=_SHUTDOWN_TIMEOUT)
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
