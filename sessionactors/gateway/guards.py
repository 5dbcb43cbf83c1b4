"""What stands between a hostile client and the gateway's handlers (issue 18).

- ``guard_events``: python-socketio dispatches an ordinary event named ``connect`` or
  ``disconnect`` to the handler of that name (``42["connect",{}]`` reset the rate limit,
  ``42["disconnect"]`` detached the connection and drove the connections gauge negative).
  Events with a reserved name, or no name, are answered 400 and never dispatched.
- ``close_on_malformed``: python-engineio 4.x decodes a websocket packet outside the
  ``try`` of its receive loop, so a malformed one (the text ``xyz``) ends the handler by an
  exception that skips ``Socket.close``: the connection never reaches ``on_disconnect`` and
  stays attached to its session (a *ghost*) until the ping timeout. Patched here to close
  the socket on any way out of the handler.
- ``LogLimiter``: each malformed packet logged a 3 KB traceback (twice: engineio's own
  handler and the root logger), about 4 MB/s from one connection. Wire errors are logged in
  one line, at most ``PER_CONNECTION_BYTES`` per connection and ``TOTAL_BYTES`` in all per
  ``INTERVAL``; what is left out is counted in the next line that passes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from greenlet import getcurrent  # eventlet's green threads are greenlets

__all__ = [
    "RESERVED_EVENTS",
    "LogLimiter",
    "close_on_malformed",
    "guard_events",
    "tag_connection",
    "wire_logger",
]

log = logging.getLogger("sessionactors.gateway")

RESERVED_EVENTS = frozenset({"connect", "disconnect", "connect_error", "*"})
"""Names python-socketio (server and client) gives a meaning of their own; ``*`` is its
catch-all handler. None of them may come from a client as an event."""

INTERVAL = 10.0
PER_CONNECTION_BYTES = 2048
TOTAL_BYTES = 64 * 1024


def guard_events(sio: Any, refuse: Callable[[str | None, Any], None]) -> None:
    """Make ``sio`` hand an event with a reserved name (or none) to ``refuse(sid, name)``."""
    handle = sio._handle_event

    def _handle_event(eio_sid: str, namespace: str | None, ack_id: Any, data: Any) -> Any:
        name = data[0] if isinstance(data, list) and data else None
        if not isinstance(name, str) or name in RESERVED_EVENTS:
            refuse(sio.manager.sid_from_eio_sid(eio_sid, namespace or "/"), name)
            return None
        return handle(eio_sid, namespace, ack_id, data)

    sio._handle_event = _handle_event


def close_on_malformed() -> None:
    """Close an Engine.IO socket whose websocket handler ends by an exception.

    python-engineio 4.15 (``Socket._websocket_handler``): ``packet.Packet(encoded_packet=p)``
    sits before the ``try`` around ``self.receive(pkt)``; the ``ValueError`` of a malformed
    packet leaves the handler without ``self.close(...)``, so no ``disconnect`` event.
    """
    from engineio import socket as eio_socket

    handler = eio_socket.Socket._websocket_handler
    if getattr(handler, "closes_on_error", False):
        return

    def _websocket_handler(self: Any, ws: Any) -> Any:
        try:
            return handler(self, ws)
        except Exception as exc:
            wire_log.info("connection %s: closing its websocket: %s: %s", self.sid, type(exc).__name__, exc)
            if not self.closed:
                self.queue.put(None)  # the writer task ends and closes the websocket
                self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
            try:
                ws.close()
            except Exception:  # already closed: nothing more to do
                pass
            return []

    _websocket_handler.closes_on_error = True  # type: ignore[attr-defined]
    eio_socket.Socket._websocket_handler = _websocket_handler


class LogLimiter(logging.Filter):
    """A filter bounding the log bytes of wire errors, per connection and in all.

    The connection is what ``tag_connection`` noted on the current green thread (eventlet
    serves each request in one): the Engine.IO session of a polling request, else the
    peer's address and port (a websocket is one TCP connection). A traceback is kept the first time its exception type and message head are seen, and
    reduced to one line afterwards.
    """

    def __init__(self, per_connection: int = PER_CONNECTION_BYTES, total: int = TOTAL_BYTES) -> None:
        super().__init__()
        self.per_connection, self.total = per_connection, total
        self.window = time.monotonic()
        self.spent: dict[object, int] = {}
        self.spent_total = 0
        self.dropped = 0
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self.window >= INTERVAL:
            self.window, self.spent, self.spent_total = now, {}, 0
        full = False  # a traceback kept whole: only the first of its kind
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            key = (type(exc).__name__, record.getMessage()[:80])
            if key not in self.seen and len(self.seen) < 1000:
                self.seen.add(key)
                full = True
            else:
                text = f"{record.getMessage()}: {type(exc).__name__}: {str(exc)[:200]}"
                record.msg, record.args, record.exc_info, record.exc_text = text, None, None, None
        size = len(record.getMessage()) + (4000 if full else 100)
        current = getcurrent()
        conn = getattr(current, "sa_conn", None) or id(current)
        spent = self.spent.get(conn, 0)
        if (not full and spent + size > self.per_connection) or self.spent_total + size > self.total:
            self.dropped += 1
            return False
        self.spent[conn] = spent + size
        self.spent_total += size
        if self.dropped:
            record.msg = f"{record.getMessage()} ({self.dropped} wire messages left out before this one)"
            record.args, self.dropped = None, 0
        return True


def tag_connection(environ: dict[str, Any]) -> None:
    """Note which connection the current request is, for ``LogLimiter``."""
    query = environ.get("QUERY_STRING", "")
    sid = next((p[4:] for p in query.split("&") if p.startswith("sid=")), None)
    peer = f"{environ.get('REMOTE_ADDR')}:{environ.get('REMOTE_PORT')}"
    getcurrent().sa_conn = sid[:64] if sid else peer


def wire_logger(name: str, limiter: LogLimiter, level: int = logging.WARNING) -> logging.Logger:
    """A logger for what clients cause (engineio, socketio, our guards), rate-limited.

    Given to python-socketio/engineio as their ``logger``: with ``False`` they add a
    handler of their own to stderr, and every error came out twice.
    """
    logger = logging.getLogger(name)
    logger.setLevel(level)  # engineio's and socketio's info lines are one per packet
    if limiter not in logger.filters:
        logger.addFilter(limiter)
    return logger


wire_log = logging.getLogger("sessionactors.gateway.wire")
