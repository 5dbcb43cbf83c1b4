"""Workspace archives: a session's workspace as a streamed, size-capped ``tar.gz``.

The shared store keeps these so a workspace follows its session to another node
(issue 16). This module only turns a directory into chunks and chunks back into a
directory; where the chunks live is the store's business. Neither side ever holds the
whole archive in memory: ``write_archive`` hands fixed-size chunks to a sink as the
compressor produces them, ``extract_archive`` reads from an iterator of chunks.

Creation never follows a symlink (a link is stored as a link, and only when its target
stays inside the workspace), keeps mode bits and refuses device files and FIFOs.
Extraction trusts nothing in the archive: absolute names, ``..``, links leaving the
destination, hard links, devices and a total size over the cap are refused, and it
extracts into a fresh directory beside the destination that replaces it only on success,
so a refused archive writes nothing outside and leaves the old workspace as it was.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator

from ..errors import StoreError

__all__ = [
    "ArchiveRefused",
    "ArchiveTooLarge",
    "CHUNK_BYTES",
    "extract_archive",
    "tree_signature",
    "write_archive",
]

CHUNK_BYTES = 1 << 20
"""Size of the chunks handed to the sink (one store row or large-object write each)."""


class ArchiveRefused(StoreError):
    """A workspace archive was refused: unsafe content on either side."""


class ArchiveTooLarge(ArchiveRefused):
    """A workspace archive exceeds ``workspace_archive_max_bytes``."""


def _walk(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of every entry under ``root``, sorted, never following links."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except FileNotFoundError:  # removed while we walk: the next snapshot has it
                continue
            yield (name if rel_dir == "." else os.path.join(rel_dir, name)), st


def tree_signature(root: str) -> str:
    """A cheap digest of the tree's names, modes, sizes and mtimes (no file is read):
    equal signatures mean there is nothing new to archive."""
    digest = hashlib.blake2b(digest_size=16)
    if os.path.isdir(root):
        for rel, st in _walk(root):
            digest.update(f"{rel}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class _ChunkSink(io.RawIOBase):
    """A write-only file that hands ``CHUNK_BYTES`` chunks to ``sink`` and raises
    ``ArchiveTooLarge`` as soon as more than ``max_bytes`` were written."""

    def __init__(self, sink: Callable[[bytes], None], max_bytes: int) -> None:
        self._sink = sink
        self._max = max_bytes
        self._buf = bytearray()
        self.total = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.total += len(data)
        if self.total > self._max:
            raise ArchiveTooLarge(
                f"the workspace archive exceeds workspace_archive_max_bytes ({self._max} bytes)"
            )
        self._buf += data
        while len(self._buf) >= CHUNK_BYTES:
            self._sink(bytes(self._buf[:CHUNK_BYTES]))
            del self._buf[:CHUNK_BYTES]
        return len(data)

    def flush_rest(self) -> None:
        if self._buf:
            self._sink(bytes(self._buf))
            self._buf.clear()


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def write_archive(root: str, sink: Callable[[bytes], None], max_bytes: int) -> int:
    """Stream ``root`` as a ``tar.gz`` into ``sink`` (chunks of ``CHUNK_BYTES``, the last
    one shorter); return the archive's size. Raises ``ArchiveTooLarge`` past ``max_bytes``
    (the sink has then received a prefix the caller must discard) and ``ArchiveRefused``
    for a device file or FIFO in the workspace."""
    root = os.path.realpath(root)
    out = _ChunkSink(sink, max_bytes)
    with tarfile.open(fileobj=out, mode="w|gz", format=tarfile.PAX_FORMAT) as tar:
        for rel, st in _walk(root):
            full = os.path.join(root, rel)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(full)
                if os.path.isabs(target) or not _inside(
                    root, os.path.normpath(os.path.join(os.path.dirname(full), target))
                ):
                    continue  # a link out of the workspace is not the workspace's content
            elif not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise ArchiveRefused(f"the workspace holds a device file or FIFO: {rel!r}")
            info = tar.gettarinfo(full, arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with open(full, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    out.flush_rest()
    return out.total


class _ChunkSource(io.RawIOBase):
    """A read-only file over an iterator of byte chunks."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        while not self._buf:
            nxt = next(self._it, None)
            if nxt is None:
                return 0
            self._buf = bytes(nxt)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _check_member(tmp: str, info: tarfile.TarInfo) -> str:
    name = info.name
    if not name or os.path.isabs(name) or name.startswith(("/", "\\")):
        raise ArchiveRefused(f"archive member with an absolute name: {name!r}")
    if ".." in name.replace("\\", "/").split("/"):
        raise ArchiveRefused(f"archive member leaving the workspace: {name!r}")
    dest = os.path.normpath(os.path.join(tmp, name))
    if not _inside(tmp, dest) or dest == tmp:
        raise ArchiveRefused(f"archive member leaving the workspace: {name!r}")
    # A parent that is a link (extracted earlier) must still resolve inside.
    if not _inside(tmp, os.path.realpath(os.path.dirname(dest))):
        raise ArchiveRefused(f"archive member under a link leaving the workspace: {name!r}")
    if info.issym():
        target = info.linkname
        resolved = os.path.normpath(os.path.join(os.path.dirname(dest), target))
        if os.path.isabs(target) or not _inside(tmp, resolved):
            raise ArchiveRefused(f"archive symlink {name!r} points out of the workspace ({target!r})")
    elif not (info.isreg() or info.isdir()):
        raise ArchiveRefused(f"archive member {name!r} is not a file, directory or symlink")
    return dest


def extract_archive(
    chunks: Iterable[bytes], dest: str, max_bytes: int, *, chown: tuple[int, int] | None = None
) -> int:
    """Extract the ``tar.gz`` read from ``chunks`` as the new content of ``dest``; return
    the number of bytes of file content written. ``max_bytes`` caps the extracted content
    (a small archive may inflate). ``chown``: (uid, gid) given every entry, as the
    daemon's own writes into a sandboxed workspace are. Raises ``ArchiveRefused``; then
    ``dest`` is untouched and nothing was written outside it."""
    dest = os.path.abspath(dest)
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.realpath(dest + ".restoring")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp, mode=0o755)
    written = 0
    try:
        with tarfile.open(fileobj=_ChunkSource(chunks), mode="r|gz") as tar:
            for info in tar:
                path = _check_member(tmp, info)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                if info.isdir():
                    os.makedirs(path, exist_ok=True)
                    os.chmod(path, (info.mode & 0o7777) | 0o700)
                elif info.issym():
                    os.symlink(info.linkname, path)
                else:
                    written += info.size
                    if written > max_bytes:
                        raise ArchiveTooLarge(f"the archive's content exceeds {max_bytes} bytes")
                    src = tar.extractfile(info)
                    assert src is not None
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                    with os.fdopen(fd, "wb") as out:
                        shutil.copyfileobj(src, out, CHUNK_BYTES)
                    os.chmod(path, info.mode & 0o7777)
                if chown is not None:
                    os.lchown(path, *chown)
    except (tarfile.TarError, EOFError, OSError, ArchiveRefused) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, ArchiveRefused):
            raise
        raise ArchiveRefused(f"the workspace archive is unreadable: {exc}") from exc
    if chown is not None:
        os.lchown(tmp, *chown)
    old = dest + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.lexists(dest):
        os.rename(dest, old)
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return written
