"""The embedded durable store: one SQLite file in WAL mode under the data directory.

Layout of ``<data_dir>/sessionactors.db``:

* ``meta(key, value)``: ``app`` = ``'sessionactors'`` (tells our file from a
  foreign database) and ``schema_version``.
* ``sessions``: one row per ``SessionRecord``; ``args`` and ``runtime_state``
  are JSON text.
* ``events(session_id, id, body)``: the clustered primary key makes a replay
  one ordered range scan; ``body`` is the event's compact JSON, returned as is.

Fork and threads: every process opens its own ``SQLiteStore``. A connection
must never be used on both sides of a fork; if it happens by accident, the
store notices the pid change and opens a fresh connection in the child (the
inherited one is left untouched, never closed, so that the child cannot
disturb the parent's locks or WAL). A store is used from the thread (or the
eventlet hub thread) that opened it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import EventIdConflict, SchemaMismatch, StoreCorrupt, StoreError
from .store import SESSION_STATES, SessionRecord, Store

__all__ = ["DB_NAME", "SCHEMA_VERSION", "SQLiteStore"]

DB_NAME = "sessionactors.db"
APP_MARKER = "sessionactors"
SCHEMA_VERSION = 2

# _MIGRATIONS[n] takes a database from schema version n to n + 1; a fresh file
# (version 0) runs them all, so the upgrade path is exercised on every install.
_MIGRATIONS: list[tuple[str, ...]] = [
    # 0 -> 1: the first released schema.
    (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
        f"INSERT INTO meta (key, value) VALUES ('app', '{APP_MARKER}')",
        """CREATE TABLE sessions (
            session_id TEXT PRIMARY KEY,
            owner TEXT,
            args TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL DEFAULT 0,
            last_active REAL NOT NULL DEFAULT 0,
            state TEXT NOT NULL DEFAULT 'live',
            runtime_state TEXT NOT NULL DEFAULT '{}')""",
        """CREATE TABLE events (
            session_id TEXT NOT NULL,
            id INTEGER NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (session_id, id)) WITHOUT ROWID""",
    ),
    # 1 -> 2: GitHub login next to the user id, token revocation, ordered listing.
    (
        "ALTER TABLE sessions ADD COLUMN owner_login TEXT",
        "ALTER TABLE sessions ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX sessions_state_created ON sessions (state, created_at)",
    ),
]
assert len(_MIGRATIONS) == SCHEMA_VERSION

_FIELDS = tuple(f.name for f in dataclasses.fields(SessionRecord))
_JSON_FIELDS = frozenset({"args", "runtime_state"})
_SELECT_SESSION = f"SELECT {', '.join(_FIELDS)} FROM sessions"
_FSYNC_MODES = {"full": "FULL", "normal": "NORMAL"}


def _dumps(value: Any) -> str:
    # Compact and strict (no NaN): what we store is what a JSON client can parse.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class SQLiteStore(Store):
    """``Store`` on a local SQLite file: the default for a single machine.

    ``fsync="full"`` (default) runs ``synchronous=FULL``: the WAL is fsynced on
    every commit, so an event is on disk when ``append`` returns and survives a
    power loss. ``fsync="normal"`` runs ``synchronous=NORMAL``: the WAL is only
    fsynced at checkpoints, several times faster per commit; a crash of the
    process still loses nothing, but a power loss or kernel panic may drop the
    last commits (the database stays consistent, ids stay contiguous), which
    would let a client have seen an event the store then forgets.
    """

    def __init__(self, data_dir: Path, *, fsync: str = "full") -> None:
        if fsync not in _FSYNC_MODES:
            raise ValueError(f"fsync must be one of {sorted(_FSYNC_MODES)}, not {fsync!r}")
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self.fsync = fsync
        self._db: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._closed = False
        # Connections inherited across a fork: kept referenced, never closed (see module doc).
        self._abandoned: list[sqlite3.Connection] = []
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Pre-create with 0600 (SQLite gives -wal/-shm the same mode); O_CREAT
            # without O_TRUNC leaves an existing file's bytes alone.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise StoreError(f"cannot create the store at {self.path}: {exc}") from exc
        self._db = self._open()

    # -- connection --------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        """Connect, check that the file is ours, migrate it, then set the pragmas."""
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            db.execute("PRAGMA busy_timeout = 10000")
            # Check before anything that writes (journal_mode=WAL rewrites the header).
            if self._version(db) < SCHEMA_VERSION:
                self._migrate(db)
            self._enable_wal(db)
            db.execute(f"PRAGMA synchronous = {_FSYNC_MODES[self.fsync]}")
        except BaseException as exc:
            db.close()
            if isinstance(exc, sqlite3.Error):
                raise self._wrap(exc, "opening") from exc
            raise
        return db

    def _enable_wal(self, db: sqlite3.Connection) -> None:
        """Switch the file to WAL (persistent: only its first opener does it).

        The switch needs the file to itself and SQLite reports "locked" at once
        rather than through the busy handler, so processes that create the store
        together retry here until one of them has switched it."""
        deadline = time.monotonic() + 10.0
        while True:
            try:
                if db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() == "wal":
                    return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorname", "SQLITE_BUSY") != "SQLITE_BUSY":
                    raise
            if time.monotonic() > deadline:
                raise StoreError(f"cannot switch {self.path} to WAL mode: it stays locked")
            time.sleep(0.01)

    def _version(self, db: sqlite3.Connection) -> int:
        """The file's schema version (0 for an empty file); raise if it is not ours."""
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(f"{self.path} is not an SQLite database ({exc}); refusing to use it") from exc
        if not tables:
            return 0
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
        except sqlite3.DatabaseError:
            meta = {}  # a foreign table that happens to be called meta
        if meta.get("app") != APP_MARKER:
            raise StoreCorrupt(
                f"{self.path} is an SQLite database that sessionactors did not create "
                f"(tables: {', '.join(sorted(tables))}); refusing to use it"
            )
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError:
            raise StoreCorrupt(f"{self.path} has an unreadable schema_version") from None
        if version > SCHEMA_VERSION:
            raise SchemaMismatch(
                f"{self.path} has schema version {version}, newer than this version of "
                f"sessionactors knows ({SCHEMA_VERSION}); upgrade sessionactors"
            )
        return version

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Run the missing migration steps in one transaction (all or nothing)."""
        db.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            for step in _MIGRATIONS[self._version(db) :]:
                for statement in step:
                    db.execute(statement)
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _conn(self) -> sqlite3.Connection:
        """The connection of this process, reopened after an accidental fork."""
        if self._closed:
            raise StoreError(f"the store at {self.path} is closed")
        if self._pid != os.getpid():
            if self._db is not None:
                self._abandoned.append(self._db)
            self._pid = os.getpid()
            self._db = None
        if self._db is None:
            self._db = self._open()
        return self._db

    def _wrap(self, exc: sqlite3.Error, doing: str) -> StoreError:
        name = getattr(exc, "sqlite_errorname", "")
        if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "malformed" in str(exc):
            return StoreCorrupt(f"{self.path} is corrupt ({doing}): {exc}")
        return StoreError(f"store {self.path} failed {doing}: {exc}")

    @contextlib.contextmanager
    def _tx(self, doing: str) -> Iterator[sqlite3.Connection]:
        """A write transaction; BEGIN IMMEDIATE takes the write lock up front so
        the busy timeout applies (a deferred upgrade could fail without waiting)."""
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._wrap(exc, doing) from exc
        try:
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._wrap(exc, doing) from exc
            raise

    def _query(self, doing: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """One read statement (its own snapshot), all rows."""
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._wrap(exc, doing) from exc

    # -- events ------------------------------------------------------------
    def append(self, session_id: str, events: list[dict[str, Any]]) -> None:
        """Store ``events`` in one transaction, or nothing (see ``Store.append``)."""
        if not events:
            return
        rows = []
        for event in events:
            eid = event.get("id") if isinstance(event, dict) else None
            if not isinstance(eid, int) or isinstance(eid, bool):
                raise TypeError(f"every event must be a dict with an integer id, got {event!r:.200}")
            rows.append((session_id, eid, _dumps(event)))  # serialise before taking the lock
        with self._tx("appending events") as db:
            last = db.execute("SELECT max(id) FROM events WHERE session_id = ?", (session_id,)).fetchone()[0]
            expected = -1 if last is None else last
            for _, eid, _ in rows:
                expected += 1
                if eid != expected:
                    raise EventIdConflict(
                        f"session {session_id}: event id {eid} where {expected} was expected "
                        f"(last stored id {-1 if last is None else last})"
                    )
            db.executemany("INSERT INTO events (session_id, id, body) VALUES (?, ?, ?)", rows)

    def read(self, session_id: str, start_id: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Events with ``id >= start_id`` ascending, at most ``limit``, in one range query."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, not {limit}")
        rows = self._query(
            "reading events",
            "SELECT body FROM events WHERE session_id = ? AND id >= ? ORDER BY id LIMIT ?",
            (session_id, max(start_id, 0), -1 if limit is None else limit),
        )
        # One json.loads over the joined bodies is cheaper than one call per event.
        return json.loads("[" + ",".join(r[0] for r in rows) + "]")

    def last_event_id(self, session_id: str) -> int:
        """The highest stored id of the session, -1 when it has none."""
        sql = "SELECT max(id) FROM events WHERE session_id = ?"
        (last,) = self._query("reading the last event id", sql, (session_id,))[0]
        return -1 if last is None else int(last)

    # -- session records ---------------------------------------------------
    @staticmethod
    def _encode(name: str, value: Any) -> Any:
        if name in _JSON_FIELDS:
            return _dumps(value)
        if name == "state" and value not in SESSION_STATES:
            raise ValueError(f"state must be one of {SESSION_STATES}, not {value!r}")
        return value

    @staticmethod
    def _record(row: tuple[Any, ...]) -> SessionRecord:
        values = {n: json.loads(v) if n in _JSON_FIELDS else v for n, v in zip(_FIELDS, row, strict=True)}
        return SessionRecord(**values)

    def create_session(self, record: SessionRecord) -> None:
        """Insert a new record; StoreError if one with the same id exists."""
        values = tuple(self._encode(n, getattr(record, n)) for n in _FIELDS)
        sql = f"INSERT INTO sessions ({', '.join(_FIELDS)}) VALUES ({', '.join('?' * len(_FIELDS))})"
        try:
            with self._tx("creating a session") as db:
                db.execute(sql, values)
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise StoreError(f"session {record.session_id} already exists") from exc
            raise

    def get_session(self, session_id: str) -> SessionRecord | None:
        """The record of ``session_id``, or None."""
        rows = self._query("reading a session", f"{_SELECT_SESSION} WHERE session_id = ?", (session_id,))
        return self._record(rows[0]) if rows else None

    def update_session(self, session_id: str, **fields: Any) -> None:
        """Set some fields of an existing record (ValueError for unknown fields)."""
        unknown = set(fields) - set(_FIELDS)  # session_id cannot be passed: it is the positional
        if unknown:
            raise ValueError(f"cannot update session field(s): {', '.join(sorted(unknown))}")
        if not fields:
            if self.get_session(session_id) is None:
                raise StoreError(f"no session {session_id}")
            return
        sets = ", ".join(f"{name} = ?" for name in fields)
        values = tuple(self._encode(n, v) for n, v in fields.items())
        with self._tx("updating a session") as db:
            cur = db.execute(f"UPDATE sessions SET {sets} WHERE session_id = ?", (*values, session_id))
            if cur.rowcount == 0:
                raise StoreError(f"no session {session_id}")

    def list_sessions(self, state: str | None = None) -> list[SessionRecord]:
        """All records (or those in ``state``), oldest ``created_at`` first."""
        where, params = ("WHERE state = ?", (state,)) if state is not None else ("", ())
        sql = f"{_SELECT_SESSION} {where} ORDER BY created_at, session_id"
        return [self._record(r) for r in self._query("listing sessions", sql, params)]

    def count_sessions(self, state: str | None = None) -> int:
        """How many records (in ``state``)."""
        where, params = ("WHERE state = ?", (state,)) if state is not None else ("", ())
        return int(self._query("counting sessions", f"SELECT count(*) FROM sessions {where}", params)[0][0])

    def delete_session(self, session_id: str) -> bool:
        """Remove the record and every event of the session in one transaction."""
        with self._tx("deleting a session") as db:
            events = db.execute("DELETE FROM events WHERE session_id = ?", (session_id,)).rowcount
            records = db.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,)).rowcount
        return events + records > 0

    def reconcile_live_sessions(self) -> list[str]:
        """At daemon start-up: no session actor survived, so every 'live' record
        becomes 'passivated' (it rehydrates on the next INIT). Returns their ids."""
        with self._tx("reconciling live sessions") as db:
            sql = "SELECT session_id FROM sessions WHERE state = 'live' ORDER BY created_at"
            ids = [r[0] for r in db.execute(sql)]
            db.execute("UPDATE sessions SET state = 'passivated' WHERE state = 'live'")
        return ids

    def close(self) -> None:
        """Close this process's connection; later calls raise StoreError. Idempotent."""
        db, self._db, self._closed = self._db, None, True
        if db is not None and self._pid == os.getpid():
            db.close()
