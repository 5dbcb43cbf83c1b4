"""Following a secret file: re-read it when it is replaced, at most one ``stat`` a second.

``FileSecrets`` is how a ``TokenSigner`` (``auth.py``) over ``<data_dir>/secret.key``
picks up a rotation without a restart: every call costs one clock reading, and at most
once per ``interval`` one ``os.stat`` of the file; only when the file's identity
(inode, size, mtime, ctime) changed does it call ``read`` (which ``auth`` makes re-read
``secret.key`` and ``secret.previous`` under the secret lock). A failed read keeps the
secrets the caller has and logs a warning naming the reason, never a secret.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import SessionActorsError

__all__ = ["FileSecrets"]

log = logging.getLogger(__name__)

_Stamp = tuple[int, int, int, int, int]


def _stamp(path: Path) -> _Stamp | None:
    """What identifies this version of ``path``, or None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class FileSecrets:
    """Calls ``read`` again when ``path`` changed; ``__call__`` answers new secrets or None.

    The first call always reads (the secrets a caller loaded earlier may predate the
    first ``stat``). The stamp is taken before reading, so what was read is never older
    than what was seen: a change in between is read again at the next check. A clock
    that steps back does not stop the checks.
    """

    def __init__(
        self,
        path: Path,
        read: Callable[[], list[bytes]],
        *,
        interval: float = 1.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path, self.interval = Path(path), float(interval)
        self._read, self._now = read, now
        self._checked: float | None = None  # when the file was last stat'ed
        self._seen: _Stamp | None = None  # the file as last read (or found missing)
        self._first = True  # nothing checked yet
        self._last: list[bytes] | None = None  # what the last successful read gave
        self._lock = threading.Lock()

    def __call__(self) -> list[bytes] | None:
        """The secrets now in the files when they changed since the last call, else None."""
        now = self._now()
        if self._checked is not None and 0 <= now - self._checked < self.interval:
            return None
        if not self._lock.acquire(blocking=False):
            return None  # another caller is checking right now
        try:
            self._checked = now
            stamp = _stamp(self.path)
            if stamp == self._seen and not self._first:
                return None
            self._first, self._seen = False, stamp
            if stamp is None:  # logged once: the next checks find the same None
                log.warning("cannot stat %s; keeping the loaded token secrets", self.path)
                return None
            return self._reload()
        finally:
            self._lock.release()

    def _reload(self) -> list[bytes] | None:
        try:
            found = list(self._read())
        except Exception as exc:  # never fail a verify over the disk; the reason only, no content
            reason = str(exc) if isinstance(exc, (OSError, SessionActorsError)) else type(exc).__name__
            log.warning("cannot re-read the token secrets (%s); keeping the loaded ones", reason)
            return None
        if found == self._last:
            return None
        if self._last is not None:
            log.info("token secrets changed in %s; reloaded", self.path.parent)
        self._last = found
        return found
