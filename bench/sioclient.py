"""A lean Socket.IO 5 / Engine.IO 4 client over aiohttp websockets, for load generation.

python-socketio's ``AsyncClient`` costs several times more CPU per frame than
this (it goes through its own packet classes, event dispatch and a task per
event); with ~1,000 connections on a 2-core machine the client must stay far
below the server's cost, so this speaks the framing directly, websocket
transport only (no polling), default namespace, no acks, no binary:

  server ``0{...}`` (open)  -> client ``40`` (connect) -> server ``40{"sid": ...}``
  client ``42["oh_action", {...}]``, server ``42["oh_event", {...}]``
  server ``2`` (ping)       -> client ``3`` (pong)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

__all__ = ["SioConn", "SioError", "new_http_session"]

EventHandler = Callable[[dict[str, Any], float], None]
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_loads = json.loads


class SioError(Exception):
    """The connection failed or was closed by the server."""


def new_http_session() -> aiohttp.ClientSession:
    """An aiohttp session without a connection limit (the default caps at 100)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))


def _ignore(payload: dict[str, Any], now: float) -> None:
    return None


class SioConn:
    """One Socket.IO connection; ``on_event(payload, perf_counter_time)`` gets every ``oh_event``."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, on_event: EventHandler = _ignore) -> None:
        self.http = http
        self.url = base_url.replace("http://", "ws://").rstrip("/") + "/socket.io/?EIO=4&transport=websocket"
        self.on_event = on_event
        self.ws: Any = None  # aiohttp.ClientWebSocketResponse once connected
        self.reader: asyncio.Task[None] | None = None
        self.closed = False
        self.close_reason = ""
        self.token: str | None = None
        self.session_id: str | None = None
        self.last_id = -1
        self.sid = ""  # the Socket.IO id the server gave (its conn id in the daemon's log)
        self._init_waiter: asyncio.Future[dict[str, Any]] | None = None

    async def connect(self, timeout: float = 30.0) -> None:
        """Open the websocket and the Socket.IO namespace; raise SioError on failure."""
        try:
            self.ws = await self.http.ws_connect(
                self.url, timeout=aiohttp.ClientWSTimeout(ws_close=5.0), autoping=True, max_msg_size=0
            )
            opened = await asyncio.wait_for(self.ws.receive_str(), timeout)
            if not opened.startswith("0"):
                raise SioError(f"unexpected open packet {opened[:80]!r}")
            await self.ws.send_str("40")
            answer = await asyncio.wait_for(self.ws.receive_str(), timeout)
            if not answer.startswith("40"):
                raise SioError(f"namespace connect refused: {answer[:80]!r}")
            try:
                self.sid = str(json.loads(answer[2:] or "{}").get("sid", ""))
            except ValueError:
                self.sid = ""
        except (aiohttp.ClientError, asyncio.TimeoutError, TypeError, OSError) as exc:
            await self.close()
            raise SioError(f"connect failed: {exc!r}") from None
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        ws = self.ws
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                data: str = msg.data
                if data.startswith("42"):
                    now = time.perf_counter()
                    payload = _loads(data[2:])[1]
                    waiter = self._init_waiter
                    if waiter is not None and ("error" in payload or payload.get("status") == "ok"):
                        self._init_waiter = None
                        if not waiter.done():
                            waiter.set_result(payload)
                        continue
                    event_id = payload.get("id")
                    if type(event_id) is int and event_id > self.last_id:
                        self.last_id = event_id
                    self.on_event(payload, now)
                elif data == "2":
                    await ws.send_str("3")
                elif data.startswith("41") or data == "1":
                    self.close_reason = f"server closed ({data[:20]})"
                    break
        except Exception as exc:  # a dying connection must not kill the load process
            self.close_reason = f"reader error: {exc!r}"
        finally:
            self.closed = True
            if not self.close_reason:
                self.close_reason = "websocket closed"
            waiter, self._init_waiter = self._init_waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_exception(SioError(self.close_reason))

    async def emit(self, payload: dict[str, Any]) -> None:
        """Send one ``oh_action``."""
        if self.ws is None or self.closed:
            raise SioError(f"connection closed: {self.close_reason}")
        await self.ws.send_str('42["oh_action",' + _dumps(payload) + "]")

    async def initialize(
        self, token: str | None = None, latest_event_id: int | None = None, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Send INIT and wait for its answer (``status: ok`` or an error frame), which is returned."""
        frame: dict[str, Any] = {"action": "initialize", "args": {}}
        if token is not None:
            frame["token"] = token
        if latest_event_id is not None:
            frame["latest_event_id"] = latest_event_id
        self._init_waiter = asyncio.get_running_loop().create_future()
        waiter = self._init_waiter
        await self.emit(frame)
        answer = await asyncio.wait_for(waiter, timeout)
        if answer.get("status") == "ok":
            self.token, self.session_id = answer.get("token"), answer.get("session_id")
        return answer

    async def close(self) -> None:
        """Close the websocket (the server sees a disconnect) and stop the reader."""
        if self.ws is not None and not self.ws.closed:
            try:
                await asyncio.wait_for(self.ws.close(), 5.0)
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError):
                pass
        if self.reader is not None and not self.reader.done():
            self.reader.cancel()
            try:
                await self.reader
            except (asyncio.CancelledError, Exception):
                pass
        self.closed = True
