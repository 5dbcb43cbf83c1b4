"""The durable store: per-session event logs and session records.

What it is for: session actors append every event here before any client sees it;
the supervisor keeps the session records here; the gateway *reads* event ranges and
records for the REST API (it never writes).

Layout: ``base`` is the interface (``Store``, ``SessionRecord``) and imports no
backend; one module per backend beside it (``sqlite`` with its ``journal`` per session,
``migrate`` and ``sqlite_shards``, the embedded default; ``postgres`` with its ``leases``,
shared by several machines); ``open_store`` here picks the backend: PostgreSQL when a
``store_url`` is given. This part may import ``errors`` and nothing
else of sessionactors: the actors and the gateway depend on it, never the reverse.

Every process opens its own ``Store`` (a connection must never cross a fork):
``open_store(data_dir)`` in the process that uses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import SESSION_STATES, SessionRecord, Store, event_json, event_size

__all__ = ["SESSION_STATES", "SessionRecord", "Store", "event_json", "event_size", "open_store"]


def open_store(
    data_dir: Path | str,
    *,
    fsync: str = "full",
    quota_bytes: int | None = None,
    url: str | None = None,
    node: str | None = None,
    **lease: Any,
) -> Store:
    """Open the store: PostgreSQL at ``url`` when given (``node`` names this daemon in
    its ownership leases; ``lease`` takes ``lease_ttl`` and ``lease_renew``), else the
    embedded SQLite store under ``data_dir`` (created if needed). ``quota_bytes`` caps each
    session's stored events (``Store.quota_bytes``). ``Config.store_options`` gives every
    keyword from the configuration."""
    # Imported here so that the interface stays importable without a backend's
    # dependencies, and one backend never loads the other's code.
    if url:
        import socket

        from .postgres import PostgresStore

        return PostgresStore(url, node=node or socket.gethostname(), quota_bytes=quota_bytes, **lease)
    from .sqlite import SQLiteStore

    return SQLiteStore(Path(data_dir), fsync=fsync, quota_bytes=quota_bytes)
