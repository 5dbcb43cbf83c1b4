"""The event-log shards of the SQLite store and the helpers they share with it.

Events of session ``sid`` live in ``<data_dir>/events/shard-<k>.db`` where
``k = shard_index(sid, shards)`` (a SHA-256 of the id, stable across processes
and Python versions, unlike the salted ``hash()``). Every shard file has the
same pragmas as the main file (WAL, ``synchronous`` per ``fsync``, a 10 s busy
timeout), mode 0600, and a ``meta`` table with the app marker and the schema
version, so that a foreign file at a shard path is refused like a foreign main
file. A shard is opened lazily, on the first call that needs it: a session
actor only ever opens its own shard and the main file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import SchemaMismatch, StoreCorrupt, StoreError

__all__ = ["APP_MARKER", "EVENTS_DDL", "SHARD_DIR", "Shard", "shard_index"]

APP_MARKER = "sessionactors"
SHARD_DIR = "events"
SHARD_SCHEMA_VERSION = 3
"""A shard file's ``schema_version``: the store schema that introduced shards."""
FSYNC_MODES = {"full": "FULL", "normal": "NORMAL"}
BUSY_WAIT = 10.0  # seconds a writer waits for another process's write lock
POLL_FOR = 0.1  # seconds of quick polls for the write lock before SQLite's slow backoff
SQLITE_BUSY = 5  # the primary code; typeshed lacks sqlite3.SQLITE_BUSY
EVENTS_DDL = """CREATE TABLE events (
            session_id TEXT NOT NULL,
            id INTEGER NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (session_id, id)) WITHOUT ROWID"""


def shard_index(session_id: str, shards: int) -> int:
    """The shard of ``session_id`` among ``shards``: the same in every process."""
    return int(hashlib.sha256(session_id.encode()).hexdigest(), 16) % shards


