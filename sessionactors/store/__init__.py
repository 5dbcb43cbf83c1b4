"""The durable store: per-session event logs and session records.

What it is for: session actors append every event here before any client sees it;
the supervisor keeps the session records here; the gateway *reads* event ranges and
records for the REST API (it never writes).

Layout: ``base`` is the interface (``Store``, ``SessionRecord``) and imports no
backend; one module per backend beside it (``sqlite`` with its ``journal`` per session, ``migrate`` and ``sqlite_shards``);
``open_store`` here picks the backend. This part may import ``errors`` and nothing
else of sessionactors: the actors and the gateway depend on it, never the reverse.

Every process opens its own ``Store`` (a connection must never cross a fork):
``open_store(data_dir)`` in the process that uses it.
"""

from __future__ import annotations

from pathlib import Path

from .base import SESSION_STATES, SessionRecord, Store, event_json, event_size

__all__ = ["SESSION_STATES", "SessionRecord", "Store", "event_json", "event_size", "open_store"]


def open_store(data_dir: Path | str, *, fsync: str = "full", quota_bytes: int | None = None) -> Store:
    """Open (creating if needed) the embedded store under ``data_dir``; ``quota_bytes``
    caps each session's stored events (see ``Store.quota_bytes``)."""
    # Imported here so that the interface stays importable without the backend's
    # dependencies (and a future backend does not load SQLite code).
    from .sqlite import SQLiteStore

    return SQLiteStore(Path(data_dir), fsync=fsync, quota_bytes=quota_bytes)
