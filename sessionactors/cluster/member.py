"""The supervisor's side of the cluster: it joins, refuses INITs while draining or fenced,
passivates a draining node's sessions and stops every copy of a fenced one.

What it is for: ``NodeHeart`` (``nodes.py``) runs in a thread of the supervisor's process
and only records what it learns; this mixin reads that on the supervisor's own thread (at
every liveness check, each second) and acts through the supervisor's routing, so that no
database call ever blocks the actor. A mixin of ``SupervisorActor`` (like ``lifecycle.py``):
it uses its ``sessions``, ``_evict`` and ``_answer``.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..protocol import error_frame, status_update
from .nodes import NodeHeart

__all__ = ["ClusterMember", "LIVE_ELSEWHERE"]

log = logging.getLogger("sessionactors.cluster")

LIVE_ELSEWHERE = "This session is live on another node"
_OWNER = re.compile(r"owned by node '([^']+)'")


class ClusterMember:
    """Node membership for the supervisor (nothing happens without ``store_url``)."""

    heart: NodeHeart | None = None
    cluster_fenced = False

    if TYPE_CHECKING:
        cfg: Config | None
        sessions: dict[str, Any]

        def send(self, target: Any, msg: Any) -> None: ...
        def _answer(self, conn: str, payloads: list[dict[str, Any]]) -> None: ...
        def _evict(self, entry: Any, payloads: list[dict[str, Any]], live: bool = False) -> None: ...

    def _join_cluster(self) -> None:
        """Register this node (psycopg.Error stops the start-up) and start heartbeating."""
        cfg = self.cfg
        if cfg is None or not cfg.store_url:
            return
        address = cfg.node_address or f"{cfg.host}:{cfg.port}"
        heart = NodeHeart(cfg.store_url, cfg.node_name, address, cfg.heartbeat_interval, cfg.node_timeout)
        heart.register()
        heart.start()
        self.heart = heart

    def _leave_cluster(self) -> None:
        heart, self.heart = self.heart, None
        if heart is not None:
            heart.stop(leave=True)

    def _peer_text(self) -> str:
        peer = self.heart.live_peer() if self.heart is not None else None
        return (
            f"connect to {peer.address} (node {peer.name})"
            if peer
            else "no other node is live; try again later"
        )

    def _cluster_refusal(self) -> str | None:
        """Why this node takes no INIT now (draining, or cut off from the store), else None."""
        heart = self.heart
        if heart is None:
            return None
        if heart.fenced:
            return "This node has lost the shared store; " + self._peer_text()
        if heart.state == "draining":
            return "This node is draining; " + self._peer_text()
        return None

    def _live_elsewhere(self, details: str) -> str:
        """The INIT answer for a session another node holds (``details``: the LeaseLost text)."""
        found = _OWNER.search(details)
        node = found.group(1) if found else None
        address = self.heart.address_of(node) if self.heart is not None and node else None
        where = f" ({node} at {address})" if address else (f" ({node})" if node else "")
        return f"{LIVE_ELSEWHERE}{where}; try again later"

    def _cluster_check(self) -> None:
        """Each second: a fenced node stops its copies (once per outage); a draining one
        passivates its live sessions, their tabs told where to reconnect."""
        heart = self.heart
        if heart is None:
            return
        fenced = heart.fenced
        if fenced and not self.cluster_fenced:
            log.error("node %s: no heartbeat for %.0f s; fencing itself", heart.node, heart.timeout)
            self._stop_live(self._cluster_refusal() or "")
        elif not fenced and heart.state == "draining":
            self._stop_live(self._cluster_refusal() or "")
        self.cluster_fenced = fenced

    def _stop_live(self, why: str) -> None:
        from thespian.actors import ActorExitRequest  # type: ignore[import-untyped]

        for entry in list(self.sessions.values()):
            if entry.state == "live" and entry.address is not None:
                log.warning("session %s: stopping it here: %s", entry.session_id, why)
                self._evict(entry, [status_update("NODE_LEAVING", why, "error"), error_frame(why, 503)])
                entry.state = "passivating"  # persisted and released by its exit; not restarted
                self.send(entry.address, ActorExitRequest())
