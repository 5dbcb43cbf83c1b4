"""The gateway's end of the bridge: a Unix-socket listener and one ``ActorLink`` per actor.

The actors' end is ``bridge.py`` (plain sockets, no eventlet: actor processes are not
patched); here every link is read by its own green thread, and each frame is handed to
the gateway's ``on_actor_frame`` in the order it came. ``LinkServer`` is a mixin of
``Gateway``.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING, Any

import eventlet
import eventlet.semaphore

from ..bridge import FrameReader, encode

__all__ = ["ActorLink", "LinkServer"]

log = logging.getLogger("sessionactors.gateway")


class ActorLink:
    """The gateway's end of one actor's bridge connection (the supervisor or a session)."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.role = "?"
        self.session_id: str | None = None
        self._lock = eventlet.semaphore.Semaphore()

    def send(self, frame: dict[str, Any]) -> bool:
        try:
            with self._lock:
                self.sock.sendall(encode(frame))
            return True
        except OSError:
            return False


class LinkServer:
    """Accepts the actors' links and reads their frames."""

    if TYPE_CHECKING:

        def on_actor_frame(self, link: ActorLink, frame: dict[str, Any]) -> None: ...
        def on_link_closed(self, link: ActorLink) -> None: ...

    def serve_bridge(self, path: str) -> Any:
        """Listen for actor links on a Unix socket only this user can open."""
        if os.path.exists(path):
            os.unlink(path)
        # Every live session re-links at once after a restart of this process: a short
        # backlog refuses some of them (EAGAIN), and with them the INIT answers they carry.
        listener = eventlet.listen(path, family=socket.AF_UNIX, backlog=4096)
        os.chmod(path, 0o600)
        return eventlet.spawn(self._accept_links, listener)

    def _accept_links(self, listener: Any) -> None:
        while True:
            sock, _ = listener.accept()
            eventlet.spawn_n(self._read_link, ActorLink(sock))

    def _read_link(self, link: ActorLink) -> None:
        reader = FrameReader()
        try:
            while True:
                data = link.sock.recv(1 << 16)
                if not data:
                    break
                for frame in reader.feed(data):
                    try:
                        self.on_actor_frame(link, frame)
                    except Exception:
                        log.exception("gateway: bad frame from %s link", link.role)
        except OSError:
            pass
        finally:
            self.on_link_closed(link)
            link.sock.close()
