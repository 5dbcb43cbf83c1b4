"""The limit: a bare python-socketio server on eventlet, no sessions, no storage.

It answers ``oh_action`` by emitting the payload back as ``oh_event`` to the
sender (an INIT is answered with ``{"status": "ok", "token": "x", "session_id":
<random>}``). Whatever our daemon does on top of python-socketio + eventlet costs
time above this floor. Same server settings as the daemon's gateway
(``async_handlers=False``, eventlet WSGI server, backlog 1024).

Run: ``python bench/limit_server.py --port P`` (``GET /api/health`` answers 200).
"""

from __future__ import annotations

import eventlet

eventlet.monkey_patch()

import argparse  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

import eventlet.wsgi  # noqa: E402
import socketio  # noqa: E402

try:  # run as a script (python bench/limit_server.py) or as a module (python -m bench.limit_server)
    from _shared import health_app  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    from bench._shared import health_app


def build() -> socketio.WSGIApp:
    """The echo server as a WSGI application."""
    sio = socketio.Server(
        async_mode="eventlet",
        async_handlers=False,
        cors_allowed_origins=[],
        max_http_buffer_size=1_000_000,
        logger=False,
        engineio_logger=False,
    )

    @sio.on("oh_action")
    def oh_action(sid: str, data: Any = None, *extra: Any) -> None:
        if isinstance(data, dict) and data.get("action") == "initialize":
            sio.emit("oh_event", {"status": "ok", "token": "x", "session_id": uuid.uuid4().hex}, to=sid)
        else:
            sio.emit("oh_event", data, to=sid)

    return socketio.WSGIApp(sio, health_app)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stopped by the harness: a clean exit
    listener = eventlet.listen((args.host, args.port), reuse_addr=True, backlog=1024)
    eventlet.wsgi.server(listener, build(), log_output=False, max_size=10000, socket_timeout=None)


if __name__ == "__main__":
    main()
