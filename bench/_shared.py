"""Helpers shared by the reference servers and the harness; imports no eventlet (the harness is not patched)."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any


def health_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """``/api/health`` for the harness's readiness check; 404 for anything else."""
    if environ.get("PATH_INFO") == "/api/health":
        body = b'{"status": "ok"}'
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
    return [b"not found"]


SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sessions (session_id TEXT PRIMARY KEY, token TEXT UNIQUE NOT NULL,"
    " created_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS events (session_id TEXT NOT NULL, id INTEGER NOT NULL, body TEXT NOT NULL,"
    " PRIMARY KEY (session_id, id)) WITHOUT ROWID",
)
PAGE = 1000


def open_db(path: str) -> sqlite3.Connection:
    """The store: WAL, synchronous=FULL, autocommit (explicit transactions)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    for stmt in SCHEMA:
        db.execute(stmt)
    return db


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def seed_session(path: str, n_events: int) -> tuple[str, str]:
    """Write one session of ``n_events`` message events (one transaction); return (token, session_id)."""
    db = open_db(path)
    session_id, token = uuid.uuid4().hex, secrets.token_urlsafe(24)
    stamp = now_iso()
    rows = []
    for i in range(n_events):
        event = {"id": i, "timestamp": stamp, "source": "user", "message": f"seed {i}",
                 "action": "message", "args": {"content": f"seed {i}"}}  # fmt: skip
        rows.append((session_id, i, json.dumps(event, separators=(",", ":"))))
    db.execute("BEGIN")
    db.execute("INSERT INTO sessions VALUES (?, ?, ?)", (session_id, token, time.time()))
    db.executemany("INSERT INTO events VALUES (?, ?, ?)", rows)
    db.execute("COMMIT")
    db.close()
    return token, session_id