def create_file(path: Path) -> None:
    """Pre-create ``path`` with mode 0600 (SQLite gives -wal/-shm the same mode);
    O_CREAT without O_TRUNC leaves an existing file's bytes alone."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    except OSError as exc:
        raise StoreError(f"cannot create the store at {path}: {exc}") from exc


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN/COMMIT) with a 10 s busy timeout."""
    try:
        db = sqlite3.connect(path, timeout=10.0, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    db.execute(f"PRAGMA busy_timeout = {int(BUSY_WAIT * 1000)}")
    return db


def finish_open(db: sqlite3.Connection, path: Path, fsync: str) -> None:
    """WAL mode, then ``synchronous`` per ``fsync``."""
    enable_wal(db, path)
    db.execute(f"PRAGMA synchronous = {FSYNC_MODES[fsync]}")


def enable_wal(db: sqlite3.Connection, path: Path) -> None:
    """Switch the file to WAL (persistent: only its first opener does it).

    The switch needs the file to itself and SQLite reports "locked" at once
    rather than through the busy handler, so processes that create the file
    together retry here until one of them has switched it."""
    deadline = time.monotonic() + 10.0
    while True:
        try:
            if db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() == "wal":
                return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
        if time.monotonic() > deadline:
            raise StoreError(f"cannot switch {path} to WAL mode: it stays locked")
        time.sleep(0.01)


def read_meta(db: sqlite3.Connection, path: Path) -> dict[str, str] | None:
    """The ``meta`` of one of our files, None for an empty file; raise StoreCorrupt
    if it is not an SQLite database or one that sessionactors did not create."""
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise StoreCorrupt(f"{path} is not an SQLite database ({exc}); refusing to use it") from exc
    if not tables:
        return None
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
    except sqlite3.DatabaseError:
        meta = {}  # a foreign table that happens to be called meta
    if meta.get("app") != APP_MARKER:
        raise StoreCorrupt(
            f"{path} is an SQLite database that sessionactors did not create "
            f"(tables: {', '.join(sorted(tables))}); refusing to use it"
        )
    return meta


def check_version(meta: dict[str, str], path: Path, known: int) -> int:
    """The ``schema_version`` in ``meta``; SchemaMismatch when newer than ``known``."""
    try:
        version = int(meta.get("schema_version", ""))
    except ValueError:
        raise StoreCorrupt(f"{path} has an unreadable schema_version") from None
    if version > known:
        raise SchemaMismatch(
            f"{path} has schema version {version}, newer than this version of "
            f"sessionactors knows ({known}); upgrade sessionactors"
        )
    return version


def wrap(exc: sqlite3.Error, path: Path, doing: str) -> StoreError:
    """The StoreError (StoreCorrupt for a damaged file) for an sqlite3 error."""
    name = getattr(exc, "sqlite_errorname", "")
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "malformed" in str(exc):
        return StoreCorrupt(f"{path} is corrupt ({doing}): {exc}")
    return StoreError(f"store {path} failed {doing}: {exc}")


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` is SQLITE_BUSY or one of its extended codes.

    The extended ones (SQLITE_BUSY_RECOVERY while another connection rebuilds the WAL
    index, SQLITE_BUSY_SNAPSHOT, SQLITE_BUSY_TIMEOUT) say "database is locked" too and
    are as transient: CI once failed a writer on one that an equality test let through.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # Python < 3.11 has no error codes: go by SQLite's message
        return "locked" in str(exc) or "busy" in str(exc)
    return bool(code & 0xFF == SQLITE_BUSY)


def begin_immediate(db: sqlite3.Connection, wait: float = BUSY_WAIT) -> None:
    """Take the write lock: poll every 0.2-2 ms for up to ``POLL_FOR``, then wait in
    SQLite's own busy handler, for ``wait`` seconds in all.

    That handler sleeps 1, 2, 5, 10, 15, 20, 25 ... 100 ms between tries: in a burst of
    activations or passivations, dozens of session actors slept through most of the time
    the lock was free (py-spy: 78% of their time in that sleep; 64 pooled INITs went
    from 62-75/s to 186-190/s with the polls). Under sustained overload (hundreds of
    writers, more commits than the disk can fsync) polling only burns CPU, so a writer
    that has not got the lock after ``POLL_FOR`` falls back to the handler's long sleeps.
    SQLite answers some busy states without calling the handler at all (a WAL index
    being recovered), so that phase retries too until ``wait`` is spent.
    """
    started = time.monotonic()
    db.execute("PRAGMA busy_timeout = 0")
    pause = 0.0002
    try:
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
            if time.monotonic() - started > POLL_FOR:
                break
            time.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, 0.002)
    finally:
        db.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
    while True:
        try:
            db.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() - started > wait:
                raise
        time.sleep(random.uniform(0.001, 0.01))


_TURN_FDS: dict[str, tuple[int, int]] = {}  # lock file -> (pid that opened it, fd)


def _turn_fd(path: Path) -> int | None:
    """This process's descriptor on ``<file>.lock``; None if it cannot be opened (a
    read-only directory: SQLite's own lock still serialises the writers, only less fairly).

    Per process: a descriptor inherited across a fork shares its parent's open file
    description, and with it the parent's flock, so a forked actor opens its own (the
    inherited one is left open and unused, like an inherited SQLite connection).
    """
    key = f"{path}.lock"
    held = _TURN_FDS.get(key)
    if held is not None and held[0] == os.getpid():
        return held[1]
    try:
        fd = os.open(key, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    _TURN_FDS[key] = (os.getpid(), fd)
    return fd


@contextlib.contextmanager
def writer_turn(path: Path) -> Iterator[None]:
    """Queue for a file's write lock in the kernel (``flock``) before asking SQLite for it.

    SQLite's lock has no queue: a writer that finds it taken sleeps (1 to 100 ms at a time)
    and tries again, so under load the sleepers lose to whoever arrives at the right moment.
    With 500 sessions x 2 actions/s one append waited out its whole 10 s and failed
    ("database is locked"). A blocked ``flock`` is woken as soon as the lock is released,
    and costs two system calls when nobody holds it. It is released by the kernel if its
    holder dies, so a killed actor never leaves it taken.
    """
    fd = _turn_fd(path)
    if fd is None:
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def transaction(db: sqlite3.Connection, path: Path, doing: str) -> Iterator[sqlite3.Connection]:
    """A write transaction, in turn (``writer_turn``); BEGIN IMMEDIATE takes SQLite's
    write lock up front (a deferred upgrade could fail without waiting)."""
    with writer_turn(path):
        try:
            begin_immediate(db)
        except sqlite3.Error as exc:
            raise wrap(exc, path, doing) from exc
        try:
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise wrap(exc, path, doing) from exc
            raise


class ProcessConnection:
    """One SQLite connection per process: opened on first use, and opened again after an
    accidental fork (the inherited one is kept referenced but never used or closed: closing
    it would release the parent's locks; see sqlite_store's module doc)."""

    def __init__(self, opener: Callable[[], sqlite3.Connection]) -> None:
        self._opener = opener
        self._db: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._abandoned: list[sqlite3.Connection] = []

    def get(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            if self._db is not None:
                self._abandoned.append(self._db)
            self._pid = os.getpid()
            self._db = None
        if self._db is None:
            self._db = self._opener()
        return self._db

    def close(self) -> None:
        """Close this process's connection (never one inherited across a fork)."""
        db, self._db = self._db, None
        if db is not None and self._pid == os.getpid():
            db.close()


class Shard:
    """One event-log file and this process's connection to it."""

    def __init__(self, path: Path, fsync: str) -> None:
        self.path = path
        self.fsync = fsync
        self._conn = ProcessConnection(self._open)

    def conn(self) -> sqlite3.Connection:
        """This process's connection to the shard."""
        return self._conn.get()

    def _open(self) -> sqlite3.Connection:
        create_file(self.path)
        db = connect(self.path)
        try:
            # Check before anything that writes (journal_mode=WAL rewrites the header).
            if read_meta(db, self.path) is None:
                with transaction(db, self.path, "creating an event shard"):
                    if read_meta(db, self.path) is None:  # re-read under the write lock
                        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
                        db.execute(
                            "INSERT INTO meta (key, value) VALUES ('app', ?), ('schema_version', ?)",
                            (APP_MARKER, str(SHARD_SCHEMA_VERSION)),
                        )
                        db.execute(EVENTS_DDL)
            meta = read_meta(db, self.path)
            assert meta is not None
            check_version(meta, self.path, SHARD_SCHEMA_VERSION)
            finish_open(db, self.path, self.fsync)
        except BaseException as exc:
            db.close()
            if isinstance(exc, sqlite3.Error):
                raise wrap(exc, self.path, "opening") from exc
            raise
        return db

    def tx(self, doing: str) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A write transaction on the shard."""
        return transaction(self.conn(), self.path, doing)

    def query(self, doing: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """One read statement (its own snapshot), all rows."""
        try:
            return self.conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise wrap(exc, self.path, doing) from exc

    def close(self) -> None:
        """Close this process's connection (never one inherited across a fork)."""
        self._conn.close()
