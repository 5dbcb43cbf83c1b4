"""Workspace archives in the PostgreSQL store (issue 16) on a real PostgreSQL 15: the
streamed round trip, the size cap leaving the previous archive, a stale owner fenced,
and a hostile archive inserted into the store refused at restore."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from sessionactors.errors import LeaseLost
from sessionactors.store.archive import CHUNK_BYTES, ArchiveRefused, ArchiveTooLarge, extract_archive
from sessionactors.store.postgres import PostgresStore

from .cluster_harness import rows

CAP = 64 << 20


def _restore(store: PostgresStore, session_id: str, dest: Path) -> dict:
    info = store.workspace_archive(session_id)
    assert info is not None
    extract_archive(store.read_workspace_archive(session_id, info["generation"]), str(dest), CAP)
    return info


def test_archive_round_trip_through_the_store_in_chunks(pg_url: str, tmp_path: Path) -> None:
    a = PostgresStore(pg_url, node="node-a")
    b = PostgresStore(pg_url, node="node-b")
    try:
        ws = tmp_path / "a" / "s"
        ws.mkdir(parents=True)
        (ws / "notes.txt").write_text("written on node a")
        (ws / "blob").write_bytes(os.urandom(2 * CHUNK_BYTES + 5))
        a.acquire_lease("s")
        first = a.put_workspace_archive("s", str(ws), kind="passivation", max_bytes=CAP)
        assert first["kind"] == "passivation" and first["epoch"] == 1 and first["size"] > 2 * CHUNK_BYTES
        (chunks,) = rows(pg_url, "SELECT count(*) FROM sa_workspace_chunks WHERE session_id = 's'")[0]
        assert chunks == 3
        (ws / "notes.txt").write_text("second")
        second = a.put_workspace_archive("s", str(ws), kind="snapshot", max_bytes=CAP)
        assert second["generation"] > first["generation"]
        # The older generation's chunks are gone with the new archive.
        gens = rows(pg_url, "SELECT DISTINCT generation FROM sa_workspace_chunks WHERE session_id = 's'")
        assert gens == [(second["generation"],)]
        info = _restore(b, "s", tmp_path / "b" / "s")
        assert info["kind"] == "snapshot" and info["node"] == "node-a"
        assert (tmp_path / "b" / "s" / "notes.txt").read_text() == "second"
        assert (tmp_path / "b" / "s" / "blob").read_bytes() == (ws / "blob").read_bytes()
        assert b.workspace_archive("other") is None
    finally:
        a.close()
        b.close()


def test_an_archive_over_the_cap_is_refused_and_the_previous_stays(pg_url: str, tmp_path: Path) -> None:
    a = PostgresStore(pg_url, node="node-a")
    try:
        ws = tmp_path / "s"
        ws.mkdir()
        (ws / "small").write_text("kept")
        a.acquire_lease("s")
        kept = a.put_workspace_archive("s", str(ws), kind="snapshot", max_bytes=1 << 20)
        (ws / "big").write_bytes(os.urandom(3 << 20))
        with pytest.raises(ArchiveTooLarge, match="workspace_archive_max_bytes"):
            a.put_workspace_archive("s", str(ws), kind="snapshot", max_bytes=1 << 20)
        assert a.workspace_archive("s") == kept
        gens = rows(pg_url, "SELECT DISTINCT generation FROM sa_workspace_chunks")
        assert gens == [(kept["generation"],)]  # the refused write left no chunk
        a.append("s", [{"id": 0}])  # the session's writes go on
        _restore(a, "s", tmp_path / "back")
        assert sorted(os.listdir(tmp_path / "back")) == ["small"]
    finally:
        a.close()


def test_a_stale_owners_archive_is_fenced(pg_url: str, tmp_path: Path) -> None:
    a = PostgresStore(pg_url, node="node-a")
    b = PostgresStore(pg_url, node="node-b")
    try:
        ws_a, ws_b = tmp_path / "a", tmp_path / "b"
        ws_a.mkdir()
        ws_b.mkdir()
        (ws_a / "f").write_text("stale")
        (ws_b / "f").write_text("new owner")
        a.acquire_lease("s")
        rows(pg_url, "UPDATE sa_leases SET expires_at = clock_timestamp() - interval '1 second'")
        assert b.acquire_lease("s") == 2
        newer = b.put_workspace_archive("s", str(ws_b), kind="snapshot", max_bytes=CAP)
        with pytest.raises(LeaseLost, match="archive refused"):
            a.put_workspace_archive("s", str(ws_a), kind="passivation", max_bytes=CAP)
        assert b.workspace_archive("s") == newer
        _restore(b, "s", tmp_path / "r")
        assert (tmp_path / "r" / "f").read_text() == "new owner"
        (n,) = rows(pg_url, "SELECT count(*) FROM sa_workspace_chunks")[0]
        assert n == 1
    finally:
        a.close()
        b.close()


def test_a_hostile_archive_in_the_store_is_refused_at_restore(pg_url: str, tmp_path: Path) -> None:
    store = PostgresStore(pg_url, node="node-a")
    try:
        store.workspace_archive("s")  # the schema
        for n, (name, kind, target) in enumerate(
            [
                ("../escaped", tarfile.REGTYPE, ""),
                ("/tmp/sa-abs", tarfile.REGTYPE, ""),
                ("l", tarfile.SYMTYPE, "../../.."),
            ]
        ):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, target
                tar.addfile(info, io.BytesIO(b""))
            sid = f"h{n}"
            rows(
                pg_url,
                f"INSERT INTO sa_workspace_chunks VALUES ('{sid}', 1000, 0, decode('{buf.getvalue().hex()}', 'hex'))",
            )
            rows(
                pg_url, f"INSERT INTO sa_workspace_archives VALUES ('{sid}', 1000, 1, 'x', 'snapshot', 0, 1)"
            )
            dest = tmp_path / "box" / sid
            with pytest.raises(ArchiveRefused):
                _restore(store, sid, dest)
            assert not dest.exists()
        assert os.listdir(tmp_path / "box") == [] and not (tmp_path / "escaped").exists()
    finally:
        store.close()


def test_a_version_2_database_gets_the_archive_tables_on_open(pg_url: str, tmp_path: Path) -> None:
    PostgresStore(pg_url, node="x").close()
    rows(pg_url, "DROP TABLE sa_workspace_archives, sa_workspace_chunks")
    rows(pg_url, "DROP SEQUENCE sa_workspace_generation")
    rows(pg_url, "UPDATE sa_meta SET value = '2' WHERE key = 'schema_version'")
    store = PostgresStore(pg_url, node="node-a")
    try:
        (tmp_path / "f").write_text("x")
        store.acquire_lease("s")
        assert store.put_workspace_archive("s", str(tmp_path), kind="snapshot", max_bytes=CAP)["epoch"] == 1
        assert rows(pg_url, "SELECT value FROM sa_meta WHERE key = 'schema_version'") == [("3",)]
    finally:
        store.close()
