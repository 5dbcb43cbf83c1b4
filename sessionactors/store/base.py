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
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SessionRecord",
    "Store",
    "SESSION_STATES",
    "RECORD_FIELDS",
    "event_json",
    "event_size",
    "encode_record_field",
    "record_from_row",
]

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


RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(SessionRecord))
"""A session record's columns, in this order, in every backend's table."""
_JSON_RECORD_FIELDS = frozenset({"args", "runtime_state"})


def encode_record_field(name: str, value: Any) -> Any:
    """A record field as a backend stores it: the JSON fields as compact text, a state
    checked against ``SESSION_STATES``, anything else as it is."""
    if name in _JSON_RECORD_FIELDS:
        return event_json(value)
    if name == "state" and value not in SESSION_STATES:
        raise ValueError(f"state must be one of {SESSION_STATES}, not {value!r}")
    return value


def record_from_row(row: tuple[Any, ...]) -> SessionRecord:
    """The ``SessionRecord`` of a row read in ``RECORD_FIELDS`` order."""
    values = {
        n: json.loads(v) if n in _JSON_RECORD_FIELDS else v for n, v in zip(RECORD_FIELDS, row, strict=True)
    }
    return SessionRecord(**values)


def event_json(event: dict[str, Any]) -> str:
    """An event as every backend stores it: compact, strict (no NaN) JSON, what a
    JSON client can parse. It never contains a raw newline."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def event_size(event: dict[str, Any]) -> int:
    """The bytes one event counts against a session's quota (its UTF-8 ``event_json``)."""
    return len(event_json(event).encode())


class Store(abc.ABC):
    """Durable events and session records (see the module docstring)."""

    quota_bytes: int | None = None
    """Per-session cap on the ``event_size`` sum of a session's stored events (None: no
    cap); a backend's constructor sets it from its ``quota_bytes`` keyword."""

    supports_workspace_archives = False
    """True for a shared store that keeps workspace archives (``put_workspace_archive``,
    ``workspace_archive``, ``read_workspace_archive``: ``postgres_archives.py``); the
    embedded store needs none (the workspace stays on its one disk)."""

    # -- events ------------------------------------------------------------
    @abc.abstractmethod
    def append(self, session_id: str, events: list[dict[str, Any]]) -> None:
        """Append events (each carrying its ``id``) atomically and durably.

        The first id must be ``last_event_id(session_id) + 1`` and the ids
        consecutive; otherwise raise ``EventIdConflict`` and store nothing. With
        ``quota_bytes`` set, raise ``QuotaExceeded`` and store nothing when
        ``event_bytes(session_id)`` plus the new events' sizes would pass it.
        ``StoreCorrupt`` (here, in ``read`` and ``last_event_id``) names a damaged
        log of this one session; other sessions are unaffected.
        """

    @abc.abstractmethod
    def read(self, session_id: str, start_id: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Events with ``id >= start_id``, ascending, at most ``limit``."""

    @abc.abstractmethod
    def last_event_id(self, session_id: str) -> int:
        """The highest stored id, or -1 when the session has no event."""

    def event_bytes(self, session_id: str) -> int:
        """Bytes of the session's stored events as the quota counts them (``event_size``).

        Backends should answer from what they keep (this default reads every event)."""
        return sum(event_size(e) for e in self.read(session_id))

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

    def reconcile_live_sessions(self) -> list[str]:
        """At daemon start-up no session actor survived: every 'live' record becomes
        'passivated' (it rehydrates on the next INIT). Returns their ids.

        Backends should do it in one transaction (this default is one per record)."""
        ids = [r.session_id for r in self.list_sessions("live")]
        for session_id in ids:
            self.update_session(session_id, state="passivated")
        return ids

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection (idempotent)."""
