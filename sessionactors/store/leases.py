"""Ownership leases: at most one node writes a session, fenced by an epoch.

What it is for: with a shared store (PostgreSQL) several daemons could hold a copy of the
same session. A lease row per session says which node owns it, under which epoch and
until when. A node takes the lease on the session's first append (or ``acquire_lease``):
a free, released or expired lease, or one of its own node (the copy that held it has
died: a crash restart), is taken with the epoch incremented; a live lease of another
node is refused. Every later append of that store handle is fenced: it commits only
while the row still names this node *and the epoch it took* (checked under the row
lock, in the append's own transaction). A node that was cut off past the expiry and
taken over sees ``LeaseLost`` on its next write and stops its copy; its stale write is
never stored. Renewal moves the expiry only, never the epoch, so a holder that merely
renewed late (nobody took over meanwhile) keeps writing safely.

Rows are never deleted while the session exists (a release clears the node and the
expiry): the epoch only grows, so an old holder's epoch can never match a later one.

This module holds the SQL of the lease table and the handle-local bookkeeping
(``LeaseBook``) with the renewal thread (``LeaseKeeper``); ``postgres.py`` runs them.
Expiry uses the database server's clock only, so nodes' clocks never need to agree.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from ..errors import LeaseLost

__all__ = [
    "DEAD_HOLDER",
    "DEFAULT_LEASE_RENEW",
    "DEFAULT_LEASE_TTL",
    "LEASES_DDL",
    "NODES_DDL",
    "LeaseBook",
    "LeaseKeeper",
]

log = logging.getLogger("sessionactors.store.leases")

DEFAULT_LEASE_TTL = 45.0
"""Seconds a lease stays valid without renewal (OpenHands V1's agent server: 45 s)."""
DEFAULT_LEASE_RENEW = 15.0
"""Seconds between renewals (OpenHands V1: 15 s, a third of the TTL)."""

LEASES_DDL = """CREATE TABLE sa_leases (
    session_id TEXT PRIMARY KEY,
    node TEXT,
    epoch BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL)"""

# The node registry (sessionactors/cluster/nodes.py writes it): a row per daemon, its
# heartbeat on the database clock. ``timeout_s`` is the node's own node_timeout: past
# heartbeat_at + timeout_s every node holds it dead, and its leases may be taken at once.
NODES_DDL = """CREATE TABLE sa_nodes (
    node_name TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'live',
    load INTEGER NOT NULL DEFAULT 0,
    timeout_s DOUBLE PRECISION NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL,
    started_at TIMESTAMPTZ NOT NULL)"""

# A lease row ``l`` whose holder is a registered node that stopped heartbeating (or left):
# it is taken over without waiting for the lease's expiry (the epoch still fences it).
# A holder with no registry row (a bare store handle) keeps the TTL rule alone.
DEAD_HOLDER = """EXISTS (SELECT 1 FROM sa_nodes AS n WHERE n.node_name = l.node AND (n.state = 'left'
    OR n.heartbeat_at + n.timeout_s * interval '1 second' <= clock_timestamp()))"""

# Take the lease of %(s)s for node %(n)s: insert epoch 1, or bump the epoch of a row that
# is released, expired or this node's own. No row back: another node holds it live.
ACQUIRE_SQL = (
    """INSERT INTO sa_leases AS l (session_id, node, epoch, expires_at)
VALUES (%(s)s, %(n)s, 1, clock_timestamp() + %(ttl)s * interval '1 second')
ON CONFLICT (session_id) DO UPDATE
    SET node = EXCLUDED.node, epoch = l.epoch + 1, expires_at = EXCLUDED.expires_at
    WHERE l.node IS NULL OR l.node = EXCLUDED.node OR l.expires_at <= clock_timestamp()
        OR """
    + DEAD_HOLDER
    + """
RETURNING l.epoch"""
)

HOLDER_SQL = """SELECT node, epoch, round(extract(epoch FROM expires_at - clock_timestamp()))::bigint
FROM sa_leases WHERE session_id = %s"""

RENEW_SQL = """UPDATE sa_leases AS l SET expires_at = clock_timestamp() + %(ttl)s * interval '1 second'
FROM unnest(%(s)s::text[], %(e)s::bigint[]) AS h(session_id, epoch)
WHERE l.session_id = h.session_id AND l.epoch = h.epoch AND l.node = %(n)s
RETURNING l.session_id"""

# A release keeps the row (and its epoch): see the module docstring.
RELEASE_HELD_SQL = """UPDATE sa_leases SET node = NULL, expires_at = '-infinity'
WHERE session_id = %s AND node = %s AND epoch = %s"""
RELEASE_ALL_SQL = "UPDATE sa_leases SET node = NULL, expires_at = '-infinity' WHERE node = %s"

LIVE_NODE_SQL = (
    """SELECT node FROM sa_leases AS l
WHERE session_id = %s AND node IS NOT NULL AND expires_at > clock_timestamp() AND NOT """
    + DEAD_HOLDER
)


def holder_text(row: tuple[Any, ...] | None) -> str:
    """Who holds a lease, for an error message (``row`` from ``HOLDER_SQL``)."""
    if row is None or row[0] is None:
        return "nobody (released)"
    node, epoch, left = row
    state = f"expires in {left} s" if left > 0 else f"expired {-left} s ago"
    return f"node {node!r} at epoch {epoch} ({state})"


class LeaseBook:
    """The leases one store handle holds (session -> epoch) and those it lost.

    Shared by the handle's thread and its ``LeaseKeeper``, hence the lock. A lost
    session stays refused (``check`` raises) until ``forget``: a copy that was fenced
    must stop, and only a new activation, which calls ``forget`` first (through
    ``release_lease``), may take the lease again.
    """

    def __init__(self, node: str) -> None:
        self.node = node
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._lost: dict[str, str] = {}
        _BOOKS.add(self)

    def epoch(self, session_id: str) -> int | None:
        """The epoch held for the session, None when not held; LeaseLost when lost."""
        with self._lock:
            why = self._lost.get(session_id)
            if why is not None:
                raise LeaseLost(why)
            return self._held.get(session_id)

    def hold(self, session_id: str, epoch: int) -> None:
        with self._lock:
            self._lost.pop(session_id, None)
            self._held[session_id] = epoch

    def lose(self, session_id: str, why: str) -> LeaseLost:
        """Record the loss; the error to raise."""
        with self._lock:
            self._held.pop(session_id, None)
            self._lost[session_id] = why
        log.error("%s", why)
        return LeaseLost(why)

    def forget(self, session_id: str) -> int | None:
        """Drop any knowledge of the session; the epoch that was held, if any."""
        with self._lock:
            self._lost.pop(session_id, None)
            return self._held.pop(session_id, None)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._held)

    def renewed(self, sent: dict[str, int], kept: set[str]) -> None:
        """After a renewal of ``sent``: those not in ``kept`` were taken over meanwhile."""
        for session_id, epoch in sent.items():
            if session_id not in kept:
                with self._lock:
                    if self._held.get(session_id) != epoch:  # released or re-taken meanwhile
                        continue
                self.lose(
                    session_id,
                    f"session {session_id}: node {self.node!r} lost its lease (epoch {epoch}) "
                    "to another node; its writes are refused",
                )


_BOOKS: weakref.WeakSet[LeaseBook] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A fork while the keeper thread held a book's lock would leave it locked forever in
    # the child (the thread does not exist there): every book gets a fresh lock.
    for book in list(_BOOKS):
        book._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class LeaseKeeper(threading.Thread):
    """Renews every lease of a ``LeaseBook`` each ``interval`` seconds, in a thread of its
    own with its own connection (``renew``), so that an idle live session keeps its lease.

    A renewal that fails (database unreachable) is logged and retried at the next tick:
    the leases may then expire and be taken over, which the epoch fence makes safe.
    """

    def __init__(self, book: LeaseBook, interval: float, renew: Callable[[dict[str, int]], set[str]]) -> None:
        super().__init__(name="sessionactors-lease-keeper", daemon=True)
        self.book = book
        self.interval = interval
        self._renew = renew
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.tick()

    def tick(self) -> None:
        """One renewal of every held lease (also called directly by tests)."""
        sent = self.book.snapshot()
        if not sent:
            return
        try:
            kept = self._renew(sent)
        except Exception as exc:  # the next tick retries; expiry + fencing keep it safe
            log.warning("cannot renew %d session lease(s): %s", len(sent), exc)
            return
        self.book.renewed(sent, kept)

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)
