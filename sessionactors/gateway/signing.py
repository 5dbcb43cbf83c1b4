"""HMAC signing of what the gateways exchange through Redis, with the cluster key.

Redis is an unauthenticated bus as far as we are concerned: anything that can reach it
could otherwise make every gateway emit frames to any connection. ``SignedJson`` is a
module-like object (``dumps``/``loads``); ``SignedRedisManager`` is the RedisManager that
keeps it (python-socketio's ``BaseManager.set_server`` replaces the ``json=`` given to the
manager with the server's packet JSON module, so ``json=`` alone signs nothing: measured on
python-socketio 5.x). python-socketio calls ``json.dumps`` on every message it publishes and ``json.loads`` on
every message it receives, and drops a message whose ``loads`` raises (pubsub_manager.py,
``_thread``). So a message that is unsigned, forged or signed with another key is never
acted on; it is logged, at most once every ``LOG_EVERY`` seconds per codec.

Wire form: ``<hex HMAC-SHA256 of payload>.<payload>`` where payload is the JSON text.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

import socketio

__all__ = ["BadSignature", "SignedJson", "SignedRedisManager"]

log = logging.getLogger(__name__)

LOG_EVERY = 10.0  # seconds between two warnings about dropped messages


class BadSignature(ValueError):
    """A message read from Redis that does not carry a valid signature (dropped)."""


class SignedJson:
    """Sign on ``dumps``, verify on ``loads``: the ``json`` of a RedisManager (see module)."""

    def __init__(self, key: str | bytes) -> None:
        self._key = key.encode() if isinstance(key, str) else bytes(key)
        if len(self._key) < 16:
            raise ValueError("the cluster key must be at least 16 bytes")
        self.dropped = 0  # messages refused so far (the tests read it)
        self._last_log = 0.0

    def _mac(self, payload: bytes) -> str:
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """The signed wire form of ``obj`` (JSON-encodable)."""
        payload = json.dumps(obj, separators=(",", ":"))
        return f"{self._mac(payload.encode())}.{payload}"

    def loads(self, message: str | bytes, **kwargs: Any) -> Any:
        """The object of a signed ``message``; BadSignature (logged) when it is not ours."""
        raw = message.encode() if isinstance(message, str) else bytes(message)
        mac, sep, payload = raw.partition(b".")
        if not sep or not hmac.compare_digest(mac, self._mac(payload).encode()):
            self._refuse()
            raise BadSignature("message without a valid cluster-key signature")
        return json.loads(payload)

    def _refuse(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            log.warning("dropped %d Redis message(s) without a valid cluster-key signature", self.dropped)


class _Stopped(BaseException):
    """Ends a closed manager's listener thread (``SignedRedisManager._thread``)."""


class SignedRedisManager(socketio.RedisManager):  # type: ignore[misc]
    """A RedisManager whose every message is signed and verified by ``codec`` (see module)."""

    def __init__(self, url: str, codec: SignedJson, **kwargs: Any) -> None:
        super().__init__(url, json=codec, **kwargs)
        self.codec = codec
        self._closed = False

    def set_server(self, server: Any) -> None:
        """Attach to ``server`` but keep the signing codec (the base class resets it)."""
        super().set_server(server)
        self.json = self.codec

    def _listen(self) -> Any:
        for message in super()._listen():
            if self._closed:
                break
            yield message
        self._stop_listening()

    def _redis_connect(self) -> None:
        if self._closed:  # the listener's retry loop, after close
            self._stop_listening()
        super()._redis_connect()

    def _stop_listening(self) -> None:
        # A BaseException, caught by our ``_thread`` only: the base class's thread would log
        # and loop on an Exception, and it has no way to stop.
        for conn in (getattr(self, "pubsub", None), getattr(self, "redis", None)):
            if conn is not None:
                conn.close()
        raise _Stopped

    def _thread(self) -> None:
        try:
            super()._thread()
        except _Stopped:
            pass

    def close(self) -> None:
        """Stop the listener thread (woken by a message of our own), which closes the connections."""
        self._closed = True
        try:
            self.redis.publish(self.channel, self.codec.dumps({"method": "noop"}))
        except Exception as exc:  # Redis already gone: the thread stops at its next message
            log.debug("closing the Redis manager: %s", exc)
