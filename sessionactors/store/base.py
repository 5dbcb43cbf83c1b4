"""The durable store interface: per-session event logs and session records.

Session actors append events here *before* any client sees them; the
supervisor keeps session records here on every state change; the gateway reads
event ranges for the REST API. This module is the interface
alone and imports no backend: the embedded default is SQLite
(``sessionactors.store.sqlite``); a shared database for several machines would
implement the same ``Store`` class in a module of its own beside it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SessionRecord", "Store", "SESSION_STATES"]

SESSION_STATES = ("live", "passivated", "failed")


@dataclass
class SessionRecord:
    """What is kept about one session besides its events."""

    session_id: str
    owner: str | None = None
    """GitHub user id the session is bound to, or None."""
    owner_login: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    """INIT ``args`` (never secrets)."""
    created_at: float = 0.0
    last_active: float = 0.0
    state: str = "live"
    runtime_state: dict[str, Any] = field(default_factory=dict)
    token_version: int = 0
    """Bumped to revoke every token issued for this session."""


class Store(abc.ABC):
    """Durable events and session records (see the module docstring)."""

    # -- events ------------------------------------------------------------
    @abc.abstractmethod
    def append(self, session_id: str, events: list[dict[str, Any]]) -> None:
        """Append events (each carrying its ``id``) atomically and durably.

        The first id must be ``last_event_id(session_id) + 1`` and the ids
        consecutive; otherwise raise ``EventIdConflict`` and store nothing.
        """

    @abc.abstractmethod
    def read(self, session_id: str, start_id: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Events with ``id >= start_id``, ascending, at most ``limit``."""

    @abc.abstractmethod
    def last_event_id(self, session_id: str) -> int:
        """The highest stored id, or -1 when the session has no event."""

    # -- session records ---------------------------------------------------
    def create_session(self, record: SessionRecord) -> None:
        """Store a new record; raise StoreError if the id exists."""
        self.create_sessions([record])

    @abc.abstractmethod
    def create_sessions(self, records: list[SessionRecord]) -> None:
        """Store new records in one transaction (one commit for a burst of INITs)."""

    @abc.abstractmethod
    def get_session(self, session_id: str) -> SessionRecord | None:
        """The record, or None."""

    @abc.abstractmethod
    def update_session(self, session_id: str, **fields: Any) -> None:
        """Change some fields of a record (``state``, ``runtime_state``, ``last_active``...)."""

    @abc.abstractmethod
    def list_sessions(self, state: str | None = None) -> list[SessionRecord]:
        """All records, or those in ``state``, oldest first."""

    @abc.abstractmethod
    def count_sessions(self, state: str | None = None) -> int:
        """How many records (in ``state``)."""

    @abc.abstractmethod
    def delete_session(self, session_id: str) -> bool:
        """Remove the record and its events; True when something was removed."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection (idempotent)."""
