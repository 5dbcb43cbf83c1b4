"""The embedded durable store: SQLite files in WAL mode under the data directory.

Why the event log is sharded: every session actor is its own process and
appends its events durably, and SQLite has one write lock per file. With every
event in one file, 100+ busy sessions each spent 89-95% of their wall time
waiting at ``BEGIN IMMEDIATE``, commits capped at 400-710/s, and at 500
sessions appends failed with "database is locked" after the 10 s busy timeout
(a standalone test: 30 writers on one file reached 2,120 commits/s, 91%
waiting; with one file each, 5,195 commits/s, 1% waiting). So the events are
spread over ``shards`` files (16 by default) by a stable hash of the session
id, and sessions rarely share a write lock; the session records, written far
less often, stay in the main file.

Layout of ``<data_dir>/sessionactors.db`` (the main file):

* ``meta(key, value)``: ``app`` = ``'sessionactors'`` (tells our file from a
  foreign database), ``schema_version`` and ``shards``, the number of event
  shards, fixed when the store is created (a different constructor argument
  on a later open is ignored, so an existing store is never scattered).
* ``sessions``: one row per ``SessionRecord``; ``args`` and ``runtime_state``
  are JSON text.

Writers of one file take turns in the kernel first: ``flock`` on ``<file>.lock``
(``sqlite_shards.writer_turn``), then ``BEGIN IMMEDIATE``. SQLite's lock has no
queue (a writer that finds it taken sleeps up to 100 ms and tries again), so under
load some writers starved; a blocked ``flock`` wakes as soon as the lock is free.

and of ``<data_dir>/events/shard-<k>.db`` (``sessionactors.sqlite_shards``):

* ``meta``: ``app`` and ``schema_version``, as in the main file.
* ``events(session_id, id, body)``: the clustered primary key makes a replay
  one ordered range scan; ``body`` is the event's compact JSON, returned as is.

Schema version 3 introduced the shards. Opening a version 2 file moves its
events into their shards in batches (each batch committed in the shards, then
deleted from the main file under the main write lock) and then drops the main
``events`` table; an interrupted move resumes on the next open (rows already
copied are rewritten with ``INSERT OR REPLACE``). The main file's write lock
is held per batch, and the version only becomes 3 once the table is gone, so
no process of this version uses the shards before the move is complete.

Fork and threads: every process opens its own ``SQLiteStore``. A connection
must never be used on both sides of a fork; if it happens by accident, the
store notices the pid change and opens fresh connections in the child (the
inherited ones are left untouched, never closed, so that the child cannot
disturb the parent's locks or WAL). A store is used from the thread (or the
eventlet hub thread) that opened it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import EventIdConflict, StoreCorrupt, StoreError
from . import sqlite_shards as shards_mod
from .base import SESSION_STATES, SessionRecord, Store
from .sqlite_shards import APP_MARKER, EVENTS_DDL, FSYNC_MODES, SHARD_DIR, Shard, shard_index

__all__ = ["DB_NAME", "DEFAULT_SHARDS", "SCHEMA_VERSION", "SQLiteStore"]

DB_NAME = "sessionactors.db"
SCHEMA_VERSION = 3
DEFAULT_SHARDS = 16
MOVE_BATCH = 5000
"""Events moved per transaction by the version 2 -> 3 migration."""

# _MIGRATIONS[n] takes the main file from schema version n to n + 1 in SQL; a
# fresh file (version 0) runs them all, so the upgrade path is exercised on every
# install. The last step, 2 -> 3 (events into shards), is code: _move_events.
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
        EVENTS_DDL,
    ),
    # 1 -> 2: GitHub login next to the user id, token revocation, ordered listing.
    (
        "ALTER TABLE sessions ADD COLUMN owner_login TEXT",
        "ALTER TABLE sessions ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX sessions_state_created ON sessions (state, created_at)",
    ),
]
assert len(_MIGRATIONS) + 1 == SCHEMA_VERSION

_FIELDS = tuple(f.name for f in dataclasses.fields(SessionRecord))
_JSON_FIELDS = frozenset({"args", "runtime_state"})
_SELECT_SESSION = f"SELECT {', '.join(_FIELDS)} FROM sessions"


def _dumps(value: Any) -> str:
    # Compact and strict (no NaN): what we store is what a JSON client can parse.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class SQLiteStore(Store):
    """``Store`` on local SQLite files: the default for a single machine.

    ``fsync="full"`` (default) runs ``synchronous=FULL``: the WAL is fsynced on
    every commit, so an event is on disk when ``append`` returns and survives a
    power loss. ``fsync="normal"`` runs ``synchronous=NORMAL``: the WAL is only
    fsynced at checkpoints, several times faster per commit; a crash of the
    process still loses nothing, but a power loss or kernel panic may drop the
    last commits (the database stays consistent, ids stay contiguous), which
    would let a client have seen an event the store then forgets.

    ``shards`` is the number of event files of a *new* store; an existing store
    keeps the number recorded when it was created (see the module docstring).
    """

    def __init__(self, data_dir: Path, *, fsync: str = "full", shards: int = DEFAULT_SHARDS) -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {sorted(FSYNC_MODES)}, not {fsync!r}")
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise ValueError(f"shards must be a positive integer, not {shards!r}")
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self.fsync = fsync
        self.shards = shards
        """The number of event shards: the recorded one once the main file is open."""
        self._shards: dict[int, Shard] = {}
        self._main = shards_mod.ProcessConnection(self._open)
        self._closed = False
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store at {self.path}: {exc}") from exc
        shards_mod.create_file(self.path)
        self._main.get()  # open now: a foreign or corrupt file fails here, not on first use

    # -- connection --------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        """Connect, check that the file is ours, migrate it, then set the pragmas."""
        db = shards_mod.connect(self.path)
        try:
            # Check before anything that writes (journal_mode=WAL rewrites the header).
            if self._version(db) < SCHEMA_VERSION:
                self._migrate(db)
            shards_mod.finish_open(db, self.path, self.fsync)
            self.shards = self._recorded_shards(db)
        except BaseException as exc:
            db.close()
            if isinstance(exc, sqlite3.Error):
                raise self._wrap(exc, "opening") from exc
            raise
        return db

    def _version(self, db: sqlite3.Connection) -> int:
        """The file's schema version (0 for an empty file); raise if it is not ours."""
        meta = shards_mod.read_meta(db, self.path)
        return 0 if meta is None else shards_mod.check_version(meta, self.path, SCHEMA_VERSION)

    def _recorded_shards(self, db: sqlite3.Connection) -> int:
        row = db.execute("SELECT value FROM meta WHERE key = 'shards'").fetchone()
        try:
            count = int(row[0]) if row is not None else 0
        except ValueError:
            count = 0
        if count < 1:
            raise StoreCorrupt(f"{self.path} has no valid number of event shards in its meta table")
        return count

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Run the missing SQL steps in one transaction (all or nothing), then move
        the events into their shards (version 2 -> 3, resumable: see module doc)."""
        db.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = self._version(db)
            for step in _MIGRATIONS[version:]:
                for statement in step:
                    db.execute(statement)
            if version < len(_MIGRATIONS):
                db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(len(_MIGRATIONS)),),
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        while not self._move_events(db):
            pass

    def _move_events(self, db: sqlite3.Connection) -> bool:
        """One batch of the 2 -> 3 migration under the main write lock; True when done.

        The shard count is recorded by the first batch, so an interrupted move
        resumes with the same one. A crash after a shard commit and before the
        main commit leaves the rows in both files: the next run rewrites them."""
        db.execute("BEGIN IMMEDIATE")
        try:
            if self._version(db) >= SCHEMA_VERSION:  # another process finished it
                db.execute("COMMIT")
                return True
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('shards', ?)", (str(self.shards),))
            self.shards = self._recorded_shards(db)
            sql = "SELECT session_id, id, body FROM events ORDER BY session_id, id LIMIT ?"
            rows = db.execute(sql, (MOVE_BATCH,)).fetchall()
            if not rows:
                db.execute("DROP TABLE events")
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
                db.execute("COMMIT")
                return True
            by_shard: dict[int, list[tuple[str, int, str]]] = {}
            for row in rows:
                by_shard.setdefault(shard_index(row[0], self.shards), []).append(row)
            for k, batch in sorted(by_shard.items()):
                with self._shard_at(k).tx("moving events into their shard") as sdb:
                    sdb.executemany(
                        "INSERT OR REPLACE INTO events (session_id, id, body) VALUES (?, ?, ?)", batch
                    )
            db.executemany("DELETE FROM events WHERE session_id = ? AND id = ?", [r[:2] for r in rows])
            db.execute("COMMIT")
            return False
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _conn(self) -> sqlite3.Connection:
        """The main connection of this process, reopened after an accidental fork."""
        if self._closed:
            raise StoreError(f"the store at {self.path} is closed")
        return self._main.get()

    def _shard_at(self, k: int) -> Shard:
        shard = self._shards.get(k)
        if shard is None:
            path = self.data_dir / SHARD_DIR / f"shard-{k}.db"
            shard = self._shards[k] = Shard(path, self.fsync)
        return shard

    def _shard(self, session_id: str) -> Shard:
        """The shard holding the events of ``session_id`` (opened on first use)."""
        if self._closed:
            raise StoreError(f"the store at {self.path} is closed")
        return self._shard_at(shard_index(session_id, self.shards))

    def _wrap(self, exc: sqlite3.Error, doing: str) -> StoreError:
        return shards_mod.wrap(exc, self.path, doing)

    @contextlib.contextmanager
    def _tx(self, doing: str) -> Iterator[sqlite3.Connection]:
        """A write transaction on the main file."""
        with shards_mod.transaction(self._conn(), self.path, doing) as db:
            yield db

    def _query(self, doing: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """One read statement on the main file (its own snapshot), all rows."""
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
        with self._shard(session_id).tx("appending events") as db:
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
        rows = self._shard(session_id).query(
            "reading events",
            "SELECT body FROM events WHERE session_id = ? AND id >= ? ORDER BY id LIMIT ?",
            (session_id, max(start_id, 0), -1 if limit is None else limit),
        )
        # One json.loads over the joined bodies is cheaper than one call per event.
        return json.loads("[" + ",".join(r[0] for r in rows) + "]")

    def last_event_id(self, session_id: str) -> int:
        """The highest stored id of the session, -1 when it has none."""
        sql = "SELECT max(id) FROM events WHERE session_id = ?"
        (last,) = self._shard(session_id).query("reading the last event id", sql, (session_id,))[0]
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

    def create_sessions(self, records: list[SessionRecord]) -> None:
        """Insert new records, all or none; StoreError if one with the same id exists."""
        rows = [tuple(self._encode(n, getattr(r, n)) for n in _FIELDS) for r in records]
        sql = f"INSERT INTO sessions ({', '.join(_FIELDS)}) VALUES ({', '.join('?' * len(_FIELDS))})"
        try:
            with self._tx("creating a session") as db:
                db.executemany(sql, rows)
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                ids = ", ".join(r.session_id for r in records)
                raise StoreError(f"session {ids} already exists") from exc
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
        """Remove the events of the session (in its shard), then its record (in the
        main file): two transactions. A crash in between leaves a record without
        events, never events without a record; deleting again finishes the job."""
        with self._shard(session_id).tx("deleting a session's events") as sdb:
            events = sdb.execute("DELETE FROM events WHERE session_id = ?", (session_id,)).rowcount
        with self._tx("deleting a session") as db:
            records = db.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,)).rowcount
        return events + records > 0

    def reconcile_live_sessions(self) -> list[str]:
        """At daemon start-up: no session actor survived, so every 'live' record
        becomes 'passivated' (it rehydrates on the next INIT). Returns their ids.

        Events without a record are not swept here: ``delete_session`` never
        leaves them behind, ``append`` before ``create_session`` is allowed, and
        finding them would scan every shard at each start-up."""
        with self._tx("reconciling live sessions") as db:
            sql = "SELECT session_id FROM sessions WHERE state = 'live' ORDER BY created_at"
            ids = [r[0] for r in db.execute(sql)]
            db.execute("UPDATE sessions SET state = 'passivated' WHERE state = 'live'")
        return ids

    def close(self) -> None:
        """Close this process's connections; later calls raise StoreError. Idempotent."""
        self._closed = True
        for shard in self._shards.values():
            shard.close()
        self._main.close()
