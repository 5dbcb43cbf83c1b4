"""The shared durable store: PostgreSQL through psycopg 3, for several machines.

Selected by ``store_url = "postgresql://user@host:port/db"``; the same ``Store``
contract as the embedded SQLite store: an event is committed (``synchronous_commit``
as the server has it, ``on`` by default: durable) before ``append`` returns, so before
any client sees it; ids are contiguous per session; a replay is one ordered range scan.

Tables (all prefixed ``sa_``, created on first open under an advisory lock, so that
several daemons starting at once create them once):

* ``sa_meta(key, value)``: ``app`` = ``'sessionactors'`` and ``schema_version``.
* ``sa_sessions``: one row per ``SessionRecord``; ``args`` and ``runtime_state`` are
  JSON *text* (not jsonb, which would reorder keys: what is stored is what is read).
* ``sa_events(session_id, id, body)``: primary key (session_id, id); ``body`` is the
  event's compact JSON text, returned as is.
* ``sa_leases``: the ownership leases (``leases.py``): every append is fenced by one.
* ``sa_secrets(name, value)``: the token secret, shared by every gateway.
* ``sa_nodes``: the node registry and heartbeats (``sessionactors/cluster/nodes.py``); a
  lease held by a node that missed its heartbeats is taken over at once.

An append is one round trip: the server-side function ``sa_append`` takes (or checks)
the lease under its row lock, checks that the first id follows the last stored one,
and inserts the batch, all in the statement's transaction. Concurrent appenders of one
session queue on the lease row, so ids stay contiguous and a takeover waits for an
append in flight (and then fences the next one).

Fork and threads: like ``SQLiteStore``, a handle notices a pid change and opens a fresh
connection in the child (the inherited one is left alone). The lease renewal runs in a
thread with its own connection (``leases.LeaseKeeper``), started by the first lease.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any
from urllib.parse import urlsplit

from ..errors import EventIdConflict, LeaseLost, QuotaExceeded, SchemaMismatch, StoreCorrupt, StoreError
from . import leases as L
from .base import RECORD_FIELDS, SessionRecord, Store, encode_record_field, record_from_row
from .pgconnect import connect
from .postgres_archives import WorkspaceArchives
from .postgres_schema import _SCHEMA_LOCK, APP_MARKER, DDL, MIGRATIONS, SCHEMA_VERSION

try:
    import psycopg
except ImportError:  # pragma: no cover - an install without the dependency
    psycopg = None  # type: ignore[assignment]

__all__ = ["SCHEMA_VERSION", "PostgresStore", "redact_url"]

_FIELDS = RECORD_FIELDS
_SELECT_SESSION = f"SELECT {', '.join(_FIELDS)} FROM sa_sessions"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def redact_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


class PostgresStore(WorkspaceArchives, Store):
    """``Store`` on a shared PostgreSQL database, with ownership leases per session.

    ``node`` names this daemon in the lease rows; ``lease_ttl`` and ``lease_renew``
    are the lease's validity and renewal period in seconds (``leases.py``).
    """

    def __init__(
        self,
        url: str,
        *,
        node: str,
        lease_ttl: float = L.DEFAULT_LEASE_TTL,
        lease_renew: float = L.DEFAULT_LEASE_RENEW,
        quota_bytes: int | None = None,
    ) -> None:
        if psycopg is None:
            raise StoreError("store_url needs psycopg 3: pip install 'sessionactors[postgres]'")
        if not 0 < lease_renew < lease_ttl:
            raise ValueError(f"need 0 < lease_renew < lease_ttl, got {lease_renew} and {lease_ttl}")
        if quota_bytes is not None and (isinstance(quota_bytes, bool) or quota_bytes < 1):
            raise ValueError(f"quota_bytes must be a positive integer or None, not {quota_bytes!r}")
        self.quota_bytes = quota_bytes
        # Bytes stored per session, counted once and then kept: the lease makes this handle
        # the session's only writer, so the count cannot move behind its back.
        self._used: dict[str, int] = {}
        self.url = url
        self.where = redact_url(url)
        self.node = node
        self.lease_ttl = float(lease_ttl)
        self.lease_renew = float(lease_renew)
        self.leases = L.LeaseBook(node)
        self._keeper: L.LeaseKeeper | None = None
        self._keeper_lock = threading.Lock()
        self._db: Any = None
        self._pid = 0
        self._closed = False
        self._conn()  # connect and check the schema now: a bad URL fails here, not on first use

    # -- connection --------------------------------------------------------
    def _connect(self) -> Any:
        try:
            return connect(self.url)
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split())  # libpq's message spans lines: one line here
            raise StoreError(f"cannot connect to the PostgreSQL store {self.where}: {reason}") from exc

    def _conn(self) -> Any:
        if self._closed:
            raise StoreError(f"the store {self.where} is closed")
        if self._db is None or self._pid != os.getpid() or self._db.closed:
            # After a fork the inherited connection belongs to the parent: never touch it.
            self._db, self._pid = self._connect(), os.getpid()
            try:
                self._ensure_schema(self._db)
            except BaseException:
                self._db.close()
                self._db = None
                raise
        return self._db

    def _ensure_schema(self, db: Any) -> None:
        with self._tx(db, "creating the schema") as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            cur.execute("SELECT to_regclass('sa_meta') IS NOT NULL")
            if not cur.fetchone()[0]:
                for statement in DDL:
                    cur.execute(statement)
                cur.execute(
                    "INSERT INTO sa_meta VALUES ('app', %s), ('schema_version', %s)",
                    (APP_MARKER, str(SCHEMA_VERSION)),
                )
                return
            cur.execute("SELECT key, value FROM sa_meta WHERE key IN ('app', 'schema_version')")
            meta = dict(cur.fetchall())
        if meta.get("app") != APP_MARKER:
            raise StoreCorrupt(f"{self.where} has an sa_meta table that is not sessionactors'")
        version = int(meta.get("schema_version") or 0)
        if version > SCHEMA_VERSION:
            raise SchemaMismatch(
                f"{self.where} has schema version {version}, newer than this sessionactors "
                f"({SCHEMA_VERSION}): upgrade sessionactors"
            )
        if version < SCHEMA_VERSION:
            with self._tx(db, "migrating the schema") as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                cur.execute("SELECT value FROM sa_meta WHERE key = 'schema_version'")
                version = int(cur.fetchone()[0])  # another daemon may have migrated meanwhile
                for step in range(version, SCHEMA_VERSION):
                    for statement in MIGRATIONS[step]:
                        cur.execute(statement)
                cur.execute(
                    "UPDATE sa_meta SET value = %s WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
                )

    def _tx(self, db: Any, doing: str) -> Any:
        return _Transaction(self, db, doing)

    def _wrap(self, exc: Exception, doing: str) -> StoreError:
        return StoreError(f"PostgreSQL store {self.where}: {doing} failed: {exc}")

    def _run(self, doing: str, sql: str, params: Any = ()) -> list[Any]:
        """One statement in its own transaction (autocommit); all rows (or [])."""
        try:
            cur = self._conn().execute(sql, params)
            return cur.fetchall() if cur.description is not None else []
        except psycopg.Error as exc:
            raise self._wrap(exc, doing) from exc

    # -- events ------------------------------------------------------------
    def append(self, session_id: str, events: list[dict[str, Any]]) -> None:
        """Store ``events`` in one transaction, fenced by this node's lease (taken on the
        first append of the session); EventIdConflict or LeaseLost store nothing."""
        if not events:
            return
        ids: list[int] = []
        bodies: list[str] = []
        for event in events:
            eid = event.get("id") if isinstance(event, dict) else None
            if not isinstance(eid, int) or isinstance(eid, bool):
                raise TypeError(f"every event must be a dict with an integer id, got {event!r:.200}")
            if ids and eid != ids[-1] + 1:
                raise EventIdConflict(
                    f"session {session_id}: event id {eid} where {ids[-1] + 1} was expected"
                )
            ids.append(eid)
            bodies.append(_dumps(event))
        epoch = self.leases.epoch(session_id)  # raises LeaseLost once fenced
        adding = sum(len(body.encode()) for body in bodies)
        used = self._used.get(session_id)
        if self.quota_bytes is not None:
            if used is None:
                used = self.event_bytes(session_id)
            if used + adding > self.quota_bytes:
                raise QuotaExceeded(session_id, used, adding, self.quota_bytes)
        try:
            row = (
                self._conn()
                .execute(
                    "SELECT sa_append(%s, %s, %s, %s, %s, %s)",
                    (session_id, self.node, epoch, self.lease_ttl, ids, bodies),
                )
                .fetchone()
            )
        except psycopg.Error as exc:
            state = getattr(exc, "sqlstate", None)
            message = exc.diag.message_primary or str(exc)
            if state == "SAE01":
                raise EventIdConflict(message) from None
            if state == "SAL02":
                raise self.leases.lose(session_id, message) from None
            if state == "SAL01":
                raise LeaseLost(message) from None
            raise self._wrap(exc, "appending events") from exc
        if used is not None:
            self._used[session_id] = used + adding
        if epoch is None:
            self.leases.hold(session_id, int(row[0]))
            self._start_keeper()

    def read(self, session_id: str, start_id: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Events with ``id >= start_id`` ascending, at most ``limit``, in one range query."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, not {limit}")
        rows = self._run(
            "reading events",
            "SELECT body FROM sa_events WHERE session_id = %s AND id >= %s ORDER BY id LIMIT %s",
            (session_id, max(start_id, 0), limit),
        )
        return json.loads("[" + ",".join(r[0] for r in rows) + "]")

    def last_event_id(self, session_id: str) -> int:
        """The highest stored id of the session, -1 when it has none."""
        sql = "SELECT max(id) FROM sa_events WHERE session_id = %s"
        (last,) = self._run("reading the last event id", sql, (session_id,))[0]
        return -1 if last is None else int(last)

    def event_bytes(self, session_id: str) -> int:
        """Bytes of the session's stored events (their compact JSON, UTF-8)."""
        sql = "SELECT coalesce(sum(octet_length(body)), 0) FROM sa_events WHERE session_id = %s"
        return int(self._run("counting a session's bytes", sql, (session_id,))[0][0])

    # -- leases ------------------------------------------------------------
    def acquire_lease(self, session_id: str) -> int:
        """Take the session's lease for this node now (a new activation); its epoch.

        Forgets a lease this handle lost before (the copy that lost it has stopped).
        LeaseLost when another node holds it live."""
        self.leases.forget(session_id)
        self._used.pop(session_id, None)  # counted again: another node may have written since
        params = {"s": session_id, "n": self.node, "ttl": self.lease_ttl}
        rows = self._run("taking a session lease", L.ACQUIRE_SQL, params)
        if not rows:
            holder = self._run("reading a session lease", L.HOLDER_SQL, (session_id,))
            who = L.holder_text(holder[0] if holder else None)
            raise LeaseLost(f"session {session_id} is owned by {who}, not by node {self.node!r}")
        self.leases.hold(session_id, int(rows[0][0]))
        self._start_keeper()
        return int(rows[0][0])

    def release_lease(self, session_id: str) -> None:
        """Give the lease up if this handle still holds it; forget it either way."""
        epoch = self.leases.forget(session_id)
        if epoch is not None:
            self._run("releasing a session lease", L.RELEASE_HELD_SQL, (session_id, self.node, epoch))

    def lease_node(self, session_id: str) -> str | None:
        """The node holding a live lease on the session, or None."""
        rows = self._run("reading a session lease", L.LIVE_NODE_SQL, (session_id,))
        return rows[0][0] if rows else None

    def renew_leases(self) -> None:
        """Renew every lease this handle holds now (the keeper does it every ``lease_renew``)."""
        self._start_keeper()
        assert self._keeper is not None
        self._keeper.tick()

    def _renew(self, held: dict[str, int]) -> set[str]:
        """The keeper's renewal, on a connection of its own (never the handle's)."""
        params = {"s": list(held), "e": list(held.values()), "n": self.node, "ttl": self.lease_ttl}
        with connect(self.url) as db:
            return {r[0] for r in db.execute(L.RENEW_SQL, params).fetchall()}

    def _start_keeper(self) -> None:
        with self._keeper_lock:
            keeper = self._keeper
            if keeper is not None and keeper.is_alive() and self._pid == os.getpid():
                return
            if keeper is not None and self._pid != os.getpid():
                keeper = None  # the parent's thread did not survive the fork
            if keeper is None or not keeper.is_alive():
                self._keeper = L.LeaseKeeper(self.leases, self.lease_renew, self._renew)
                self._keeper.start()

    # -- session records ---------------------------------------------------
    _encode = staticmethod(encode_record_field)
    _record = staticmethod(record_from_row)

    def create_sessions(self, records: list[SessionRecord]) -> None:
        """Insert new records, all or none; StoreError if one with the same id exists."""
        rows = [tuple(self._encode(n, getattr(r, n)) for n in _FIELDS) for r in records]
        sql = f"INSERT INTO sa_sessions ({', '.join(_FIELDS)}) VALUES ({', '.join(['%s'] * len(_FIELDS))})"
        try:
            with self._tx(self._conn(), "creating a session") as cur:
                cur.executemany(sql, rows)
        except StoreError as exc:
            if isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
                ids = ", ".join(r.session_id for r in records)
                raise StoreError(f"session {ids} already exists") from exc
            raise

    def get_session(self, session_id: str) -> SessionRecord | None:
        """The record of ``session_id``, or None."""
        rows = self._run("reading a session", f"{_SELECT_SESSION} WHERE session_id = %s", (session_id,))
        return self._record(rows[0]) if rows else None

    def update_session(self, session_id: str, **fields: Any) -> None:
        """Set some fields of an existing record (ValueError for unknown fields).

        Fenced when this handle holds the session's lease: a copy that lost it cannot
        overwrite the new owner's record (LeaseLost). The lease itself is left as it is
        (a passivating copy calls ``release_lease`` after its last write)."""
        unknown = set(fields) - set(_FIELDS)
        if unknown:
            raise ValueError(f"cannot update session field(s): {', '.join(sorted(unknown))}")
        if not fields:
            if self.get_session(session_id) is None:
                raise StoreError(f"no session {session_id}")
            return
        epoch = self.leases.epoch(session_id)  # raises LeaseLost once fenced
        sets = ", ".join(f"{name} = %s" for name in fields)
        values = tuple(self._encode(n, v) for n, v in fields.items())
        with self._tx(self._conn(), "updating a session") as cur:
            if epoch is not None:
                cur.execute(
                    "SELECT 1 FROM sa_leases WHERE session_id = %s AND node = %s AND epoch = %s FOR UPDATE",
                    (session_id, self.node, epoch),
                )
                if cur.fetchone() is None:
                    why = f"session {session_id}: node {self.node!r} lost its lease (epoch {epoch}); update refused"
                    raise self.leases.lose(session_id, why)
            cur.execute(f"UPDATE sa_sessions SET {sets} WHERE session_id = %s", (*values, session_id))
            if cur.rowcount == 0:
                raise StoreError(f"no session {session_id}")

    def list_sessions(self, state: str | None = None) -> list[SessionRecord]:
        """All records (or those in ``state``), oldest ``created_at`` first."""
        where, params = ("WHERE state = %s", (state,)) if state is not None else ("", ())
        sql = f"{_SELECT_SESSION} {where} ORDER BY created_at, session_id"
        return [self._record(r) for r in self._run("listing sessions", sql, params)]

    def count_sessions(self, state: str | None = None) -> int:
        """How many records (in ``state``)."""
        where, params = ("WHERE state = %s", (state,)) if state is not None else ("", ())
        return int(self._run("counting sessions", f"SELECT count(*) FROM sa_sessions {where}", params)[0][0])

    def delete_session(self, session_id: str) -> bool:
        """Remove the record, its events and its lease in one transaction."""
        with self._tx(self._conn(), "deleting a session") as cur:
            cur.execute("DELETE FROM sa_events WHERE session_id = %s", (session_id,))
            events = cur.rowcount
            cur.execute("DELETE FROM sa_sessions WHERE session_id = %s", (session_id,))
            records = cur.rowcount
            cur.execute("DELETE FROM sa_leases WHERE session_id = %s", (session_id,))
        self.leases.forget(session_id)
        return events + records > 0

    def reconcile_live_sessions(self) -> list[str]:
        """At daemon start-up: no copy of *this node* survived, so its leases are released,
        and every 'live' record that no node holds a live lease on becomes 'passivated'
        (sessions live on other nodes are left alone). Returns the ids changed."""
        with self._tx(self._conn(), "reconciling live sessions") as cur:
            cur.execute(L.RELEASE_ALL_SQL, (self.node,))
            cur.execute(
                """UPDATE sa_sessions AS s SET state = 'passivated'
                WHERE s.state = 'live' AND NOT EXISTS (
                    SELECT 1 FROM sa_leases AS l WHERE l.session_id = s.session_id
                    AND l.node IS NOT NULL AND l.expires_at > clock_timestamp() AND NOT """
                + L.DEAD_HOLDER
                + """)
                RETURNING s.session_id, s.created_at"""
            )
            rows = cur.fetchall()
        return [r[0] for r in sorted(rows, key=lambda r: (r[1], r[0]))]

    # -- the shared token secret ---------------------------------------------
    def token_secrets(self, new_secret: str) -> list[str]:
        """The shared token secrets (signing one first): ``new_secret`` is stored as the
        signing secret when none is yet, so that every gateway of the cluster agrees."""
        with self._tx(self._conn(), "reading the token secret") as cur:
            cur.execute("INSERT INTO sa_secrets VALUES ('token', %s) ON CONFLICT DO NOTHING", (new_secret,))
            cur.execute("SELECT name, value FROM sa_secrets WHERE name IN ('token', 'token.previous')")
            found = dict(cur.fetchall())
        return [found[k] for k in ("token", "token.previous") if k in found]

    def cluster_key(self, new_key: str) -> str:
        """The cluster key that signs what crosses nodes outside Thespian (Redis messages):
        ``new_key`` is stored when none is yet (first writer wins), the stored one answered."""
        with self._tx(self._conn(), "reading the cluster key") as cur:
            cur.execute("INSERT INTO sa_secrets VALUES ('cluster', %s) ON CONFLICT DO NOTHING", (new_key,))
            cur.execute("SELECT value FROM sa_secrets WHERE name = 'cluster'")
            row = cur.fetchone()
        return str(row[0])

    def close(self) -> None:
        """Stop the renewal, close this process's connection; later calls raise. Idempotent."""
        self._closed = True
        keeper, self._keeper = self._keeper, None
        if keeper is not None and self._pid == os.getpid():
            keeper.stop()
        if self._db is not None and self._pid == os.getpid():
            self._db.close()
        self._db = None


class _Transaction:
    """``with``: a cursor in a transaction on ``db``; psycopg errors become StoreError."""

    def __init__(self, store: PostgresStore, db: Any, doing: str) -> None:
        self.store, self.db, self.doing = store, db, doing

    def __enter__(self) -> Any:
        self._tx = self.db.transaction()
        try:
            self._tx.__enter__()
        except psycopg.Error as exc:
            raise self.store._wrap(exc, self.doing) from exc
        self.cur = self.db.cursor()
        return self.cur

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        try:
            self._tx.__exit__(kind, exc, tb)
        except psycopg.Error as err:
            raise self.store._wrap(err, self.doing) from err
        if isinstance(exc, psycopg.Error):
            raise self.store._wrap(exc, self.doing) from exc
