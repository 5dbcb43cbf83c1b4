"""The single-process design: sessions in dicts inside the Socket.IO process.

A minimal reference shaped like the December 2024 OpenHands session manager: one
eventlet python-socketio process holds every session; each session is a
Socket.IO room; INIT without a token creates a session (a fresh random id and
an opaque random token, mapped in a dict), INIT with a token joins it; the
joining connection gets ``{"status": "ok", ...}`` then the replay of the stored
events with ``id > latest_event_id`` read from SQLite. Actions ``message`` and
``run`` behave as the daemon's echo runtime (``run`` -> an observation whose
content is the command). Every event is appended to SQLite (WAL,
``synchronous=FULL``, one row and one transaction per event) before it is
emitted to the room. No passivation, no authentication, no rate limit.

Tokens and session ids are also written to SQLite, and loaded into the dict at
start-up, so that the harness can seed a session of many events before starting
the server (``seed_session``); such a session is loaded from SQLite on its first
INIT (the single-process equivalent of a rehydration).

Run: ``python bench/single_process_server.py --port P --db FILE``.
"""

from __future__ import annotations

import eventlet

eventlet.monkey_patch()

import argparse  # noqa: E402
import json  # noqa: E402
import secrets  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

import eventlet.wsgi  # noqa: E402
import socketio  # noqa: E402

try:  # run as a script (python bench/single_process_server.py) or as a module (python -m bench....)
    from _shared import PAGE, health_app, now_iso, open_db  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    from bench._shared import PAGE, health_app, now_iso, open_db


class Session:
    """One session, in memory: its id, token and next event id."""

    __slots__ = ("next_id", "session_id", "token")

    def __init__(self, session_id: str, token: str, next_id: int) -> None:
        self.session_id, self.token, self.next_id = session_id, token, next_id


class SingleProcessServer:
    """Sessions in dicts, one room per session, SQLite appends in the serving process."""

    def __init__(self, db_path: str) -> None:
        self.db = open_db(db_path)
        self.tokens: dict[str, str] = dict(self.db.execute("SELECT token, session_id FROM sessions"))
        self.sessions: dict[str, Session] = {}
        self.conn_session: dict[str, str] = {}
        self.sio = socketio.Server(
            async_mode="eventlet",
            async_handlers=False,
            cors_allowed_origins=[],
            max_http_buffer_size=1_000_000,
            logger=False,
            engineio_logger=False,
        )
        self.sio.on("oh_action", self.on_action)
        self.sio.on("disconnect", self.on_disconnect)

    # -- storage ---------------------------------------------------------------------
    def _append(self, session: Session, fields: dict[str, Any]) -> dict[str, Any]:
        event = {"id": session.next_id, "timestamp": now_iso(), **fields}
        self.db.execute("BEGIN")
        self.db.execute(
            "INSERT INTO events VALUES (?, ?, ?)",
            (session.session_id, event["id"], json.dumps(event, separators=(",", ":"))),
        )
        self.db.execute("COMMIT")
        session.next_id += 1
        return event

    def _emit_event(self, session: Session, fields: dict[str, Any]) -> dict[str, Any]:
        event = self._append(session, fields)
        self.sio.emit("oh_event", event, room=session.session_id)
        return event

    # -- handlers ----------------------------------------------------------------------
    def on_disconnect(self, sid: str, *args: Any) -> None:
        self.conn_session.pop(sid, None)

    def _error(self, sid: str, message: str, code: int) -> None:
        self.sio.emit("oh_event", {"error": message, "error_code": code}, to=sid)

    def on_action(self, sid: str, data: Any = None, *extra: Any) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("action"), str):
            self._error(sid, "action must be a JSON object", 400)
            return
        name = data["action"]
        if name == "initialize":
            self._init(sid, data)
            return
        session = self.sessions.get(self.conn_session.get(sid, ""))
        if session is None:
            self._error(sid, "Not attached to a session; send initialize first", 400)
            return
        args = data.get("args")
        if not isinstance(args, dict):
            self._error(sid, "'args' must be an object", 400)
            return
        if name == "message" and isinstance(args.get("content"), str):
            self._emit_event(
                session,
                {"source": "user", "message": args["content"], "action": "message",
                 "args": {"content": args["content"]}},
            )  # fmt: skip
        elif name == "run" and isinstance(args.get("command"), str):
            command = args["command"]
            action = self._emit_event(
                session,
                {"source": "user", "message": f"Running command: {command}", "action": "run",
                 "args": {"command": command}},
            )  # fmt: skip
            self._emit_event(
                session,
                {"source": "environment", "message": "Command finished", "cause": action["id"],
                 "observation": "run", "content": command + "\n",
                 "extras": {"command": command, "exit_code": 0}},
            )  # fmt: skip
        else:
            self._error(sid, f"unsupported action {name[:64]!r}", 400)

    def _init(self, sid: str, data: dict[str, Any]) -> None:
        token = data.get("token")
        latest = data.get("latest_event_id", -1)
        if latest is None:
            latest = -1
        if isinstance(latest, bool) or not isinstance(latest, int) or latest < -1:
            self._error(sid, "'latest_event_id' must be an integer >= -1", 400)
            return
        if token:
            session_id = self.tokens.get(token) if isinstance(token, str) else None
            if session_id is None:
                self._error(sid, "Invalid token", 401)
                return
            session = self.sessions.get(session_id)
            if session is None:  # known but not in memory: load it (its next id) from SQLite
                (last,) = self.db.execute(
                    "SELECT COALESCE(MAX(id), -1) FROM events WHERE session_id = ?", (session_id,)
                ).fetchone()
                session = self.sessions[session_id] = Session(session_id, token, last + 1)
        else:
            session_id, token = uuid.uuid4().hex, secrets.token_urlsafe(24)
            self.db.execute("BEGIN")
            self.db.execute("INSERT INTO sessions VALUES (?, ?, ?)", (session_id, token, time.time()))
            self.db.execute("COMMIT")
            session = self.sessions[session_id] = Session(session_id, token, 0)
            self.tokens[token] = session_id
        old = self.conn_session.get(sid)
        if old is not None and old != session_id:
            self.sio.leave_room(sid, old)
        self.sio.enter_room(sid, session_id)
        self.conn_session[sid] = session_id
        self.sio.emit("oh_event", {"status": "ok", "token": token, "session_id": session_id}, to=sid)
        start = latest + 1
        while start < session.next_id:  # replay; nothing else runs meanwhile (one hub, no yield)
            rows = self.db.execute(
                "SELECT body FROM events WHERE session_id = ? AND id >= ? ORDER BY id LIMIT ?",
                (session_id, start, PAGE),
            ).fetchall()
            if not rows:
                break
            for (body,) in rows:
                self.sio.emit("oh_event", json.loads(body), to=sid)
            start += len(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True, help="SQLite file (created if missing)")
    args = parser.parse_args(argv)
    server = SingleProcessServer(args.db)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stopped by the harness: a clean exit
    listener = eventlet.listen((args.host, args.port), reuse_addr=True, backlog=1024)
    app = socketio.WSGIApp(server.sio, health_app)
    eventlet.wsgi.server(listener, app, log_output=False, max_size=10000, socket_timeout=None)


if __name__ == "__main__":
    main()
