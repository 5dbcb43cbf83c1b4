"""The gateway's HTTP server: eventlet's WSGI server, bounded against silent connections.

eventlet serves each TCP connection in a green thread of a pool of
``max_http_connections``; a connection that never sends a request held its thread for
ever (``socket_timeout=None``), so 10,050 silent connections made ``/api/health`` and every
new client wait for as long as they were held (issue 18). Two bounds now:

- ``http_idle_timeout``: a connection that sends no request line (its first, or the next
  one on a kept-alive connection) within it, or stalls a read or a write, is closed;
- while fewer than ``RESERVE`` of the pool's threads are free, the connections that have
  waited longest for their first request line (at least ``MIN_SILENT`` seconds) are closed,
  at each new connection and every ``MIN_SILENT`` seconds: a flood of silent connections
  churns through itself and new clients, which speak at once, keep being served.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import eventlet
import eventlet.wsgi
from eventlet import greenpool

from ..config import Config

__all__ = ["MIN_SILENT", "RESERVE", "serve_http"]

log = logging.getLogger("sessionactors.gateway")

RESERVE = 0.1
"""Fraction of the pool kept free by closing the oldest silent connections."""
MIN_SILENT = 0.5
"""Seconds a connection must have waited silently before it may be closed for another."""


def serve_http(listener: Any, app: Any, cfg: Config) -> None:
    """Serve ``app`` on ``listener`` until the process ends."""
    pool = greenpool.GreenPool(cfg.max_http_connections)
    reserve = max(1, int(cfg.max_http_connections * RESERVE))
    silent: dict[int, tuple[float, Any]] = {}  # waiting for their first request line, oldest first
    evicted = [0]

    def make_room() -> None:
        now = time.monotonic()
        while pool.free() < reserve and silent:
            oldest, (since, sock) = next(iter(silent.items()))
            if now - since < MIN_SILENT:
                return
            del silent[oldest]
            _shut(sock)
            evicted[0] += 1
            if evicted[0] & (evicted[0] - 1) == 0:  # 1, 2, 4, 8...: never a flood of lines
                log.warning("closed %d silent connection(s) to keep the server reachable", evicted[0])

    def janitor() -> None:
        # Also when no new connection comes in: a full pool blocks eventlet's accept loop.
        while True:
            eventlet.sleep(MIN_SILENT)
            make_room()

    class Protocol(eventlet.wsgi.HttpProtocol):  # type: ignore[misc]
        """eventlet's HTTP protocol, telling the server which connections have not spoken."""

        spoke = False

        def _read_request_line(self) -> Any:
            if self.spoke:
                return super()._read_request_line()
            key = id(self)
            make_room()
            silent[key] = (time.monotonic(), self.connection)
            try:
                return super()._read_request_line()
            finally:
                silent.pop(key, None)
                self.spoke = True

    eventlet.spawn_n(janitor)
    eventlet.wsgi.server(
        listener,
        app,
        log_output=False,
        custom_pool=pool,
        protocol=Protocol,
        socket_timeout=cfg.http_idle_timeout,
        keepalive=cfg.http_idle_timeout,
    )


def _shut(sock: Any) -> None:
    """End a silent connection: its green thread's read returns nothing and it exits."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already gone
        pass
