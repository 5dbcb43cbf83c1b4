"""The node registry: a row per daemon in ``sa_nodes``, kept fresh by a heartbeat thread.

What it is for: failure detection that does not wait for Thespian (which notices a dead
member only after minutes). Each daemon with a ``store_url`` registers itself (name,
gateway address, state, load, started_at) and heartbeats every ``heartbeat_interval``
seconds on a connection of its own; ``heartbeat_at`` is the database's clock, so the
nodes' clocks never need to agree. A node whose ``heartbeat_at`` is older than its
``node_timeout`` is dead for everyone: the sessions it holds are taken over at once
(``store/leases.py``, ``DEAD_HOLDER``) with the epoch incremented, so fencing still holds.

Self-fencing: the heart remembers when its last successful heartbeat was *sent*; once
that is older than ``node_timeout`` this node is ``fenced`` (before any other node can
hold it dead, since the row's time is later than the sending), and the supervisor stops
its copies. The database also refuses the appends of a node presumed dead (``sa_append``).

States: ``live``; ``draining`` (set by ``sessionactors drain``: no new sessions, the live
ones passivate); ``left`` (a clean stop).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

try:
    import psycopg
except ImportError:  # pragma: no cover - an install without the dependency
    psycopg = None  # type: ignore[assignment]

from ..store.pgconnect import connect

__all__ = ["PLACEMENT_MARGIN", "NodeHeart", "NodeInfo", "choose_node", "list_nodes", "set_state"]

log = logging.getLogger("sessionactors.cluster.nodes")

REGISTER_SQL = """INSERT INTO sa_nodes AS n (node_name, address, state, load, timeout_s, heartbeat_at, started_at)
VALUES (%(n)s, %(a)s, 'live', 0, %(t)s, clock_timestamp(), clock_timestamp())
ON CONFLICT (node_name) DO UPDATE SET address = EXCLUDED.address, state = 'live', load = 0,
    timeout_s = EXCLUDED.timeout_s, heartbeat_at = EXCLUDED.heartbeat_at, started_at = EXCLUDED.started_at"""

# One round trip: the heartbeat, this node's load (its live leases) and its state back.
BEAT_SQL = """UPDATE sa_nodes SET heartbeat_at = clock_timestamp(), load = (
    SELECT count(*) FROM sa_leases WHERE node = %(n)s AND expires_at > clock_timestamp())
WHERE node_name = %(n)s RETURNING state"""

LEAVE_SQL = "UPDATE sa_nodes SET state = 'left', load = 0 WHERE node_name = %s"

LIST_SQL = """SELECT node_name, address, state, load,
    extract(epoch FROM clock_timestamp() - heartbeat_at)::float8, timeout_s,
    extract(epoch FROM started_at)::float8
FROM sa_nodes ORDER BY node_name"""


@dataclass(frozen=True)
class NodeInfo:
    """A row of the registry as read now: ``alive`` is False once ``age`` > ``timeout``."""

    name: str
    address: str
    state: str
    load: int
    age: float  # seconds since its last heartbeat, on the database clock
    timeout: float
    started_at: float

    @property
    def alive(self) -> bool:
        return self.state != "left" and self.age < self.timeout

    @property
    def shown_state(self) -> str:
        """``live``/``draining``/``left``, or ``dead`` for a node that missed its heartbeats."""
        return self.state if self.state == "left" or self.alive else "dead"


# A node keeps a new session itself unless another live node has more than this many fewer
# sessions: moving a session costs a cross-node hop for its tabs, a small imbalance does not.
PLACEMENT_MARGIN = 2


def choose_node(
    peers: list[NodeInfo], me: str, extra: dict[str, int] | None = None, margin: int = PLACEMENT_MARGIN
) -> str | None:
    """The node a new (or passivated) session should be activated on: the least-loaded node
    that is alive and ``live`` (never a draining, left or dead one), ``me`` when its load is
    within ``margin`` of that; None when no node can take it. ``extra`` adds the placements
    made since the loads were read (they lag by up to a heartbeat), so a burst spreads."""
    extra = extra or {}
    load = {p.name: p.load + extra.get(p.name, 0) for p in peers if p.alive and p.state == "live"}
    if not load:
        return None
    best = min(load, key=lambda n: (load[n], n))
    if me in load and load[me] - load[best] <= margin:
        return me
    return best


def _connect(url: str, timeout: float, user_timeout: float = 10.0) -> Any:
    return connect(url, timeout, user_timeout)


def _read(db: Any) -> list[NodeInfo]:
    return [
        NodeInfo(r[0], r[1], r[2], int(r[3]), float(r[4]), float(r[5]), float(r[6]))
        for r in db.execute(LIST_SQL)
    ]


def list_nodes(url: str) -> list[NodeInfo]:
    """Every registered node, by name (psycopg.Error when the database cannot answer)."""
    with _connect(url, 10) as db:
        return _read(db)


def set_state(url: str, node: str, state: str) -> bool:
    """Set a node's state (``draining``, ``live``); False when no such node is registered."""
    with _connect(url, 10) as db:
        return db.execute("UPDATE sa_nodes SET state = %s WHERE node_name = %s", (state, node)).rowcount > 0


