"""What the supervisor answers about sessions: info, list, stats, revoke, delete, retention,
and workspace reads (handed to the session actor).

A mixin of ``SupervisorActor``, kept apart so that the routing and lifecycle logic of
``supervisor.py`` reads on its own. The attributes and methods it uses are the
supervisor's (declared below for the type checker).
"""

from __future__ import annotations

import logging
import shutil
import time
from typing import TYPE_CHECKING, Any

from thespian.actors import ActorExitRequest  # type: ignore[import-untyped]

from ..bridge import FILE_OPS
from ..errors import StoreError
from ..messages import FileRequest, Query
from ..protocol import error_frame, status_update
from .registry import Entry

if TYPE_CHECKING:
    from ..bridge import Outbox
    from ..config import Config
    from ..store import Store

__all__ = ["SessionQueries", "RETENTION"]

log = logging.getLogger("sessionactors.supervisor")

RETENTION = "retention"


class SessionQueries:
    """Answers about sessions, for the REST API, the CLI and the metrics."""

    if TYPE_CHECKING:
        cfg: Config | None
        store: Store | None
        outbox: Outbox | None
        sessions: dict[str, Entry]
        stats: dict[str, int]
        stopping: bool

        def _entry(self, session_id: str) -> Entry | None: ...
        def _deliver(self, entry: Entry, msg: Any) -> None: ...
        def _evict(self, entry: Entry, payloads: list[dict[str, Any]], live: bool = False) -> None: ...
        def send(self, target: Any, msg: Any) -> None: ...
        def wakeupAfter(self, delay: float, payload: Any = None) -> None: ...

    def _on_file_query(self, frame: dict[str, Any]) -> None:
        """Workspace reads go to the session actor (rehydrating a passivated one), which replies."""
        entry = self._entry(frame.get("session_id") or "")
        if entry is None or entry.deleting:
            assert self.outbox is not None
            self.outbox.send(
                {"t": "reply", "req": frame["req"], "status": 404, "body": {"error": "Unknown session"}}
            )
            return
        if entry.state == "failed":
            entry.restarts.clear()
        data = frame.get("data")
        data = data if isinstance(data, dict) else {}
        self._deliver(
            entry, FileRequest(int(frame["req"]), FILE_OPS[frame["op"]], str(frame.get("path") or "."), data)
        )

    def _info(self, session_id: str) -> dict[str, Any] | None:
        assert self.store is not None
        record = self.store.get_session(session_id)
        if record is None:
            return None
        entry = self.sessions.get(session_id)
        state = entry.state if entry is not None else record.state
        if state == "passivating":
            state = "passivated"
        try:
            last: int | None = self.store.last_event_id(session_id)
            damage = None
        except StoreError as exc:  # one damaged journal must not hide every other session
            last, damage = None, str(exc)
        info = {
            "session_id": session_id,
            "state": state,
            "connections": len(entry.conns) if entry is not None else 0,
            "last_event_id": last,
            "owner": record.owner,
            "owner_login": record.owner_login,
            "created_at": record.created_at,
            "last_active": record.last_active,
            "token_version": record.token_version,
            "pid": entry.pid if entry is not None and entry.state == "live" else None,
            "node": self._node_of(session_id),
        }
        if damage is not None:
            info["store_error"] = damage
        return info

    def _node_of(self, session_id: str) -> str:
        """The node holding the session: a live lease's in a shared store, else this one."""
        assert self.cfg is not None
        lease_node = getattr(self.store, "lease_node", None)
        return (lease_node(session_id) if lease_node is not None else None) or self.cfg.node_name

    def _on_query(self, msg: Query) -> tuple[int, Any]:
        assert self.store is not None
        if msg.op == "ping":
            return 200, {"status": "ok", "sessions": len(self.sessions)}
        if msg.op == "stats":
            live = sum(1 for e in self.sessions.values() if e.state == "live")  # passivating: saved already
            failed = self.store.count_sessions("failed")
            total = self.store.count_sessions()
            return 200, {**self.stats, "live": live, "failed": failed, "passivated": total - live - failed}
        if msg.op == "info":
            info = self._info(msg.session_id or "")
            return (200, info) if info is not None else (404, {"error": "Unknown session"})
        if msg.op == "list":
            return 200, [self._info(r.session_id) for r in self.store.list_sessions()]
        if msg.op == "revoke":  # every token issued so far stops working; the caller mints a new one
            entry = self._entry(msg.session_id or "")
            record = self.store.get_session(msg.session_id or "")
            if entry is None or entry.deleting or record is None:
                return 404, {"error": "Unknown session"}
            version = max(entry.token_version, record.token_version) + 1
            self.store.update_session(entry.session_id, token_version=version)
            entry.token_version = version
            # Every attached connection joined with a token now refused: it is cut off too.
            self._evict(entry, [error_frame("Invalid token", 401)], live=True)
            log.info("supervisor: session %s tokens revoked (version %d)", entry.session_id, version)
            return 200, {"session_id": entry.session_id, "token_version": version}
        if msg.op == "delete":
            entry = self._entry(msg.session_id or "")
            if entry is None or entry.deleting:
                return 404, {"error": "Unknown session"}
            self._delete(entry)
            return 200, {"deleted": msg.session_id}
        return 400, {"error": f"unknown query {msg.op!r}"}

    def _delete(self, entry: Entry) -> None:
        entry.deleting = True
        self._evict(entry, [status_update("SESSION_DELETED", "This session was deleted", "error")])
        if entry.address is not None:
            self.send(entry.address, ActorExitRequest())
        else:
            self._delete_now(entry)

    def _delete_now(self, entry: Entry) -> None:
        assert self.store is not None and self.cfg is not None
        self.store.delete_session(entry.session_id)
        shutil.rmtree(self.cfg.workspaces_dir / entry.session_id, ignore_errors=True)
        self.sessions.pop(entry.session_id, None)

    def _sweep_retention(self) -> None:
        """Delete sessions passivated for longer than ``retention_days`` (0: keep forever)."""
        assert self.cfg is not None and self.store is not None
        keep = self.cfg.retention_days * 86400.0
        if keep <= 0 or self.stopping:
            return
        cutoff = time.time() - keep
        for record in self.store.list_sessions("passivated"):
            entry = self.sessions.get(record.session_id)
            if record.last_active < cutoff and (entry is None or entry.state == "passivated"):
                log.info("retention: deleting session idle since %s", record.last_active,
                         extra={"session_id": record.session_id})  # fmt: skip
                self._delete(entry or self._entry(record.session_id))  # type: ignore[arg-type]
        self.wakeupAfter(min(3600.0, max(0.1, keep / 4)), payload=RETENTION)
