"""The embedded durable store: a registry file and one journal per session.

Why a journal per session (schema 4): every session actor is its own process and appends
its events durably. In shared SQLite files (one, then 16 shards: schema 3) the writers
queued for each file's one write lock: at 500 sessions x 2 events/s the round trip reached
2 s at p50 (docs/benchmarks.md, run F), and an event took 1,255 bytes on disk. Now each
session's events are an append-only file that only its own actor writes
(``sessionactors.store.journal``: one ``write`` and one ``fdatasync`` per append, no
shared lock), as in per-entity event sourcing; the session records, written far less
often and by the supervisor, stay in the main file, the registry.

Layout of ``<data_dir>/sessionactors.db`` (the registry, SQLite in WAL mode):

* ``meta(key, value)``: ``app`` = ``'sessionactors'`` (tells our file from a
  foreign database), ``schema_version``, ``shards`` (the count the schema 3 layout
  used, kept for its migration) and ``unmigrated_shards`` (see ``migrate``).
* ``sessions``: one row per ``SessionRecord``; ``args`` and ``runtime_state``
  are JSON text.

Writers of the registry take turns in the kernel first: ``flock`` on ``<file>.lock``
(``sqlite_shards.writer_turn``), then ``BEGIN IMMEDIATE``.

Migrations: a fresh file runs the SQL steps to version 2; 2 -> 3 moves the events of
the main file into shards in batches (resumable: rows already copied are rewritten with
``INSERT OR REPLACE``); 3 -> 4 moves the shards into journals (``migrate``, resumable).
All of it runs under one ``flock`` (``migrate.migration_lock``), so that no process of
this version uses a half-migrated store.

Fork and threads: every process opens its own ``SQLiteStore``. A connection or
descriptor must never be used on both sides of a fork; if it happens by accident, the
store notices the pid change and opens fresh ones in the child (inherited SQLite
connections are left untouched, never closed, so that the child cannot disturb the
parent's locks or WAL). A store is used from the thread (or the eventlet hub thread)
that opened it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import EventIdConflict, StoreCorrupt, StoreError
from . import migrate
from . import sqlite_shards as shards_mod
from .base import RECORD_FIELDS, SessionRecord, Store, encode_record_field, event_json, record_from_row
from .journal import Journal, journal_path
from .sqlite_shards import APP_MARKER, EVENTS_DDL, FSYNC_MODES, SHARD_DIR, Shard, shard_index

__all__ = ["DB_NAME", "DEFAULT_SHARDS", "SCHEMA_VERSION", "SQLiteStore"]

DB_NAME = "sessionactors.db"
SCHEMA_VERSION = 4
DEFAULT_SHARDS = 16
"""Shards of the schema 3 layout (only a version 2 file migrating through it uses them)."""
OPEN_JOURNALS = 64
"""Journals a process keeps open (the gateway and the supervisor read many sessions)."""
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
assert len(_MIGRATIONS) + 2 == SCHEMA_VERSION

_FIELDS = RECORD_FIELDS
_SELECT_SESSION = f"SELECT {', '.join(_FIELDS)} FROM sessions"


_dumps = event_json  # compact and strict (no NaN): what a JSON client can parse


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

    def __init__(
        self,
        data_dir: Path,
        *,
        fsync: str = "full",
        shards: int = DEFAULT_SHARDS,
        quota_bytes: int | None = None,
    ) -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {sorted(FSYNC_MODES)}, not {fsync!r}")
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise ValueError(f"shards must be a positive integer, not {shards!r}")
        if quota_bytes is not None and (isinstance(quota_bytes, bool) or quota_bytes < 1):
            raise ValueError(f"quota_bytes must be a positive integer or None, not {quota_bytes!r}")
        self.quota_bytes = quota_bytes
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self.fsync = fsync
        self.shards = shards
        """The number of event shards: the recorded one once the main file is open."""
        self._shards: dict[int, Shard] = {}
        self._journals: OrderedDict[str, Journal] = OrderedDict()
        self._unmigrated: set[int] = set()
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
            if self._version(db) < SCHEMA_VERSION or migrate.unmigrated(db):
                with migrate.migration_lock(self.path):
                    self._migrate(db)
            shards_mod.finish_open(db, self.path, self.fsync)
            self.shards = self._recorded_shards(db)
            self._unmigrated = migrate.unmigrated(db)
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
        """Run the missing SQL steps in one transaction (all or nothing), move the
        events into their shards (version 2 -> 3), then the shards into journals
        (3 -> 4); resumable (see the module doc). The migration lock is held."""
        if self._version(db) >= SCHEMA_VERSION and not migrate.unmigrated(db):
            return  # another process finished it while we waited for the lock
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
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()
        migrate.shards_to_journals(self.path, db, durable=self.fsync == "full")

    def _move_events(self, db: sqlite3.Connection) -> bool:
        """One batch of the 2 -> 3 migration under the main write lock; True when done.

        The shard count is recorded by the first batch, so an interrupted move
        resumes with the same one. A crash after a shard commit and before the
        main commit leaves the rows in both files: the next run rewrites them."""
        db.execute("BEGIN IMMEDIATE")
        try:
            if self._version(db) >= SCHEMA_VERSION - 1:  # already in shards
                db.execute("COMMIT")
                return True
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('shards', ?)", (str(self.shards),))
            self.shards = self._recorded_shards(db)
            sql = "SELECT session_id, id, body FROM events ORDER BY session_id, id LIMIT ?"
            rows = db.execute(sql, (MOVE_BATCH,)).fetchall()
            if not rows:
                db.execute("DROP TABLE events")
                db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION - 1),)
                )
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

    def _journal(self, session_id: str) -> Journal:
        """This process's handle on the journal of ``session_id`` (least recently used
        ones are closed beyond ``OPEN_JOURNALS``)."""
        if self._closed:
            raise StoreError(f"the store at {self.path} is closed")
        journal = self._journals.get(session_id)
        if journal is not None:
            self._journals.move_to_end(session_id)
            return journal
        if self._unmigrated and shard_index(session_id, self.shards) in self._unmigrated:
            if not journal_path(self.data_dir, session_id).exists():
                shard = self.data_dir / SHARD_DIR / f"shard-{shard_index(session_id, self.shards)}.db"
                raise StoreCorrupt(
                    f"the events of session {session_id} are in {shard}, which could not be "
                    "read to migrate it (see the daemon log); repair or restore that file"
                )
        journal = self._journals[session_id] = Journal(
            self.data_dir, session_id, durable=self.fsync == "full"
        )
        while len(self._journals) > OPEN_JOURNALS:
            self._journals.popitem(last=False)[1].close()
        return journal

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
        """Store ``events`` durably in the session's journal, or nothing (``Store.append``)."""
        if not events:
            return
        lines = []
        expected = None
        for event in events:
            eid = event.get("id") if isinstance(event, dict) else None
            if not isinstance(eid, int) or isinstance(eid, bool):
                raise TypeError(f"every event must be a dict with an integer id, got {event!r:.200}")
            if expected is not None and eid != expected:
                raise EventIdConflict(f"session {session_id}: event id {eid} where {expected} was expected")
            expected = eid + 1
            lines.append(_dumps(event).encode())  # serialise before taking the lock
        self._journal(session_id).append(lines, events[0]["id"], self.quota_bytes)

    def read(self, session_id: str, start_id: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Events with ``id >= start_id`` ascending, at most ``limit``: one read, one parse."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, not {limit}")
        return self._journal(session_id).read(max(start_id, 0), limit)

    def last_event_id(self, session_id: str) -> int:
        """The highest stored id of the session, -1 when it has none."""
        return self._journal(session_id).last_event_id()

    def event_bytes(self, session_id: str) -> int:
        """Bytes of the session's stored events (``Store.event_bytes``), from the journal's size."""
        return self._journal(session_id).event_bytes()

    # -- session records ---------------------------------------------------
    _encode = staticmethod(encode_record_field)
    _record = staticmethod(record_from_row)

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
        """Remove the journal of the session, then its record (in the main file). A
        crash in between leaves a record without events, never events without a
        record; deleting again finishes the job."""
        journal = self._journals.pop(session_id, None)
        if journal is not None:
            journal.close()
        try:
            os.unlink(journal_path(self.data_dir, session_id))
            events = 1
        except FileNotFoundError:
            events = 0
        except OSError as exc:
            raise StoreError(f"cannot delete the journal of session {session_id}: {exc}") from exc
        with self._tx("deleting a session") as db:
            records = db.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,)).rowcount
        return events + records > 0

    def reconcile_live_sessions(self) -> list[str]:
        """At daemon start-up: no session actor survived, so every 'live' record
        becomes 'passivated' (it rehydrates on the next INIT). Returns their ids.

        Journals without a record are not swept here: ``delete_session`` never
        leaves them behind and ``append`` before ``create_session`` is allowed."""
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
        for journal in self._journals.values():
            journal.close()
        self._journals.clear()
        self._main.close()
