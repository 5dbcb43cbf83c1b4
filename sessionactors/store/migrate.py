"""Schema 3 -> 4 of the SQLite store: the events move from the shards into journals.

What it is for: a data directory written by the sharded layout (``events/shard-<k>.db``,
``sqlite_shards``) is taken to one journal per session (``journal``) on the first open by
this version, before anything uses it.

Resumable, like the 2 -> 3 move: the whole move runs under an exclusive ``flock`` on
``<data_dir>/sessionactors.db.migrate`` (another process opening the store meanwhile waits,
then finds the version already 4). A shard's sessions are each written to a journal
atomically (temporary file, fsync, rename), and the shard's files are deleted only once
all of them are; ``schema_version`` becomes 4 once every shard is gone. A crash at any
point leaves every event in a shard or a complete journal (or both): the next open
rewrites the journals of the shards still present from their rows.

A shard that cannot be read (damaged) does not stop the daemon: it is left in place and
named in the meta key ``unmigrated_shards``, the move of it is retried at each open, and
until it succeeds a session whose events it holds (found by ``shard_index``) and which has
no journal gets ``StoreCorrupt`` naming the file, while every other session works.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from ..errors import StoreCorrupt, StoreError
from . import sqlite_shards as shards_mod
from .journal import journal_path, write_journal
from .sqlite_shards import SHARD_DIR

__all__ = ["migration_lock", "shards_to_journals", "unmigrated"]

log = logging.getLogger("sessionactors.store")


@contextlib.contextmanager
def migration_lock(main: Path) -> Iterator[None]:
    """An exclusive, blocking lock for the whole migration (released by the kernel if we die)."""
    try:
        fd = os.open(f"{main}.migrate", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot lock {main} for its migration: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _move_shard(data_dir: Path, path: Path, durable: bool) -> int:
    """Write a journal for every session in the shard at ``path``, then delete the shard;
    the number of events moved. Raises sqlite3.Error/StoreError if it cannot be read."""
    db = shards_mod.connect(path)
    moved = 0
    try:
        if shards_mod.read_meta(db, path) is not None:
            sids = [r[0] for r in db.execute("SELECT DISTINCT session_id FROM events ORDER BY session_id")]
            for sid in sids:
                rows = db.execute("SELECT body FROM events WHERE session_id = ? ORDER BY id", (sid,))
                lines = [body.encode() + b"\n" for (body,) in rows]
                write_journal(journal_path(data_dir, sid), sid, lines, durable)
                moved += len(lines)
    finally:
        db.close()
    for suffix in ("", "-wal", "-shm", ".lock"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    return moved


def shards_to_journals(main: Path, db: sqlite3.Connection, durable: bool) -> list[int]:
    """Move every shard left beside the main file ``main`` (whose connection is ``db``;
    the migration lock held); returns the indexes of the shards that could not be read
    (recorded in ``unmigrated_shards``)."""
    data_dir = main.parent
    failed: list[int] = []
    shard_dir = data_dir / SHARD_DIR
    for path in sorted(shard_dir.glob("shard-*.db"), key=lambda p: p.name):
        try:
            moved = _move_shard(data_dir, path, durable)
            log.info("store: moved %d events from %s into journals", moved, path.name)
        except (sqlite3.DatabaseError, StoreCorrupt) as exc:  # unreadable; a failed write stops the move
            log.error("store: cannot move the events of %s into journals (kept in place): %s", path, exc)
            failed.append(int(path.stem.split("-", 1)[1]))
    with shards_mod.transaction(db, main, "finishing the move into journals"):
        db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('unmigrated_shards', ?)",
            (",".join(str(k) for k in failed),),
        )
        db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    if not failed:
        with contextlib.suppress(OSError):
            shard_dir.rmdir()
    return failed


def unmigrated(db: sqlite3.Connection) -> set[int]:
    """The shards recorded as not (yet) moved."""
    row = db.execute("SELECT value FROM meta WHERE key = 'unmigrated_shards'").fetchone()
    return {int(k) for k in row[0].split(",") if k.strip().isdigit()} if row and row[0] else set()