class NodeHeart(threading.Thread):
    """Registers this node and heartbeats until ``stop``; what it learnt is read by the
    supervisor (``state``, ``fenced``, ``peers``) without touching the database itself."""

    def __init__(self, url: str, node: str, address: str, interval: float, timeout: float) -> None:
        super().__init__(name="sessionactors-node-heart", daemon=True)
        self.url, self.node, self.address = url, node, address
        self.interval, self.timeout = interval, timeout
        self.state = "live"
        self.peers: list[NodeInfo] = []  # every node as of the last heartbeat
        self.last_ok = time.monotonic()  # when the last successful heartbeat was sent
        self.stopping = threading.Event()
        self._db: Any = None
        self._registered = False
        self.failing = False
        self._placed: dict[str, int] = {}  # placements since the last heartbeat, by node

    @property
    def fenced(self) -> bool:
        """This node's own heartbeat is older than ``node_timeout``: it must stop writing."""
        return time.monotonic() - self.last_ok > self.timeout

    def register(self) -> None:
        """The first heartbeat, before the node serves (psycopg.Error if it cannot)."""
        self._beat(first=True)

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self._beat()
            except Exception as exc:  # the next beat retries; past node_timeout we are fenced
                level = logging.DEBUG if self.failing else logging.WARNING  # once per outage
                log.log(level, "node %s: heartbeat failed: %s", self.node, " ".join(str(exc).split()))
                self.failing = True
                self._drop()

    def _beat(self, first: bool = False) -> None:
        sent = time.monotonic()
        if self._db is None or self._db.closed:
            # A beat stuck on a silent network fails within half of node_timeout, so that
            # the heart reconnects (and resumes soon after a heal) instead of waiting on TCP.
            self._db = _connect(self.url, self.interval, self.timeout / 2)
        params = {"n": self.node, "a": self.address, "t": self.timeout}
        if first or not self._registered:
            self._db.execute(REGISTER_SQL, params)
            self._registered = True
        row = self._db.execute(BEAT_SQL, {"n": self.node}).fetchone()
        if row is None:  # our row was deleted: register again at once
            self._db.execute(REGISTER_SQL, params)
            row = ("live",)
        was_fenced = self.fenced
        self.last_ok = sent
        self.state = str(row[0])
        self.peers = _read(self._db)
        self._placed = {}  # the loads just read include them (or their sessions never began)
        if was_fenced or self.failing:
            log.warning("node %s: heartbeats resume", self.node)
        self.failing = False

    def _drop(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except Exception:
                pass

    def live_peer(self) -> NodeInfo | None:
        """The least-loaded other live node, to send clients to; None when there is none."""
        others = [p for p in self.peers if p.name != self.node and p.alive and p.state == "live"]
        return min(others, key=lambda p: (p.load, p.name)) if others else None

    def place(self) -> str | None:
        """Where a new session goes (``choose_node`` on the last heartbeat's registry, no
        database call), counted so that the next placements before the next beat see it."""
        chosen = choose_node(self.peers, self.node, self._placed)
        if chosen is not None:
            self._placed[chosen] = self._placed.get(chosen, 0) + 1
        return chosen

    def address_of(self, node: str) -> str | None:
        return next((p.address for p in self.peers if p.name == node), None)

    def stop(self, leave: bool = True) -> None:
        """Stop beating; ``leave`` marks the node ``left`` (a clean stop)."""
        self.stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)
        if leave:
            try:
                with _connect(self.url, 5) as db:
                    db.execute(LEAVE_SQL, (self.node,))
            except Exception as exc:
                log.warning("node %s: could not mark itself left: %s", self.node, exc)
        self._drop()
