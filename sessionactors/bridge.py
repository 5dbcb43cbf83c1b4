"""The bridge: the side channel between the actors and the gateway process.

Why it exists: the gateway runs under eventlet, and Thespian inside an eventlet
process is slow on the push path (a ``listen()`` loop drained a few hundred
events/s) and misroutes replies between green threads (see
``docs/architecture.md``). So the gateway speaks no Thespian at all. It listens
on a Unix socket (owner-only, in the data directory); the supervisor and every
live session actor connect to it and exchange length-prefixed JSON frames. The
actors watch their end with Thespian's ``ThespianWatch``, so a frame from the
gateway wakes the actor like any message, and the actors stay the only owners
of session state.

Frame kinds (``"t"``), actors -> gateway:
  ``hello`` {role, session_id?, resume?}     identify the link
  ``emit`` {to: [conn], events: [obj]}       send each obj as ``oh_event`` to each conn
  ``init_ok`` {conn, session_id, token_version}  conn is attached: the gateway
                                             records the route and sends the INIT answer
  ``detach`` {conn}                          conn is no longer attached
  ``reply`` {req, status, body}              answer to a gateway ``query``
  ``init_done`` {conn}                       the INIT's replay is sent (openhands mode: the
                                             gateway repeats the token frame after it)
gateway -> actors:
  ``init``/``disconnect``/``action``/``query`` to the supervisor link,
  ``action`` to a session link, ``positions`` {conns: {conn: last_id}} in answer
  to a session's ``hello`` with ``resume``. A ``query`` whose ``op`` is in ``FILE_OPS``
  (with ``path`` and ``data``) goes on to the session actor, which replies itself.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "encode",
    "FrameReader",
    "Link",
    "Outbox",
    "LinkOutbox",
    "CallbackOutbox",
    "MAX_FRAME",
    "FILE_OPS",
    "INSTANCE_ENV",
    "INSTANCE_HEADER",
]

# Which daemon run a gateway belongs to: the launcher passes it in this environment variable
# and the gateway answers it on /api/health in this header (``start`` waits for its own).
INSTANCE_ENV = "_SA_INSTANCE"
INSTANCE_HEADER = "X-Sessionactors-Instance"

MAX_FRAME = 64 * 1024 * 1024
# Workspace queries the supervisor forwards to the session actor: query op -> FileRequest op.
FILE_OPS = {
    "list_files": "list",
    "read_file": "read",
    "list_tree": "tree",
    "save_file": "save",
    "upload_file": "upload",
    "zip_workspace": "zip",
}
_HEADER = struct.Struct(">I")


def encode(frame: dict[str, Any]) -> bytes:
    """One frame on the wire: 4-byte big-endian length, then compact JSON."""
    data = json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode()
    if len(data) > MAX_FRAME:
        raise ValueError(f"bridge frame of {len(data)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(data)) + data


class FrameReader:
    """Incremental decoder: feed bytes, get whole frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        frames = []
        while len(self._buf) >= 4:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise ValueError("bridge frame too large")
            if len(self._buf) < 4 + size:
                break
            frames.append(json.loads(bytes(self._buf[4 : 4 + size])))
            del self._buf[: 4 + size]
        return frames


class Link:
    """The actor's end of the bridge: a blocking Unix socket with a send timeout.

    Only ever used from the actor's single thread.
    """

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self._connect(path)
        except OSError:
            self.sock.close()
            raise
        self._reader = FrameReader()
        self._pending: list[dict[str, Any]] = []
        self.closed = False

    def _connect(self, path: str) -> None:
        # A Unix socket whose listen queue is full refuses at once (EAGAIN) instead of
        # waiting like TCP: retry briefly, since a whole burst of actors re-links together.
        deadline = time.monotonic() + 2.0
        while True:
            try:
                self.sock.connect(path)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, frame: dict[str, Any]) -> None:
        self.sock.sendall(encode(frame))

    def receive(self) -> list[dict[str, Any]] | None:
        """Frames available now (call when the fd is readable); None when the gateway closed."""
        if self._pending:
            frames, self._pending = self._pending, []
            return frames
        try:
            data = self.sock.recv(1 << 16)
        except (TimeoutError, BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        if not data:
            self.close()
            return None
        return self._reader.feed(data)

    def take_pending(self) -> list[dict[str, Any]]:
        """Frames that ``wait_for`` read past: the fd will not signal them again."""
        frames, self._pending = self._pending, []
        return frames

    def wait_for(self, kind: str, timeout: float) -> dict[str, Any] | None:
        """Block up to ``timeout`` for a frame of ``kind``; keep the others for ``receive``."""
        deadline = time.monotonic() + timeout
        while True:
            for i, frame in enumerate(self._pending):
                if frame.get("t") == kind:
                    return self._pending.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self.sock], [], [], remaining)
            if not ready:
                return None
            data = self.sock.recv(1 << 16)
            if not data:
                self.close()
                return None
            self._pending.extend(self._reader.feed(data))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass


class Outbox:
    """Where an actor's frames for the gateway go."""

    def send(self, frame: dict[str, Any]) -> bool:
        """Send one frame; False when it could not be delivered (gateway gone)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class LinkOutbox(Outbox):
    """Frames over the bridge; reconnects lazily after the gateway restarted.

    ``on_lost`` is called when a send finds the gateway gone: an actor that only learns of
    it that way (not by EOF on its watched fd) must still react, e.g. schedule a reconnect.
    """

    def __init__(self, path: str, hello: dict[str, Any], on_lost: Callable[[], None] | None = None) -> None:
        self.path = path
        self.hello = hello
        self.link: Link | None = None
        self.on_lost = on_lost

    def connect(self) -> Link | None:
        if self.link is not None and not self.link.closed:
            return self.link
        try:
            self.link = Link(self.path)
            self.link.send(self.hello)
        except OSError:
            self.link = None
        return self.link

    def send(self, frame: dict[str, Any]) -> bool:
        # Twice: the link may be to a gateway that died and was restarted since (its EOF not
        # handled yet); the frame may still matter to the new one (an INIT answer does).
        for _ in range(2):
            link = self.connect()
            if link is None:
                return False
            try:
                link.send(frame)
                return True
            except OSError:
                link.close()
                self.link = None
                if self.on_lost is not None:
                    self.on_lost()
        return False

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None


class CallbackOutbox(Outbox):
    """Frames handed to a function: tests on simpleSystemBase send them as ``Frame`` messages."""

    def __init__(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self.fn = fn

    def send(self, frame: dict[str, Any]) -> bool:
        self.fn(frame)
        return True
