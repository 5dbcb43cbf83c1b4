"""Workspace archives in the PostgreSQL store (issue 16): the ``PostgresStore`` methods.

An archive is chunked ``bytea`` rows (``sa_workspace_chunks``, one row per
``archive.CHUNK_BYTES``) under a generation from a sequence, and one row of
``sa_workspace_archives`` naming the current generation of a session. Chunked rows rather
than large objects: they are ordinary rows (deleted with a ``DELETE``, no ``lo_unlink``
to forget and no orphaned objects after a crash mid-write), need no large-object
privileges, and each chunk is one statement, so neither side holds the whole archive.

Writing is streamed and fenced: the chunks go in under a fresh generation without any
lock (a snapshot must not hold the lease row, which every append of the session takes),
then one short transaction checks the lease (node and epoch, and that the node is not
presumed dead), refuses to replace an archive written under a newer epoch, points the
session at the new generation and deletes the older chunks. A refused or failed write
deletes its own chunks; the previous archive stays.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import LeaseLost, StoreError
from .archive import write_archive

__all__ = ["ARCHIVES_DDL", "WorkspaceArchives"]

ARCHIVES_DDL = (
    "CREATE SEQUENCE IF NOT EXISTS sa_workspace_generation",
    """CREATE TABLE IF NOT EXISTS sa_workspace_archives (
        session_id TEXT PRIMARY KEY,
        generation BIGINT NOT NULL,
        epoch BIGINT NOT NULL,
        node TEXT NOT NULL,
        kind TEXT NOT NULL,
        taken_at DOUBLE PRECISION NOT NULL,
        size BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS sa_workspace_chunks (
        session_id TEXT NOT NULL, generation BIGINT NOT NULL, seq INTEGER NOT NULL, data BYTEA NOT NULL,
        PRIMARY KEY (session_id, generation, seq))""",
    "ALTER TABLE sa_workspace_chunks ALTER COLUMN data SET STORAGE EXTERNAL",  # already gzip
)

_FENCE = (
    "SELECT 1 FROM sa_leases WHERE session_id = %s AND node = %s AND epoch = %s AND NOT EXISTS ("
    "SELECT 1 FROM sa_nodes WHERE node_name = %s AND heartbeat_at + timeout_s * interval '1 second' "
    "<= clock_timestamp()) FOR UPDATE"
)


class WorkspaceArchives:
    """Mixed into ``PostgresStore``: store, describe and read workspace archives."""

    supports_workspace_archives = True
    node: str
    leases: Any

    if TYPE_CHECKING:  # PostgresStore's

        def _run(self, doing: str, sql: str, params: Any = ()) -> list[Any]: ...

        def _tx(self, db: Any, doing: str) -> Any: ...

        def _conn(self) -> Any: ...

    def put_workspace_archive(
        self, session_id: str, root: str, *, kind: str, max_bytes: int, epoch: int | None = None
    ) -> dict[str, Any]:
        """Archive the directory ``root`` as the session's workspace (``kind``: 'passivation'
        or 'snapshot'); its description (``workspace_archive``). Fenced by the lease this
        handle holds, or by ``epoch`` (a snapshot thread's own handle writes under the
        epoch its session holds): ``LeaseLost``; ``ArchiveTooLarge`` past ``max_bytes``."""
        if epoch is None:
            epoch = self.leases.epoch(session_id)  # raises LeaseLost once fenced
        if epoch is None:
            raise StoreError(f"session {session_id}: node {self.node!r} holds no lease; archive refused")
        (generation,) = self._run("allocating an archive", "SELECT nextval('sa_workspace_generation')")[0]
        seq = 0

        def sink(chunk: bytes) -> None:
            nonlocal seq
            self._run(
                "writing an archive chunk",
                "INSERT INTO sa_workspace_chunks VALUES (%s, %s, %s, %s)",
                (session_id, generation, seq, chunk),
            )
            seq += 1

        taken_at = time.time()
        try:
            size = write_archive(root, sink, max_bytes)
            with self._tx(self._conn(), "recording an archive") as cur:
                cur.execute(_FENCE, (session_id, self.node, epoch, self.node))
                if cur.fetchone() is None:
                    why = f"session {session_id}: node {self.node!r} lost its lease (epoch {epoch}); archive refused"
                    raise LeaseLost(why)  # the session actor stops its copy (passivation.py)
                cur.execute(
                    "SELECT epoch FROM sa_workspace_archives WHERE session_id = %s FOR UPDATE", (session_id,)
                )
                row = cur.fetchone()
                if row is not None and row[0] > epoch:
                    raise StoreError(
                        f"session {session_id}: a newer archive (epoch {row[0]}) is stored; refused"
                    )
                cur.execute(
                    "INSERT INTO sa_workspace_archives VALUES (%s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (session_id) DO UPDATE SET generation = EXCLUDED.generation, "
                    "epoch = EXCLUDED.epoch, node = EXCLUDED.node, kind = EXCLUDED.kind, "
                    "taken_at = EXCLUDED.taken_at, size = EXCLUDED.size",
                    (session_id, generation, epoch, self.node, kind, taken_at, size),
                )
                cur.execute(
                    "DELETE FROM sa_workspace_chunks WHERE session_id = %s AND generation <> %s",
                    (session_id, generation),
                )
        except BaseException:
            self._run(
                "discarding a refused archive",
                "DELETE FROM sa_workspace_chunks WHERE session_id = %s AND generation = %s",
                (session_id, generation),
            )
            raise
        return {
            "generation": generation,
            "epoch": epoch,
            "node": self.node,
            "kind": kind,
            "taken_at": taken_at,
            "size": size,
        }

    def workspace_archive(self, session_id: str) -> dict[str, Any] | None:
        """The current archive's generation, epoch, node, kind, taken_at and size; None."""
        rows = self._run(
            "reading an archive",
            "SELECT generation, epoch, node, kind, taken_at, size FROM sa_workspace_archives WHERE session_id = %s",
            (session_id,),
        )
        if not rows:
            return None
        return dict(zip(("generation", "epoch", "node", "kind", "taken_at", "size"), rows[0], strict=True))

    def read_workspace_archive(self, session_id: str, generation: int) -> Iterator[bytes]:
        """The chunks of that generation in order, one query each (streamed)."""
        seq = 0
        while True:
            rows = self._run(
                "reading an archive chunk",
                "SELECT data FROM sa_workspace_chunks WHERE session_id = %s AND generation = %s AND seq = %s",
                (session_id, generation, seq),
            )
            if not rows:
                return
            yield bytes(rows[0][0])
            seq += 1
