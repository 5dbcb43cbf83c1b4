"""How a session actor writes its events: numbered, stored durably, only then sent; and
what it answers when the store refuses them (the per-session quota, a failing disk).

A mixin of ``SessionActor`` (like ``passivation.py``), kept apart so that ``session.py``
reads as what a live session does with its connections. The attributes and methods it
uses are the session's (declared below for the type checker).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..errors import QuotaExceeded, StoreError
from ..protocol import error_frame

if TYPE_CHECKING:
    from ..bridge import Outbox
    from ..store import Store

__all__ = ["EventLog", "STORE_FAILED"]

STORE_FAILED = "The action could not be stored; try again"

log = logging.getLogger("sessionactors.session")


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


class EventLog:
    """Numbers, stores and sends a session's events; answers a refused append."""

    if TYPE_CHECKING:
        store: Store | None
        session_id: str | None
        next_id: int
        conns: dict[str, None]
        outbox: Outbox | None
        samples: dict[str, Any]

        def _shape(self, fields_list: list[dict[str, Any]]) -> list[dict[str, Any]]: ...

        def _append(self, events: list[dict[str, Any]]) -> None: ...  # passivation.py: fenced

    def _emit(self, fields_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Number, store (durably) and then send events to every connection."""
        assert self.store is not None and self.session_id is not None
        fields_list = self._shape(fields_list)
        stamp = _now_iso()
        events = []
        for i, fields in enumerate(fields_list):
            event = {"id": self.next_id + i, "timestamp": stamp}
            event.update(fields)
            events.append(event)
        started = time.perf_counter()
        self._append(events)  # a write fenced by a shared store's lease stops this copy
        self.samples["append"].append(round(time.perf_counter() - started, 6))
        self.samples["stored"] += len(events)
        self.next_id += len(events)
        if self.conns:
            self._send_to(list(self.conns), events)
        return events

    def _emit_outputs(self, fields_list: list[dict[str, Any]]) -> None:
        """``_emit`` for a runtime's output: over the quota, every connection is told (the
        output is dropped, never half stored); any other store failure propagates."""
        try:
            self._emit(fields_list)
        except QuotaExceeded as exc:
            self._refused(list(self.conns), exc, "runtime output")

    def _refused(self, conns: list[str], exc: StoreError, what: str) -> None:
        """Tell ``conns`` that ``what`` was not stored (nothing was), and log why."""
        if isinstance(exc, QuotaExceeded):
            log.warning("refused %s: %s", what, exc, extra={"session_id": self.session_id, "reason": "quota"})
            self._send_to(conns, [error_frame(str(exc), exc.error_code)])
            return
        log.error("could not store %s: %s", what, exc, extra={"session_id": self.session_id})
        self._send_to(conns, [error_frame(STORE_FAILED, 503)])

    def _send_to(self, conns: list[str], payloads: list[dict[str, Any]]) -> None:
        if conns and payloads:
            self.outbox_send({"t": "emit", "to": conns, "events": payloads})

    def outbox_send(self, frame: dict[str, Any]) -> None:
        if self.outbox is not None and not self.outbox.send(frame):
            log.warning(
                "session %s: gateway unreachable, frame dropped (events stay stored)", self.session_id
            )
