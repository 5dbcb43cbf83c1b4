"""The supervisor's end of the bridge: gateway frames in, routing calls out; re-linking.

A mixin of ``SupervisorActor``. The gateway's frames (``init``, ``action``,
``disconnect``, ``query``) arrive on the bridge socket the actor watches; this turns
each into the supervisor's own call. When the gateway is gone (EOF, or a failed send)
every connection went with it, so all are detached, and the supervisor re-links
every 0.1 s until a new gateway listens.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..bridge import FILE_OPS, LinkOutbox
from ..messages import Action, Init, Query
from ..protocol import error_frame

if TYPE_CHECKING:
    from ..bridge import Outbox

__all__ = ["RECONNECT", "GatewayLink"]

log = logging.getLogger("sessionactors.supervisor")

RECONNECT = "reconnect"


class GatewayLink:
    """Decodes the gateway's frames for the supervisor and keeps the link up."""

    if TYPE_CHECKING:
        outbox: Outbox | None
        stopping: bool
        gateway_stopping: bool
        reconnect_armed: bool
        conn_session: dict[str, str]

        def wakeupAfter(self, timePeriod: float, payload: Any = None) -> None: ...
        def _answer(self, conn: str, payloads: list[dict[str, Any]]) -> None: ...
        def _drop_conn(self, conn: str) -> None: ...
        def _on_init(self, msg: Init) -> None: ...
        def _on_disconnect(self, conn: str) -> None: ...
        def _on_action(self, msg: Action) -> None: ...
        def _on_file_query(self, frame: dict[str, Any]) -> None: ...
        def _on_query(self, msg: Query) -> tuple[int, Any]: ...

    def _arm_reconnect(self) -> None:
        if not self.reconnect_armed:
            self.reconnect_armed = True
            self.wakeupAfter(0.1, payload=RECONNECT)

    def _on_link_lost(self) -> None:
        """The gateway is gone (EOF, or a failed send): its connections went with it."""
        if self.gateway_stopping:  # the daemon stops it: a clean stop
            log.info("supervisor: gateway stopped; detaching every connection")
        else:
            log.warning("supervisor: gateway link lost; detaching every connection")
        for conn in list(self.conn_session):
            self._drop_conn(conn)
        self._arm_reconnect()

    def _on_bridge(self) -> None:
        assert isinstance(self.outbox, LinkOutbox)
        if self.outbox.link is None:  # a readiness left over from the link that just closed
            return
        frames = self.outbox.link.receive()
        if frames is None:
            self.outbox.link = None
            self._on_link_lost()
            return
        for frame in frames:
            kind = frame.get("t")
            if kind in ("init", "action") and self.stopping:
                self._answer(frame["conn"], [error_frame("The server is shutting down", 503)])
            elif kind == "init":
                self._on_init(
                    Init(
                        frame["conn"],
                        frame.get("session_id"),
                        frame.get("user_id"),
                        frame.get("user_login"),
                        frame.get("args") or {},
                        frame.get("latest_event_id", -1),
                        int(frame.get("token_version") or 0),
                        frame.get("secrets") or {},
                    )
                )
            elif kind == "disconnect":
                self._on_disconnect(frame["conn"])
            elif kind == "action":
                self._on_action(Action(frame["conn"], frame["session_id"], frame["action"]))
            elif kind == "query" and frame.get("op") in FILE_OPS:
                self._on_file_query(frame)
            elif kind == "query":
                status, body = self._on_query(
                    Query(frame["op"], frame.get("session_id"), frame.get("req", 0))
                )
                self.outbox.send({"t": "reply", "req": frame.get("req", 0), "status": status, "body": body})
