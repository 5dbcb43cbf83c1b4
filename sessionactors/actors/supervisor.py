"""The supervisor actor: the registry of sessions, the router of INIT and disconnect.

It is the only top-level (``globalName``) actor; every session actor is its
child, so that Thespian tells it when one exits. It keeps, by session id (never
by ``ActorAddress``, which is unhashable): the session's state (live,
passivating, passivated, failed), its current actor and incarnation, its
connections, and the messages buffered while it is passivating (they are handed
to the next incarnation, as Akka's ``Passivate`` does). A session that exits
without having passivated is restarted (OTP: a *transient* child) unless it
crashed more than ``restart_intensity`` times within ``restart_period`` seconds.

This module routes; the pool, activation, exits, restarts and shutdown are in
``lifecycle.py``, the answers to queries in ``queries.py`` and its end of the bridge
to the gateway in ``gatewaylink.py`` (mixins of the actor).
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
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

from ..actorsystem import pid_alive
from ..bridge import CallbackOutbox, LinkOutbox, Outbox
from ..cluster.member import ClusterMember
from ..config import Config
from ..errors import StoreError
from ..messages import (
    Action,
    Activated,
    ActivationFailed,
    Attach,
    Attached,
    AttachFailed,
    Bounced,
    Configure,
    Configured,
    Detach,
    Disconnect,
    Frame,
    GatewayStopping,
    Init,
    Passivated,
    Query,
    QueryReply,
    SessionFailed,
    SessionPong,
    Shutdown,
    SupervisorPing,
)
from ..protocol import error_frame
from ..runtimes.base import load_runtime
from ..store import SessionRecord, Store, open_store
from .gatewaylink import RECONNECT, GatewayLink
from .lifecycle import CHECK, CHECK_PERIOD, REFILL, SHUTDOWN_TIMEOUT, SessionLifecycle
from .queries import RETENTION, SessionQueries
from .registry import Entry
from .watchdog import SessionWatchdog

__all__ = ["SupervisorActor", "SUPERVISOR_NAME"]

log = logging.getLogger("sessionactors.supervisor")

SUPERVISOR_NAME = "sessionactors-supervisor"
AT_CAPACITY = "The server is at capacity; try again later"


class SupervisorActor(GatewayLink, SessionLifecycle, SessionQueries, SessionWatchdog, ClusterMember, Actor):  # type: ignore[misc]
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
        self.route_seq = itertools.count(1)  # numbers Attach and Detach (see Detach.seq)
        # new sessions whose records are not committed yet (see _create_batch)
        self.creating: list[tuple[Entry, SessionRecord]] = []
        # warm, configured, not yet activated session actors: (address, pid)
        self.pool: list[tuple[Any, int | None]] = []
        self.shutdown_waiter: Any = None
        self.stopping = False  # set by Shutdown: no new actors, no restarts
        self.gateway_stopping = False  # set by GatewayStopping: its link's loss is expected
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
        elif isinstance(msg, SupervisorPing):  # the daemon's watchdog (recovery.py)
            self.send(sender, self._pong())
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
        elif isinstance(msg, SessionPong):
            self._on_session_pong(msg)
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
        elif isinstance(msg, SessionFailed):
            self._on_session_failed(msg)
        elif isinstance(msg, ActivationFailed):
            self._on_activation_failed(msg)
        elif isinstance(msg, GatewayStopping):
            self.gateway_stopping = True
            self.send(sender, msg)
        elif isinstance(msg, ActorExitRequest):
            self._leave_cluster()
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
        self.store = open_store(self.cfg.data_dir, **self.cfg.store_options)
        load_runtime(self.cfg.runtime)  # cached before the session actors are forked from us
        reconciled = self.store.reconcile_live_sessions()
        if reconciled:
            log.warning("supervisor: %d session(s) were live when the daemon stopped", len(reconciled))
        self._join_cluster()  # the node registry (cluster/nodes.py), with store_url only
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
        self.wakeupAfter(CHECK_PERIOD, payload=CHECK)
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

    def _deliver(self, entry: Entry, msg: Any) -> None:
        if entry.state == "live" and entry.pid is not None and not pid_alive(entry.pid):
            # Dead, and Thespian has not told us yet: what we sent it now would be lost.
            entry.buffered.append(msg)
            self._exited_unreported(entry.address)
        elif entry.state == "live":
            self.send(entry.address, msg)
        elif entry.state == "passivating":
            entry.buffered.append(msg)
        else:
            entry.buffered.append(msg)
            self._activate(entry)

    # -- routing ------------------------------------------------------------------
    def _at_capacity(self) -> bool:
        """Whether one more live session would pass ``max_live_sessions`` (each is a process
        and a runtime: anonymous INITs must not be able to exhaust the machine)."""
        assert self.cfg is not None
        cap = self.cfg.max_live_sessions
        if len(self.sessions) < cap:  # the common case, without counting
            return False
        live = sum(1 for e in self.sessions.values() if e.state in ("live", "passivating"))
        return live + len(self.creating) >= cap

    def _on_init(self, msg: Init) -> None:
        assert self.cfg is not None and self.store is not None
        conn = msg.conn_id
        refusal = self._cluster_refusal()  # draining, or cut off from the shared store
        if refusal is not None:
            self._answer(conn, [error_frame(refusal, 503)])
            return
        if msg.session_id is None:
            if self._at_capacity():
                self._answer(conn, [error_frame(AT_CAPACITY, 503)])
                return
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
            if entry.state in ("passivated", "failed") and self._at_capacity():
                self._answer(conn, [error_frame(AT_CAPACITY, 503)])
                return
        self._move_conn(conn, entry.session_id)
        entry.conns[conn] = None
        attach = Attach(
            conn,
            msg.latest_event_id,
            entry.token_version,
            session_id=entry.session_id,
            seq=next(self.route_seq),
            secrets=dict(msg.secrets),
        )
        entry.attaching[conn] = attach
        if created:
            entry.buffered.append(attach)  # activated once its record is committed: _create_batch
        else:
            if entry.state == "failed":
                entry.restarts.clear()
            self._deliver(entry, attach)

    def _move_conn(self, conn: str, session_id: str) -> None:
        """Route ``conn`` to ``session_id``; it leaves its old session once the new one attached it."""
        pending = self.moving.pop(conn, None)  # the session it had not finished leaving
        current = self.conn_session.get(conn)
        if pending is not None and current is not None and current not in (session_id, pending):
            # It moves on before we heard that ``current`` attached it: the gateway holds an
            # INIT until the one before is answered, so ``current`` has answered, and its
            # Attached (or AttachFailed) is still on the way. Leave it now, or it keeps a
            # connection that is gone (and never passivates).
            self._detach_from(conn, current)
        old = pending or current
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

    def _evict(self, entry: Entry, payloads: list[dict[str, Any]], live: bool = False) -> None:
        """Tell every connection of ``entry`` why, and detach them: a failed or deleted
        session, or (``live``) one that stays up without them (its tokens were revoked),
        which is told to detach them too and keeps what it buffered for others."""
        cut = set(entry.conns)
        for conn in list(entry.conns):
            if live:
                self._detach_from(conn, entry.session_id)
            if self.conn_session.get(conn) == entry.session_id:
                self._answer(conn, payloads)
                old = self.moving.pop(conn, None)
                if old is not None:  # it was moving here: it stays where it was
                    self.conn_session[conn] = old
                    continue
                del self.conn_session[conn]
                if self.outbox is not None:
                    self.outbox.send({"t": "detach", "conn": conn})
            elif self.moving.get(conn) == entry.session_id:
                del self.moving[conn]  # it is leaving for a session it may join: no error
                if not live:
                    self._answer(conn, payloads)
        entry.conns.clear()
        entry.attaching.clear()
        if live:
            entry.buffered = [m for m in entry.buffered if getattr(m, "conn_id", None) not in cut]
        else:
            entry.buffered.clear()

    def _detach_from(self, conn: str, session_id: str) -> None:
        entry = self.sessions.get(session_id)
        if entry is None or conn not in entry.conns:
            return
        del entry.conns[conn]
        entry.attaching.pop(conn, None)
        if entry.state == "live":
            self.send(entry.address, Detach(conn, seq=next(self.route_seq)))
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

    def _on_wakeup(self, payload: Any) -> None:
        if payload == RECONNECT:
            self.reconnect_armed = False
            if isinstance(self.outbox, LinkOutbox) and self.outbox.connect() is None:
                self._arm_reconnect()
        elif payload == REFILL:
            self._refill_pool()
        elif payload == RETENTION:
            self._sweep_retention()
        elif payload == CHECK:
            self._check_alive()
            self._ping_sessions()
            self._cluster_check()
            self.wakeupAfter(CHECK_PERIOD, payload=CHECK)
        elif payload == SHUTDOWN_TIMEOUT and self.shutdown_waiter is not None:
            log.error("supervisor: sessions did not all stop in time")
            self._finish_shutdown()
