"""One session's event log: an append-only file of compact JSON lines (schema 4).

Why a file per session: every session actor is its own process and appends durably.
With the events of many sessions in shared SQLite files, 500 sessions x 2 events/s
spent most of their time queueing for the files' write locks (``bench.sqlite_contention``:
90.8% waiting with 30 writers on one file, 1.4% with a file each) and each event took
1,255 bytes on disk (the session id in every key, B-tree pages, the WAL). Here a session's
only writer is its own actor, so the lock it takes is never contended, an append is one
``write`` and one ``fdatasync``, and an event costs its JSON plus a newline.

Layout of ``<data_dir>/journals/<xx>/<name>.log`` (``xx``: two hex digits of a SHA-256 of
the id, so that no directory holds more than a few hundred thousand files; ``name``: the
session id when it is made of ``[A-Za-z0-9_-]``, else ``~`` and its SHA-256):

* line 1, the header: ``{"app":"sessionactors","journal":1,"session_id":...}``; written
  with the file (a temporary file fsynced and renamed into place, then the directory
  fsynced), so a journal is never without it. A file that does not start with it is
  refused (``StoreCorrupt``) and never written.
* then one event per line, ids ascending and contiguous, each line the event's
  ``base.event_json`` (which never contains a raw newline and ends in ``}``). The lines
  of one append but its last end in ``" \n"``: a batch is complete once a line ends in
  ``"}\n"``, which makes an append of several events all or nothing.

Crash safety: an append is one ``write`` of whole lines under an exclusive ``flock`` on
the file, then ``fdatasync`` (``fsync="full"``), and only then the lock is released and
``append`` returns. A writer killed mid-write (the kernel may have written part of it)
leaves at most an incomplete last batch: it was never acknowledged; readers ignore it and
the next append truncates it away. Readers take the lock shared to learn the file's size, so they never see an event
that is not yet on disk. The index (the offset of every line) is rebuilt from the file
when it is opened and extended as it grows: nothing but the events is stored.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
from array import array
from pathlib import Path
from typing import Any

from ..errors import EventIdConflict, QuotaExceeded, StoreCorrupt, StoreError

__all__ = ["JOURNAL_DIR", "Journal", "journal_path", "write_journal"]

JOURNAL_DIR = "journals"
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")


def journal_path(data_dir: Path, session_id: str) -> Path:
    """Where the journal of ``session_id`` lives (whether or not it exists)."""
    digest = hashlib.sha256(session_id.encode()).hexdigest()
    name = session_id if _SAFE_ID.fullmatch(session_id) else "~" + digest
    return data_dir / JOURNAL_DIR / digest[:2] / f"{name}.log"


def header(session_id: str) -> bytes:
    """The first line of the journal of ``session_id``."""
    body = {"app": "sessionactors", "journal": 1, "session_id": session_id}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_journal(
    path: Path, session_id: str, lines: list[bytes], durable: bool = True, replace: bool = True
) -> None:
    """Create (or, with ``replace``, replace) the journal at ``path`` atomically with
    ``lines`` (each ending in a newline): a temporary file, fsynced, moved into place, the
    directory fsynced. Without ``replace`` an existing journal is left alone (``link``
    fails for an existing name, where a rename would drop what another writer appended)."""
    created = not path.parent.exists()
    path.parent.parent.mkdir(mode=0o700, exist_ok=True)  # parents=True would ignore the mode
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, header(session_id) + b"".join(lines))
        if durable:
            os.fsync(fd)
    except BaseException:
        os.unlink(tmp)  # a full disk must not leave half a journal behind
        raise
    finally:
        os.close(fd)
    if replace:
        os.replace(tmp, path)
    else:
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another incarnation created it first: use theirs
        finally:
            os.unlink(tmp)
    if durable:
        _fsync_dir(path.parent)
        if created:
            _fsync_dir(path.parent.parent)
            _fsync_dir(path.parent.parent.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Journal:
    """This process's handle on one session's journal: its descriptor and line index."""

    def __init__(self, data_dir: Path, session_id: str, *, durable: bool = True) -> None:
        self.session_id = session_id
        self.path = journal_path(data_dir, session_id)
        self.durable = durable
        self._header = header(session_id)
        self._fd: int | None = None
        self._pid = os.getpid()
        self._size = 0
        """Bytes of complete lines indexed so far."""
        self._offsets = array("q")
        """Start offset of every indexed event line."""
        self._first_id = 0
        self._checked = 0
        """Lines checked by ``_check_tail`` (the last one's id matched the index)."""
        self._joins = 0
        """Lines that end in ``" \n"`` (not the last of their batch)."""

    # -- opening and indexing ------------------------------------------------
    def _open(self, create: bool) -> bool:
        """Open the file (creating it when ``create``); False when it does not exist."""
        if self._fd is not None and self._pid != os.getpid():
            # Inherited across a fork: the open file description (and any flock on it) is
            # the parent's. Forget it (closing our copy leaves the parent's alone).
            self._reset()
        if self._fd is not None:
            try:
                if os.fstat(self._fd).st_nlink > 0:
                    return True
            except OSError:
                pass
            self._reset()  # deleted (the session was deleted): start over on the new file
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                return False
            try:
                write_journal(self.path, self.session_id, [], self.durable, replace=False)
                fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                raise StoreError(f"cannot create the journal {self.path}: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"cannot open the journal {self.path}: {exc}") from exc
        self._fd, self._pid = fd, os.getpid()
        return True

    def _reset(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._size, self._offsets, self._first_id, self._joins = None, 0, array("q"), 0, 0
        self._checked = 0

    def _corrupt(self, why: str) -> StoreCorrupt:
        return StoreCorrupt(f"the journal {self.path} of session {self.session_id} is corrupt: {why}")

    def _refresh(self, size: int) -> None:
        """Index the complete lines between what is indexed and ``size`` (lock held)."""
        assert self._fd is not None
        if size < self._size:
            raise self._corrupt(f"it shrank from {self._size} to {size} bytes")
        if self._size == 0:
            head = os.pread(self._fd, len(self._header), 0)
            if head != self._header:
                raise self._corrupt("it does not start with its header line (a foreign or damaged file)")
            self._size = len(self._header)
        if size == self._size:
            return
        data = os.pread(self._fd, size - self._size, self._size)
        last = data.rfind(b"}\n")  # an incomplete last batch was never acknowledged
        end = last + 2 if last >= 0 else 0
        self._joins += data.count(b" \n", 0, end)
        pos, base, offsets = 0, self._size, self._offsets
        was_empty = not offsets
        find = data.find
        while pos < end:
            offsets.append(base + pos)
            pos = find(b"\n", pos, end) + 1
        self._size = base + end
        if was_empty and offsets:
            self._first_id = self._line_id(0)

    def _line_id(self, index: int) -> int:
        """The id of the event on indexed line ``index`` (parsed from the line)."""
        assert self._fd is not None
        start = self._offsets[index]
        stop = self._offsets[index + 1] if index + 1 < len(self._offsets) else self._size
        try:
            eid = json.loads(os.pread(self._fd, stop - start, start)).get("id")
        except (ValueError, AttributeError) as exc:
            raise self._corrupt(f"line {index + 2} is not an event ({exc})") from None
        if not isinstance(eid, int):
            raise self._corrupt(f"line {index + 2} has no integer id")
        return eid

    def _sync(self, lock: int) -> bool:
        """Take ``lock`` and bring the index up to date; False (no lock) when absent."""
        if not self._open(create=lock == fcntl.LOCK_EX):
            return False
        assert self._fd is not None
        fcntl.flock(self._fd, lock)
        try:
            self._refresh(os.fstat(self._fd).st_size)
        except BaseException:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            raise
        return True

    def _check_tail(self) -> None:
        """The last indexed line must hold the id the index implies (checked once per
        growth of the index: lines this process appended itself are known good)."""
        if self._offsets and self._checked != len(self._offsets):
            if self._line_id(len(self._offsets) - 1) != self.last_id:
                raise self._corrupt("its ids are not contiguous")
            self._checked = len(self._offsets)

    @property
    def last_id(self) -> int:
        return self._first_id + len(self._offsets) - 1 if self._offsets else -1

    # -- the Store operations -------------------------------------------------
    def last_event_id(self) -> int:
        """The highest stored id, -1 when there is none (the last line is checked)."""
        if not self._sync(fcntl.LOCK_SH):
            return -1
        assert self._fd is not None
        try:
            self._check_tail()
            return self.last_id
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def event_bytes(self) -> int:
        """Bytes of the stored event lines, not counting their newlines (the quota's measure)."""
        if not self._sync(fcntl.LOCK_SH):
            return 0
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        return self._stored_bytes()

    def _stored_bytes(self) -> int:
        return self._size - len(self._header) - len(self._offsets) - self._joins

    def append(self, lines: list[bytes], first_id: int, quota: int | None) -> None:
        """Append ``lines`` (events ``first_id``... each without its newline) durably."""
        self._sync(fcntl.LOCK_EX)
        assert self._fd is not None
        fd = self._fd
        try:
            self._check_tail()
            if first_id != self.last_id + 1:
                raise EventIdConflict(
                    f"session {self.session_id}: event id {first_id} where {self.last_id + 1} "
                    f"was expected (last stored id {self.last_id})"
                )
            adding = sum(len(line) for line in lines)
            if quota is not None:
                used = self._stored_bytes()
                if used + adding > quota:
                    raise QuotaExceeded(self.session_id, used, adding, quota)
            size = os.fstat(fd).st_size
            if size != self._size:  # the torn tail of a killed writer: never acknowledged
                os.ftruncate(fd, self._size)
            data = b" \n".join(lines) + b"\n"
            try:
                os.lseek(fd, self._size, os.SEEK_SET)
                _write_all(fd, data)
                if self.durable:
                    os.fdatasync(fd)
            except OSError as exc:
                # Take back what may have reached the file: it was not acknowledged.
                try:
                    os.ftruncate(fd, self._size)
                except OSError:
                    pass
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise StoreError(f"no space left for the journal {self.path}: {exc}") from exc
                raise StoreError(f"cannot append to the journal {self.path}: {exc}") from exc
            if not self._offsets:
                self._first_id = first_id
            pos = self._size
            for line in lines:
                self._offsets.append(pos)
                pos += len(line) + 2
            self._size = pos - 1
            self._joins += len(lines) - 1
            if self._checked == len(self._offsets) - len(lines):
                self._checked = len(self._offsets)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def read(self, start_id: int, limit: int | None) -> list[dict[str, Any]]:
        """Events with ``id >= start_id``, ascending, at most ``limit``: one read, one parse."""
        if not self._sync(fcntl.LOCK_SH):
            return []
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        lo = max(start_id - self._first_id, 0)
        hi = len(self._offsets) if limit is None else min(len(self._offsets), lo + limit)
        if lo >= hi:
            return []
        start = self._offsets[lo]
        stop = self._offsets[hi] if hi < len(self._offsets) else self._size
        chunk = os.pread(self._fd, stop - start, start)
        try:
            # Lines hold compact JSON, which never contains a raw newline.
            events = json.loads(b"[" + chunk[:-1].replace(b"\n", b",") + b"]")
        except ValueError as exc:
            raise self._corrupt(f"an event line is not JSON ({exc})") from None
        want = self._first_id + lo
        if (
            not isinstance(events[0], dict)
            or events[0].get("id") != want
            or events[-1].get("id") != want + len(events) - 1
        ):
            raise self._corrupt("its ids are not contiguous")
        return events

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        self._reset()
