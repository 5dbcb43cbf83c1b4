"""The session actor: one per live session, owner of its runtime and its connections.

Lifecycle (see docs/architecture.md for the diagram)::

    pooled --Activate--> live --(no connection for close_delay, runtime idle)--> passivated -> exit
                          ^  \\--crash--> (supervisor restarts a new incarnation)
                          '-- Attach cancels a pending passivation (generation number)

Every event is numbered here, appended to the store (durable) and only then
sent; the INIT answer, the replay and the live events for a connection are all
sent from this single-threaded actor in that order over one ordered stream, so
the hand-off from replay to live is exact by construction.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections import deque
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

from ..bridge import CallbackOutbox, LinkOutbox, Outbox
from ..config import Config
from ..errors import (
    ActionError,
    LeaseLost,
    QuotaExceeded,
    RuntimeStartError,
    SessionActorsError,
    StoreCorrupt,
    StoreError,
)
from ..messages import (
    Action,
    Activate,
    Activated,
    ActivationFailed,
    Attach,
    Attached,
    AttachFailed,
    Bounced,
    Configure,
    Detach,
    FileRequest,
    Frame,
    SessionPing,
    SessionPong,
)
from ..protocol import NOT_ATTACHED, action_event_fields, error_frame, status_update
from ..runtimes.base import Event, Output, Runtime, RuntimeContext, error_observation
from ..store import Store, open_store
from .agentstate import AgentStates
from .eventlog import EventLog
from .passivation import NOT_RUN, SessionTimers
from .workspace import WorkspaceFiles
from .workspace_sync import WorkspaceSync

__all__ = ["SessionActor", "REPLAY_PAGE"]

log = logging.getLogger("sessionactors.session")

REPLAY_PAGE = 1000
RESTARTED_WHY = "Session restarted after a failure"


class SessionActor(AgentStates, WorkspaceFiles, WorkspaceSync, SessionTimers, EventLog, Actor):  # type: ignore[misc]
    """One live session: numbers, stores and fans out its events; drives its runtime."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg: Config | None = None
        self.supervisor: Any = None
        self.outbox: Outbox | None = None
        self.store: Store | None = None
        self.runtime: Runtime | None = None
        self.runtime_error: str | None = None  # why the runtime could not be constructed
        self.runtime_ctx: RuntimeContext | None = None
        self.running: int | None = None  # the id of the action the runtime is executing
        self.crashed = False  # the runtime failed too often: the supervisor marks the session failed
        self.crashes: deque[float] = deque()  # when the runtime last raised (restart intensity)
        self.started = False
        self.session_id: str | None = None
        self.incarnation = 0
        self.created = False
        self.conns: dict[str, None] = {}
        self.secrets: dict[str, Any] = {}  # INIT args that are secrets: memory only (RuntimeContext)
        self.conn_seq: dict[str, int] = {}  # conn -> seq of the last Attach/Detach applied
        self.next_id = 0
        self.generation = 0
        self.state = "pooled"
        self.queue: deque[dict[str, Any]] = deque()
        self.passivate_when_idle = False
        self.armed_deadline: float | None = None
        # latency samples reported to the gateway's /metrics in batches (see metrics.py)
        self.samples: dict[str, Any] = {"append": [], "actions": [], "stored": 0}
        self.samples_flushed = time.monotonic()
        self.samples_armed = False

    # -- Thespian entry point ---------------------------------------------------
    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        if isinstance(msg, WatchMessage):
            try:
                self._on_watch(msg.ready)
            except Exception:  # a bridge frame has no sender to poison: log and carry on
                log.exception("session %s: error handling bridge input", self.session_id)
        elif isinstance(msg, WakeupMessage):
            if msg.payload == "metrics":
                self.samples_armed = False
            elif msg.payload == "agent_init":
                self._agent_progress(due=True)
            self._on_wakeup(msg.payload)
        elif isinstance(msg, Configure):
            self.cfg = Config.from_json(msg.config_json)
            self.supervisor = sender
            self._bridge_path = msg.bridge_path
            self._frames_to = msg.frames_to
            # While pooled, so that an activation does not pay for it.
            self.store = self.store or self._open_store()
        elif isinstance(msg, SessionPing):  # the supervisor's watchdog (watchdog.py)
            self.send(sender, SessionPong(self.session_id or "", self.incarnation, msg.seq))
        elif self.state == "passivated" and isinstance(msg, (Attach, Action, FileRequest)):
            self.send(self.supervisor, Bounced(getattr(msg, "session_id", "") or self.session_id or "", msg))
        elif isinstance(msg, (Attach, Action)) and msg.session_id and msg.session_id != self.session_id:
            # Sent to this actor's previous session (it was recycled through the pool since):
            # back to the supervisor, never into this session.
            self.send(self.supervisor, Bounced(msg.session_id, msg))
        elif isinstance(msg, Activate):
            try:
                self._activate(msg)
            except StoreError as exc:  # its log cannot be read: a retry cannot help; say why
                if (
                    self.cfg
                    and self.cfg.store_url
                    and not isinstance(exc, (StoreCorrupt, LeaseLost, QuotaExceeded))
                ):
                    raise  # a shared store's lost connection: Thespian's retry reconnects
                log.error("cannot activate: %s", exc, extra={"session_id": msg.session_id})
                lost = isinstance(exc, LeaseLost)
                self.send(self.supervisor, ActivationFailed(msg.session_id, msg.incarnation, str(exc), lost))
                return None
            for then in msg.then:
                self._handle_then(then)
        elif isinstance(msg, Attach):
            if msg.seq and msg.seq < self.conn_seq.get(msg.conn_id, 0):
                return self._watch()  # a Detach decided after it was applied first: stale
            self.conn_seq[msg.conn_id] = msg.seq
            self.secrets.update(msg.secrets)
            if msg.restarted:
                self._send_to([msg.conn_id], [status_update("SESSION_RESTARTED", RESTARTED_WHY)])
            self._attach(msg.conn_id, msg.latest_event_id, msg.token_version, answer=True)
        elif isinstance(msg, Detach):
            if not (msg.seq and msg.seq < self.conn_seq.get(msg.conn_id, 0)):  # else overtaken
                self.conn_seq[msg.conn_id] = msg.seq
                self._detach(msg.conn_id)
        elif isinstance(msg, Action):
            self._on_action(msg.conn_id, msg.action)
        elif isinstance(msg, FileRequest):
            self._on_file_request(msg)
        elif isinstance(msg, ActorExitRequest):
            self._shutdown()
        elif isinstance(msg, PoisonMessage):
            log.error("session %s: message failed twice: %r", self.session_id, msg.poisonMessage)
        elif isinstance(msg, ChildActorExited):
            pass
        self._arm_runtime_deadline()
        self._report_samples()
        return self._watch()

    def _handle_then(self, msg: Any) -> None:
        """A message that came inside Activate: on failure, returned like Thespian's poison."""
        try:
            self.receiveMessage(msg, self.supervisor)
        except Exception:
            log.exception("session %s: failed handling %r", self.session_id, msg)
            self.send(self.supervisor, PoisonMessage(msg, traceback.format_exc()))

    def _watch(self) -> Any:
        fds: list[int] = []
        if isinstance(self.outbox, LinkOutbox) and self.outbox.link is not None:
            fds.append(self.outbox.link.fileno())
        if self.runtime is not None and self.started:
            fds.extend(self.runtime.filenos())
        return ThespianWatch(fds) if fds else None

    # -- activation -----------------------------------------------------------
    def _open_store(self) -> Store:
        assert self.cfg is not None
        return open_store(self.cfg.data_dir, **self.cfg.store_options)

    def _activate(self, msg: Activate) -> None:
        assert self.cfg is not None, "Configure must precede Activate"
        # A recycled actor (back in the pool after passivating) starts from a clean slate;
        # ``generation`` keeps counting so that a timer armed for the last session is stale.
        self.conns.clear()
        self.conn_seq.clear()
        self.queue.clear()
        self.passivate_when_idle = False
        self.started = False
        self._reset_agent_state()
        self.running = None
        self.crashed = False
        self.crashes.clear()
        self.session_id = msg.session_id
        self.incarnation = msg.incarnation
        self.created = msg.created
        if self.store is None:
            self.store = self._open_store()
        record = self.store.get_session(msg.session_id)
        if record is None:
            raise SessionActorsError(f"no record for session {msg.session_id}")
        self.next_id = self._claim(msg.session_id) + 1
        workspace = self.cfg.workspaces_dir / msg.session_id
        self._sync_workspace_at_activation(workspace)  # a shared store's archive (issue 16)
        self.runtime_ctx = RuntimeContext(
            session_id=msg.session_id,
            workspace=workspace,
            options=dict(self.cfg.runtime_options),
            state=dict(record.runtime_state),
            args=dict(record.args),
            secrets=self.secrets,
        )
        self.runtime = self._new_runtime()
        self.state = "live"
        if self._bridge_path:
            self.outbox = LinkOutbox(
                self._bridge_path,
                {"t": "hello", "role": "session", "session_id": msg.session_id, "resume": list(msg.resume)},
            )
            self.outbox.connect()
        else:
            frames_to = self._frames_to
            self.outbox = CallbackOutbox(lambda frame: self.send(frames_to, Frame(frame)))
        # No "live" write here: a record left "live" by a dead daemon is reconciled to
        # "passivated" at start-up anyway, and this commit (an fsync under the store's one
        # write lock) was what serialised a burst of rehydrations. A "failed" mark is cleared.
        if record.state == "failed":
            self.store.update_session(msg.session_id, state="passivated")
        if msg.want_pid:
            self.send(self.supervisor, Activated(msg.session_id, msg.incarnation, os.getpid()))
        log.info(
            "session activated (incarnation %d, pid %d)",
            msg.incarnation,
            os.getpid(),
            extra={"session_id": msg.session_id},
        )
        if msg.resume:
            self._resume(msg.resume)
            if isinstance(self.outbox, LinkOutbox):  # a later re-link (new gateway) resumes nothing
                self.outbox.hello = {"t": "hello", "role": "session", "session_id": msg.session_id}
        if not self.conns:
            self._arm_passivation()

    def _resume(self, conns: tuple[str, ...]) -> None:
        """After a crash restart: re-attach connections from where each one is."""
        positions: dict[str, int] = {c: -1 for c in conns}
        if isinstance(self.outbox, LinkOutbox) and self.outbox.link is not None:
            reply = self.outbox.link.wait_for("positions", 5.0)
            if reply is not None:
                positions = {c: int(p) for c, p in reply.get("conns", {}).items() if c in positions}
        for conn, last in positions.items():
            self._send_to([conn], [status_update("SESSION_RESTARTED", RESTARTED_WHY)])
            self._attach(conn, last, 0, answer=False)
        if isinstance(self.outbox, LinkOutbox) and self.outbox.link is not None:
            # wait_for read these past "positions": the fd will not wake us for them again
            self._on_link_frames(self.outbox.link.take_pending())

    # -- connections ------------------------------------------------------------
    def _attach(self, conn: str, latest_event_id: int, token_version: int, answer: bool) -> None:
        assert self.store is not None and self.session_id is not None
        self.generation += 1  # cancels any armed passivation
        self.passivate_when_idle = False
        if not self.started and not self._start_runtime(conn):
            self.send(self.supervisor, AttachFailed(self.session_id, conn))
            if not self.conns:  # nobody left: not "live" for close_delay with a runtime that failed
                self._passivate()
            return
        # A client claiming ids this session never produced (a stale or foreign view) is
        # treated as holding everything there is: it gets every event produced from now on.
        latest_event_id = min(latest_event_id, self.next_id - 1)
        if answer:
            self.outbox_send(
                {
                    "t": "init_ok",
                    "conn": conn,
                    "session_id": self.session_id,
                    "token_version": token_version,
                    "latest": latest_event_id,
                }
            )
        start = latest_event_id + 1
        while start < self.next_id:
            page = self.store.read(self.session_id, start, REPLAY_PAGE)
            if not page:
                break
            self._send_to([conn], page)
            start = page[-1]["id"] + 1
        if answer and self._openhands:  # its handler reads only the last frame of a batch
            self.outbox_send({"t": "init_done", "conn": conn, "session_id": self.session_id})
        self.conns[conn] = None
        if answer:
            self.send(self.supervisor, Attached(self.session_id, conn))
        log.info("connection attached", extra={"session_id": self.session_id, "conn_id": conn})

    def _start_runtime(self, conn: str) -> bool:
        if self.runtime is None:  # its constructor raised (logged at activation)
            self._fail_runtime([conn], self.runtime_error or "runtime failed to start")
            return False
        if not self.created:
            self._send_to([conn], [status_update("REHYDRATING", "Restoring the session")])
        self._send_workspace_notice(conn)
        self._send_to([conn], [status_update("STARTING_RUNTIME", "Starting the runtime")])
        self._agent_loading()
        try:
            outputs = self.runtime.start()
        except RuntimeStartError as exc:
            self._fail_runtime([conn], str(exc))
            return False
        except Exception as exc:  # a third-party runtime's bug must not kill the session
            log.exception("session %s: runtime start crashed", self.session_id)
            self._fail_runtime([conn], f"runtime failed to start: {exc.__class__.__name__}")
            return False
        self.started = True
        self._handle_outputs(outputs, extra=[conn])
        return True

    def _fail_runtime(self, conns: list[str], why: str) -> None:
        self._agent_state("error")
        self._send_to(conns, [status_update("ERROR_RUNTIME", why, "error"), error_frame(why, 503)])

    def _detach(self, conn: str) -> None:
        if conn not in self.conns:
            return
        del self.conns[conn]
        if not self.conns:
            self._arm_passivation()

    # -- actions ----------------------------------------------------------------
    def _on_action(self, conn: str, action: dict[str, Any]) -> None:
        started = time.perf_counter()
        if conn not in self.conns or self.runtime is None:
            self._send_to([conn], [error_frame(NOT_ATTACHED, 400)])
            return
        if action["action"] == "change_agent_state":  # the session's own action, never queued
            self._change_agent_state(conn, action)
            return
        try:
            self.runtime.validate(action)
        except ActionError as exc:
            self._send_to([conn], [error_frame(str(exc), 400)])
            return
        except Exception as exc:  # a plugin's bug: the sender is told, nothing is stored
            log.exception("session %s: the runtime's validate() raised", self.session_id)
            self._send_to([conn], [error_frame(f"runtime error in validate: {exc.__class__.__name__}", 500)])
            return
        try:
            (event,) = self._emit([action_event_fields(action)])
        except StoreError as exc:  # nothing was stored or sent: the sender must know
            self._refused([conn], exc, f"an action from {conn}")
            return
        self._note_action(event)
        self.samples["actions"].append([action["action"], round(time.perf_counter() - started, 6)])
        if self.crashed:  # arrived after the session gave up on its runtime, before its end
            self._emit([error_observation(NOT_RUN, event["id"]).fields])
        elif self.runtime.ready and not self.runtime.busy and not self.queue:
            self._begin(event)
        else:
            self.queue.append(event)

    def _begin(self, event: dict[str, Any]) -> None:
        assert self.runtime is not None
        self._agent_busy()
        self.running = event["id"]
        try:
            outputs = self.runtime.begin(event)
        except ActionError as exc:  # refused at run time (e.g. a path that changed meaning)
            outputs = [error_observation(str(exc), event["id"])]
        except Exception as exc:
            log.exception("session %s: runtime crashed on action %s", self.session_id, event["id"])
            self._runtime_crashed("begin", exc)
            return
        self._handle_outputs(outputs)

    def _handle_outputs(self, outputs: list[Output], extra: list[str] | None = None) -> None:
        batch: list[dict[str, Any]] = []
        for out in outputs:
            if isinstance(out, Event):
                batch.append(out.fields)
                continue
            if batch:
                self._emit_outputs(batch)
                batch = []
            payload = {"status_update": True, "type": out.type, "id": out.id, "message": out.message}
            self._send_to(list(self.conns) + [c for c in extra or [] if c not in self.conns], [payload])
        if batch:
            self._emit_outputs(batch)
        self._after_runtime_progress()

    def _after_runtime_progress(self) -> None:
        if self.crashed:  # gave up on the runtime: the supervisor ends this actor
            return
        assert self.runtime is not None
        while self.queue and self.runtime.ready and not self.runtime.busy:
            self._begin(self.queue.popleft())
            if self.crashed:
                return
        if not self.runtime.busy:
            self.running = None
        self._agent_progress()
        if self.passivate_when_idle and not self.runtime.busy and not self.queue and not self.conns:
            self._passivate()

    # -- bridge and timers --------------------------------------------------------
    def _on_watch(self, ready: list[int]) -> None:
        outbox = self.outbox
        if isinstance(outbox, LinkOutbox) and outbox.link is not None and outbox.link.fileno() in ready:
            frames = outbox.link.receive()
            if frames is None:
                outbox.link = None  # gateway gone: the supervisor detaches our connections
            else:
                self._on_link_frames(frames)
        if self.runtime is not None and self.started:
            rt_fds = [fd for fd in ready if fd in self.runtime.filenos()]
            if rt_fds:
                self._poll(rt_fds)

    def _on_link_frames(self, frames: list[dict[str, Any]]) -> None:
        for frame in frames:
            if frame.get("t") == "action":
                self._on_action(frame["conn"], frame["action"])
