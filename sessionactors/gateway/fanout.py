"""How the gateway queues frames to connections: each payload encoded once, queued to every
target's Engine.IO socket, and a connection that falls ``send_buffer`` frames or
``send_buffer_bytes`` bytes behind dropped (see docs/protocol.md, *Slow clients*), so that
a stuck tab never slows its session or the other tabs, and the gateway's memory stays
bounded (issue 18: 1 MB events to a client that never read grew it by 530 MB). ``Fanout`` is a mixin of ``Gateway``; ``limit_poll_batches`` keeps
polling answers within what python-engineio's client decodes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import eventlet
from engineio import packet as eio_packet
from socketio import packet as sio_packet

if TYPE_CHECKING:
    import socketio

    from ..config import Config
    from ..metrics import GatewayMetrics

__all__ = ["Fanout", "POLL_BATCH", "limit_poll_batches"]

log = logging.getLogger("sessionactors.gateway")


class Fanout:
    """Queues ``oh_event`` frames to connections, with per-connection back-pressure."""

    if TYPE_CHECKING:
        cfg: Config
        sio: socketio.Server
        buckets: dict[str, Any]
        counters: dict[str, int]
        metrics: GatewayMetrics

    def _let_writers_run(self, conns: list[str]) -> None:
        """Yield once when a target's queue is over ``send_buffer``, before judging it slow.

        Frames come from the actors in bursts (a replay page is one bridge frame) and this
        loop queues them without yielding, so a websocket writer that would drain its queue at
        once has had no chance to run yet. Called between payloads, where no route is half
        updated; a client still over the limit after that is really not reading.
        """
        for conn in conns:
            eio_sid = self.sio.manager.eio_sid_from_sid(conn, "/")
            sock = self.sio.eio.sockets.get(eio_sid) if eio_sid else None
            if sock is not None and self._over(sock, 0):
                eventlet.sleep(0)
                return

    def _over(self, sock: Any, size: int) -> bool:
        """Would ``size`` more bytes put ``sock`` over its budget? A frame alone always fits."""
        if _backlog(sock) > self.cfg.send_buffer:
            return True
        queued = queued_bytes(sock)
        return queued > 0 and queued + size > self.cfg.send_buffer_bytes

    def _emit_many(self, conns: list[str], payload: dict[str, Any]) -> None:
        """Encode once, queue to every connection; drop a connection whose queue is full."""
        pkt = self.sio.packet_class(sio_packet.EVENT, namespace="/", data=["oh_event", payload])
        encoded = pkt.encode()
        eio_pkts = [
            eio_packet.Packet(eio_packet.MESSAGE, p)
            for p in (encoded if isinstance(encoded, list) else [encoded])
        ]
        size = 0
        for p in eio_pkts:
            p.sa_bytes = len(p.data) if isinstance(p.data, (str, bytes)) else 0
            size += p.sa_bytes
        stored = isinstance(payload.get("id"), int)
        for conn in conns:
            eio_sid = self.sio.manager.eio_sid_from_sid(conn, "/")
            sock = self.sio.eio.sockets.get(eio_sid) if eio_sid else None
            if sock is None:
                continue
            if self._over(sock, size):
                self._drop_slow(conn, sock)
                continue
            sock.sa_bytes = queued_bytes(sock) + size
            for p in eio_pkts:
                self.sio.eio.send_packet(eio_sid, p)
            self.counters["events_sent"] += 1
            if stored:
                self.metrics.frames_sent.inc()

    def _emit_one(self, conn: str, payload: dict[str, Any]) -> None:
        self._emit_many([conn], payload)

    def _drop_slow(self, conn: str, sock: Any) -> None:
        if _backlog(sock) > self.cfg.send_buffer:
            log.warning("connection %s fell %d frames behind; disconnecting it", conn, self.cfg.send_buffer)
        else:
            log.warning(
                "connection %s has %d bytes queued (send_buffer_bytes %d); disconnecting it",
                conn,
                queued_bytes(sock),
                self.cfg.send_buffer_bytes,
            )
        self.counters["slow_disconnects"] += 1
        self.metrics.slow.inc()
        self.buckets.pop(conn, None)  # no more frames for it
        eventlet.spawn_n(self.sio.disconnect, conn)


def _backlog(sock: Any) -> int:
    """Packets queued to an Engine.IO socket and not sent yet (held ones included)."""
    return int(sock.queue.qsize()) + len(getattr(sock, "_held_packets", ()))


def queued_bytes(sock: Any) -> int:
    """Bytes of ``oh_event`` frames queued to an Engine.IO socket, held, or being written."""
    return int(getattr(sock, "sa_bytes", 0))


POLL_BATCH = 16
"""Most packets in one polling answer: python-engineio's client refuses a payload of more
(``Payload.max_decode_packets``, 16 in 4.x) and drops the connection."""


def limit_poll_batches() -> None:
    """Make every Engine.IO socket hand out at most ``POLL_BATCH`` packets per poll.

    ``Socket.poll`` drains the whole queue into one answer; the packets past the batch are
    held on the socket and come first in its next answer (the order is kept). The
    websocket writer drains through ``poll`` too; it sends each packet on its own anyway.
    It also keeps ``queued_bytes``: the batch handed out counts until the next ``poll``
    (the writer asks again once it has written the batch, a polling client once it has
    read its answer).
    """
    from engineio import socket as eio_socket

    if getattr(eio_socket.Socket.poll, "batched", False):
        return
    drain = eio_socket.Socket.poll

    def poll(self: Any) -> list[Any]:
        self.sa_bytes = max(0, queued_bytes(self) - getattr(self, "sa_inflight", 0))
        self.sa_inflight = 0
        held: list[Any] = getattr(self, "_held_packets", [])
        packets = held if held else drain(self)
        self._held_packets = packets[POLL_BATCH:]
        batch = packets[:POLL_BATCH]
        self.sa_inflight = sum(getattr(p, "sa_bytes", 0) for p in batch)
        return batch

    poll.batched = True  # type: ignore[attr-defined]
    eio_socket.Socket.poll = poll
