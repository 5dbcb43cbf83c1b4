"""File access beneath a session's workspace that no symlink can lead out of.

Used by the ``local`` runtime for ``read``/``write``: a path is checked (resolved,
inside the workspace) and then opened one component at a time, so that a link
swapped in by the session's own shell between the check and the open fails the open.
"""

from __future__ import annotations

import contextlib
import errno
import os

__all__ = ["open_beneath"]


def open_beneath(root: str, rel: str, flags: int, make_dirs: bool = False) -> int:
    """Open ``rel`` (already resolved and checked to be inside ``root``) without following symlinks.

    One component at a time with O_NOFOLLOW: a symlink swapped in after the
    check (TOCTOU) makes the open fail instead of leading outside ``root``.
    """
    parts = [] if rel == "." else rel.split(os.sep)
    if not parts:
        raise IsADirectoryError(errno.EISDIR, "the workspace itself is a directory")
    dir_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            if make_dirs:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=dfd)
            nfd = os.open(part, dir_flags, dir_fd=dfd)
            os.close(dfd)
            dfd = nfd
        # O_NONBLOCK: opening a FIFO must not wait for its other end.
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644, dir_fd=dfd)
    finally:
        os.close(dfd)
