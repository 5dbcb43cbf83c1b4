"""The exceptions sessionactors raises, under one root.

Tree::

    SessionActorsError
    ├── ConfigError                 invalid configuration; names the key
    ├── DaemonError                 daemon start/stop/status failures
    │   └── ActorSystemInUse        a leftover actor system holds the admin port
    ├── StoreError                  the durable store cannot do what was asked
    │   ├── StoreCorrupt            the data directory is corrupt or foreign
    │   ├── SchemaMismatch          schema written by a newer version
    │   ├── EventIdConflict         an append would leave a gap or reuse an id
    │   └── LeaseLost               this node does not own the session (fenced write)
    │   └── QuotaExceeded           an append would pass the session's quota (-> 507)
    ├── RuntimeStartError           a session's runtime cannot start (-> 503)
    ├── ActionError                 an action is refused before it runs (-> 400)
    │   └── PathEscape              a path leaves the session's workspace
    └── AuthError                   a credential is refused
        ├── InvalidToken            session token forged/expired/unknown (-> 401)
        ├── InvalidGitHubToken      GitHub says the token is bad (-> 401)
        ├── GitHubUnavailable       GitHub could not be asked (-> 503)
        └── Forbidden               a valid identity that may not do this (-> 403)

Every error that maps to a wire error carries ``error_code`` so that the actor
or gateway that catches it can answer the sender with
``{"error": str(exc), "error_code": exc.error_code}``.
"""

from __future__ import annotations

__all__ = [
    "GATEWAY_BIND_FAILED",
    "SessionActorsError",
    "ConfigError",
    "DaemonError",
    "ActorSystemInUse",
    "StoreError",
    "StoreCorrupt",
    "SchemaMismatch",
    "EventIdConflict",
    "LeaseLost",
    "QuotaExceeded",
    "RuntimeStartError",
    "ActionError",
    "PathEscape",
    "AuthError",
    "InvalidToken",
    "InvalidGitHubToken",
    "GitHubUnavailable",
    "Forbidden",
]


GATEWAY_BIND_FAILED = 3
"""Exit status of the gateway process when it cannot listen on its port (the daemon says why)."""


class SessionActorsError(Exception):
    """Root of every exception this package raises on purpose."""

    error_code: int = 500


class ConfigError(SessionActorsError):
    """A configuration value is invalid; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"invalid configuration {key!r}: {problem}")
        self.key = key
        self.problem = problem


class DaemonError(SessionActorsError):
    """The daemon could not be started, stopped or asked."""


class ActorSystemInUse(DaemonError):
    """The admin port is held by an actor system this daemon did not start."""


class StoreError(SessionActorsError):
    """The durable store failed."""


class StoreCorrupt(StoreError):
    """The data directory does not hold a sessionactors store we can read."""


class SchemaMismatch(StoreError):
    """The store was written by a newer, unknown schema version."""


class EventIdConflict(StoreError):
    """An append would leave a gap in, or reuse, a session's event ids."""


class LeaseLost(StoreError):
    """A write refused by the ownership lease: another node holds the session (or took it
    over since this node's copy started), so this copy must stop."""

    error_code = 503


class QuotaExceeded(StoreError):
    """An append would take a session's event log past the store's quota; nothing was stored."""

    error_code = 507

    def __init__(self, session_id: str, used: int, adding: int, limit: int) -> None:
        super().__init__(
            f"session {session_id} is over its store quota: {used} bytes of events stored, "
            f"{adding} more would pass the limit of {limit} bytes"
        )
        self.session_id = session_id
        self.used = used
        self.adding = adding
        self.limit = limit


class RuntimeStartError(SessionActorsError):
    """The session's runtime cannot start."""

    error_code = 503


class ActionError(SessionActorsError):
    """An action is refused before it runs (bad args, path outside the workspace)."""

    error_code = 400


class PathEscape(ActionError):
    """A path resolves outside the session's workspace."""


class AuthError(SessionActorsError):
    """A credential was refused."""

    error_code = 401


class InvalidToken(AuthError):
    """Forged, expired, unparsable session token, or one naming no session."""

    def __init__(self, reason: str = "") -> None:
        super().__init__("Invalid token")
        self.reason = reason


class InvalidGitHubToken(AuthError):
    """GitHub rejected the token."""

    def __init__(self, reason: str = "") -> None:
        super().__init__("Invalid GitHub token")
        self.reason = reason


class GitHubUnavailable(AuthError):
    """GitHub could not be reached or answered with a server error."""

    error_code = 503


class Forbidden(AuthError):
    """A valid identity that may not use this session."""

    error_code = 403

    def __init__(self, reason: str = "") -> None:
        super().__init__("Forbidden")
        self.reason = reason
