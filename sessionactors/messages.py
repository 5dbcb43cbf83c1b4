"""Messages between the actors (Thespian ``send``): frozen, picklable, module level.

Each docstring names the sender and the receiver. The gateway does not speak
Thespian: its frames travel over the bridge (``bridge.py``) and are turned into
the *same* messages on arrival (``Init``, ``Detach``, ``Action``...), so the
actors' logic is one code path whichever way a request came in. Tests on
``simpleSystemBase`` send these messages directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Configure",
    "Configured",
    "Init",
    "Disconnect",
    "Action",
    "Activate",
    "Activated",
    "ActivationFailed",
    "Attach",
    "Detach",
    "Passivated",
    "Attached",
    "AttachFailed",
    "Bounced",
    "Query",
    "QueryReply",
    "GatewayStopping",
    "SessionFailed",
    "Shutdown",
    "ShutdownDone",
    "FileRequest",
    "Frame",
    "SupervisorPing",
    "SupervisorPong",
    "SessionPing",
    "SessionPong",
]


@dataclass(frozen=True)
class Configure:
    """Launcher -> supervisor, and supervisor -> each new session actor: the settings.

    ``config_json`` is ``Config.to_json()``; ``bridge_path`` is the gateway's bridge
    socket (None: frames go to ``frames_to`` as ``Frame`` messages instead, which
    is how tests on simpleSystemBase observe them).
    """

    config_json: str
    bridge_path: str | None = None
    frames_to: Any = None


@dataclass(frozen=True)
class Configured:
    """Supervisor -> launcher: configuration applied, ready for INITs."""

    sessions: int = 0


@dataclass(frozen=True)
class Init:
    """Gateway (over the bridge) or a test -> supervisor: attach ``conn_id`` to a session.

    ``session_id`` None creates a new session. ``user_id``/``user_login`` are the
    verified GitHub identity, if any. ``token_version`` is the ``ver`` claim of the
    token that named ``session_id``: below the record's ``token_version`` it was
    revoked. The answer goes to the connection through the session's frames
    (INIT ok, replay, live) or an error frame.
    """

    conn_id: str
    session_id: str | None = None
    user_id: str | None = None
    user_login: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    latest_event_id: int = -1
    token_version: int = 0
    secrets: dict[str, Any] = field(default_factory=dict, repr=False)
    """INIT args that are secrets (``secret_arg_patterns``): never stored, never logged."""


@dataclass(frozen=True)
class Disconnect:
    """Gateway -> supervisor: a connection closed."""

    conn_id: str


@dataclass(frozen=True)
class Action:
    """Gateway -> session actor (directly over its link, or via the supervisor): a validated action."""

    conn_id: str
    session_id: str
    action: dict[str, Any]


@dataclass(frozen=True)
class Activate:
    """Supervisor -> session actor (fresh or pooled): become session ``session_id``.

    ``resume`` lists the connections to re-attach after a crash restart (their
    positions are asked from the gateway so that nothing is replayed twice).
    ``want_pid``: answer ``Activated`` (the supervisor does not know this process's pid).
    ``then``: the messages buffered for the session (an INIT's Attach, actions), handled
    right after activating: one message where there were two or more.
    """

    session_id: str
    incarnation: int
    created: bool = False
    resume: tuple[str, ...] = ()
    want_pid: bool = False
    then: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Attach:
    """Supervisor -> session actor: attach a connection and answer its INIT.

    ``restarted``: sent again to a restarted session (the crashed one may or may not have
    answered it), so the connection is told of the restart like the ones resumed.
    """

    conn_id: str
    latest_event_id: int = -1
    token_version: int = 0
    restarted: bool = False
    session_id: str = ""
    """The session it is for: an actor recycled for another session bounces it back."""
    seq: int = 0
    """The supervisor's routing order (see ``Detach.seq``)."""
    secrets: dict[str, Any] = field(default_factory=dict, repr=False)
    """The INIT's secrets, for the runtime's memory only (``RuntimeContext.secrets``)."""


@dataclass(frozen=True)
class Detach:
    """Supervisor -> session actor: a connection left (disconnect or second INIT)."""

    conn_id: str
    seq: int = 0
    """Attaches and Detaches are numbered in the order the supervisor decides them. Thespian
    delivers one sender's messages in order, except when a transmit is retried under load
    (the soak at full size saw a Detach overtake the Attach that followed it): the session
    applies, per connection, only what is newer than what it applied last."""


@dataclass(frozen=True)
class Passivated:
    """Session actor -> supervisor: I persisted, stopped my runtime and will exit."""

    session_id: str
    incarnation: int


@dataclass(frozen=True)
class SessionFailed:
    """Session actor -> supervisor: my runtime failed ``restart_intensity`` times within
    ``restart_period``: mark me failed, tell my connections ``why`` and end me."""

    session_id: str
    incarnation: int
    why: str


@dataclass(frozen=True)
class ActivationFailed:
    """Session actor -> supervisor: I could not activate for a reason no retry mends (the
    store cannot read my events: ``why`` names the file and the cause); tell the waiting
    connections ``why`` and end me. The session stays passivated. ``lease_lost``: the reason
    is that another node owns the session (a shared store's lease), so they get a 503."""

    session_id: str
    incarnation: int
    why: str
    lease_lost: bool = False


@dataclass(frozen=True)
class Activated:
    """Session actor -> supervisor: incarnation ``incarnation`` runs in process ``pid``."""

    session_id: str
    incarnation: int
    pid: int


@dataclass(frozen=True)
class Attached:
    """Session actor -> supervisor: ``conn_id`` is attached (answered and replayed).

    Only now does the supervisor detach a moving connection from the session it had, so
    a connection whose new session cannot start stays where it was.
    """

    session_id: str
    conn_id: str


@dataclass(frozen=True)
class AttachFailed:
    """Session actor -> supervisor: an Attach could not complete (runtime start failed)."""

    session_id: str
    conn_id: str


@dataclass(frozen=True)
class Bounced:
    """Session actor -> supervisor: a message that reached me after I passivated.

    The supervisor buffers it for the next incarnation (nothing is lost).
    """

    session_id: str
    message: Any


@dataclass(frozen=True)
class Query:
    """Launcher/CLI/gateway -> supervisor: ask about sessions.

    ``op``: ``ping``, ``info`` (one session), ``list`` (all), ``delete``.
    """

    op: str
    session_id: str | None = None
    req: int = 0


@dataclass(frozen=True)
class QueryReply:
    """Supervisor -> asker: the answer to a Query (``body`` is JSON-able)."""

    req: int
    status: int
    body: Any


@dataclass(frozen=True)
class GatewayStopping:
    """Launcher -> supervisor (and its answer): the gateway is being stopped on purpose, so
    losing its link is expected (logged at INFO, not as a failure)."""


@dataclass(frozen=True)
class Shutdown:
    """Launcher -> supervisor: stop every session cleanly (persist, stop runtimes), then reply."""


@dataclass(frozen=True)
class ShutdownDone:
    """Supervisor -> launcher: every session actor has stopped."""

    sessions: int


@dataclass(frozen=True)
class FileRequest:
    """Supervisor -> session actor: REST access to the workspace (``op``: ``list``, ``read``,
    ``tree``, ``save``, ``upload`` or ``zip``; see ``actors/workspace.py``).

    The session answers on its bridge link with a ``reply`` frame carrying ``req``.
    """

    req: int
    op: str
    path: str
    data: dict[str, Any] = field(default_factory=dict, repr=False)
    """What a write carries (``save``: ``content``; ``upload``: ``content_b64``)."""


@dataclass(frozen=True)
class Frame:
    """Session/supervisor -> frames_to (tests only): one bridge frame, as the gateway would get it."""

    frame: dict[str, Any]


# -- liveness with deadlines (actors/watchdog.py, recovery.py) --------------------------
@dataclass(frozen=True)
class SupervisorPing:
    """Daemon -> supervisor: are you there? Answered with ``SupervisorPong``."""


@dataclass(frozen=True)
class SupervisorPong:
    """Supervisor -> daemon: alive; its pid and how many sessions it knows."""

    pid: int
    sessions: int


@dataclass(frozen=True)
class SessionPing:
    """Supervisor -> session actor: answer with ``SessionPong`` carrying ``seq``."""

    seq: int


@dataclass(frozen=True)
class SessionPong:
    """Session actor -> supervisor: the answer to ``SessionPing``."""

    session_id: str
    incarnation: int
    seq: int
