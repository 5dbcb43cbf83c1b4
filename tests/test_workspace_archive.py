"""Workspace archives (``store/archive.py``, issue 16): streamed round trip, the size cap,
and hostile archives refused at restore without writing outside the workspace."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from sessionactors.store.archive import (
    CHUNK_BYTES,
    ArchiveRefused,
    ArchiveTooLarge,
    extract_archive,
    tree_signature,
    write_archive,
)


def _archive(root: str, max_bytes: int = 1 << 30) -> list[bytes]:
    chunks: list[bytes] = []
    write_archive(root, chunks.append, max_bytes)
    return chunks


def test_round_trip_keeps_files_modes_and_inner_links(tmp_path):
    src = tmp_path / "ws"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("hello")
    (src / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(src / "run.sh", 0o751)
    os.symlink("sub/a.txt", src / "link")
    os.symlink("/etc/passwd", src / "out")  # a link out is not archived
    dest = tmp_path / "restored"
    (dest).mkdir()
    (dest / "stale").write_text("old")
    extract_archive(_archive(str(src)), str(dest), 1 << 20)
    assert (dest / "sub" / "a.txt").read_text() == "hello"
    assert os.stat(dest / "run.sh").st_mode & 0o777 == 0o751
    assert os.readlink(dest / "link") == "sub/a.txt"
    assert not os.path.lexists(dest / "out")
    assert not (dest / "stale").exists()


def test_archive_is_streamed_in_chunks(tmp_path):
    src = tmp_path / "ws"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(3 * CHUNK_BYTES))
    chunks = _archive(str(src))
    assert len(chunks) >= 3 and all(len(c) == CHUNK_BYTES for c in chunks[:-1])


def test_over_the_cap_is_refused(tmp_path):
    src = tmp_path / "ws"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(1 << 20))
    with pytest.raises(ArchiveTooLarge, match="workspace_archive_max_bytes"):
        write_archive(str(src), lambda c: None, 1 << 18)


def test_fifo_is_refused(tmp_path):
    src = tmp_path / "ws"
    src.mkdir()
    os.mkfifo(src / "pipe")
    with pytest.raises(ArchiveRefused, match="FIFO"):
        write_archive(str(src), lambda c: None, 1 << 20)


def test_signature_changes_with_the_tree(tmp_path):
    src = tmp_path / "ws"
    src.mkdir()
    before = tree_signature(str(src))
    assert tree_signature(str(src)) == before
    (src / "f").write_text("x")
    assert tree_signature(str(src)) != before


def _hostile(build) -> list[bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        build(tar)
    return [buf.getvalue()]


def _file(tar: tarfile.TarFile, name: str, data: bytes = b"pwned") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _link(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda t: _file(t, "../x"), "leaving"),
        (lambda t: _file(t, "/tmp/abs-x"), "absolute"),
        (lambda t: _link(t, "esc", "../../outside"), "points out"),
        (lambda t: (_link(t, "d", "."), _file(t, "d/../../x")), "leaving"),
    ],
)
def test_hostile_archive_is_refused_without_writing_outside(tmp_path, build, match):
    dest = tmp_path / "box" / "ws"
    dest.mkdir(parents=True)
    (dest / "keep").write_text("mine")
    with pytest.raises(ArchiveRefused, match=match):
        extract_archive(_hostile(build), str(dest), 1 << 20)
    assert (dest / "keep").read_text() == "mine"
    assert sorted(os.listdir(tmp_path / "box")) == ["ws"]
    assert not (tmp_path / "x").exists() and not os.path.exists("/tmp/abs-x")


def test_extract_cap_counts_inflated_content(tmp_path):
    chunks = _hostile(lambda t: _file(t, "zeros", b"\0" * (1 << 20)))
    with pytest.raises(ArchiveTooLarge):
        extract_archive(chunks, str(tmp_path / "ws"), 1 << 16)
    assert not (tmp_path / "ws").exists()
