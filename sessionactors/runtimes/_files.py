"""File access beneath a session's workspace that no symlink can lead out of.

Used by the ``local`` runtime for ``read``/``write`` and by ``Runtime.read_file`` /
``write_file`` (the REST routes): a path is checked (resolved, inside the workspace)
and then opened so that a link swapped in by the session's own shell between the
check and the open fails the open. Where the kernel has ``openat2`` (Linux 5.6+) the
open is one call with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``; elsewhere (or where a
seccomp filter refuses it) one component at a time with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import stat

__all__ = ["open_beneath", "read_beneath", "openat2_available"]

# openat2(2): the same number on every architecture (the unified syscall table of 5.6).
_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_CHUNK = 1 << 16


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc: ctypes.CDLL | None = None
_openat2_ok: bool | None = None  # None: not tried yet


def _openat2(dfd: int, rel: str, flags: int, mode: int) -> int | None:
    """``openat2`` beneath ``dfd`` refusing every symlink, or None when the kernel lacks it."""
    global _libc, _openat2_ok
    if _openat2_ok is False or platform.system() != "Linux":
        return None
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if not flags & os.O_CREAT:
        mode = 0  # openat2 refuses a mode without O_CREAT (EINVAL)
    how = _OpenHow(flags, mode, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    fd = int(_libc.syscall(_SYS_OPENAT2, dfd, os.fsencode(rel), ctypes.byref(how), ctypes.sizeof(how)))
    if fd >= 0:
        _openat2_ok = True
        return fd
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM) and _openat2_ok is None:
        _openat2_ok = False  # no openat2 here (old kernel, or seccomp): walk the components
        return None
    raise OSError(err, os.strerror(err), rel)


def openat2_available() -> bool:
    """Whether this kernel lets ``open_beneath`` use ``openat2`` (tried once)."""
    if _openat2_ok is None:
        dfd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with contextlib.suppress(OSError):
                fd = _openat2(dfd, ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0)
                if fd is not None:
                    os.close(fd)
        finally:
            os.close(dfd)
    return bool(_openat2_ok)


def open_beneath(root: str, rel: str, flags: int, make_dirs: bool = False) -> int:
    """Open ``rel`` (already resolved and checked to be inside ``root``) without following symlinks.

    A symlink swapped in after the check (TOCTOU) makes the open fail (ELOOP/ENOTDIR,
    or EXDEV from ``openat2``) instead of leading outside ``root``.
    """
    parts = [] if rel == "." else rel.split(os.sep)
    if not parts:
        raise IsADirectoryError(errno.EISDIR, "the workspace itself is a directory")
    # O_NONBLOCK: opening a FIFO must not wait for its other end.
    final_flags = flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    dir_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if not make_dirs:
            fd = _openat2(dfd, rel, final_flags, 0o644)
            if fd is not None:
                return fd
        for part in parts[:-1]:
            if make_dirs:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=dfd)
            nfd = os.open(part, dir_flags, dir_fd=dfd)
            os.close(dfd)
            dfd = nfd
        return os.open(parts[-1], final_flags, 0o644, dir_fd=dfd)
    finally:
        os.close(dfd)


def read_beneath(root: str, rel: str, limit: int) -> bytes | None:
    """The bytes of regular file ``rel`` beneath ``root``, read through the one fd opened,
    or None when it is larger than ``limit`` (known from ``fstat``: nothing is read).

    Raises FileNotFoundError for anything that is not a regular file (a directory, a FIFO).
    Read in chunks and never more than ``limit + 1`` bytes, so a file that grows after the
    ``fstat`` (or a sparse one that lies about nothing) costs at most ``limit`` of memory.
    """
    fd = open_beneath(root, rel, os.O_RDONLY)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileNotFoundError(errno.ENOENT, "not a regular file", rel)
        if info.st_size > limit:
            return None
        os.set_blocking(fd, True)
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return None if total > limit else b"".join(chunks)
    finally:
        os.close(fd)
