"""Who may talk to a Thespian actor port: only processes of the daemon's own user.

Thespian's TCP transport has no authentication and unpickles what a connection sends,
so on a shared machine any local user who connects to 127.0.0.1:<actor port> runs code
as the daemon's user (issue 18). On loopback both ends of a connection are sockets of
this machine, and the kernel knows which user owns the connecting one: right after
``accept`` the listener asks it (``NETLINK_SOCK_DIAG``, one exact lookup, no table scan)
and closes a connection whose socket belongs to another user before a byte is read.
Single-host only: with ``multi_host`` the peers are other machines (docs/security.md).

Cost, measured by ``python -m bench.actor_ports`` (docs/benchmarks.md): one netlink round
trip per accepted connection.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
import sys
from typing import Any

__all__ = ["peer_uid", "guard_actor_ports"]

log = logging.getLogger("sessionactors.actorsystem")

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_ALL_STATES = 0xFFFFFFFF
_NOCOOKIE = 0xFFFFFFFF
_NLMSGHDR = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBxI")  # inet_diag_req_v2 before its inet_diag_sockid
_SOCKID = struct.Struct("!HH16s16s")  # ports and addresses in network order
_SOCKID_TAIL = struct.Struct("=III")  # interface, cookie[2]
_MSG_HEAD = struct.Struct("=BBBB")
_MSG_TAIL = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode


def _addr(ip: str) -> tuple[int, bytes]:
    packed = ipaddress.ip_address(ip).packed
    family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    return family, packed.ljust(16, b"\0")


def peer_uid(local: tuple[Any, ...], peer: tuple[Any, ...]) -> int | None:
    """The uid owning the socket at ``peer`` connected to ``local`` on this machine, or None.

    ``local`` and ``peer`` are the ``(ip, port)`` of an accepted connection: the peer's
    socket has the peer address as its source and ours as its destination. Asked over
    netlink; where that is not available (no ``inet_diag`` in the kernel), from
    ``/proc/net/tcp`` (a scan of every socket: slower, same answer).
    """
    try:
        uid = _diag_uid(local, peer)
    except OSError:
        uid = None
    return uid if uid is not None else _proc_uid(local, peer)


def _proc_uid(local: tuple[Any, ...], peer: tuple[Any, ...]) -> int | None:
    def key(addr: tuple[Any, ...]) -> str:
        packed = ipaddress.ip_address(addr[0]).packed
        # /proc/net/tcp prints each 32-bit word of the address in host byte order.
        words = [
            packed[i : i + 4][::-1] if sys.byteorder == "little" else packed[i : i + 4]
            for i in range(0, len(packed), 4)
        ]
        return f"{b''.join(words).hex().upper()}:{addr[1]:04X}"

    want = (key(peer), key(local))
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    cols = line.split()
                    if (cols[1], cols[2]) == want:
                        return int(cols[7])
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return None


def _diag_uid(local: tuple[Any, ...], peer: tuple[Any, ...]) -> int | None:
    family, src = _addr(peer[0])
    _, dst = _addr(local[0])
    req = (
        _REQ.pack(family, socket.IPPROTO_TCP, 0, _ALL_STATES)
        + _SOCKID.pack(peer[1], local[1], src, dst)
        + _SOCKID_TAIL.pack(0, _NOCOOKIE, _NOCOOKIE)
    )
    msg = _NLMSGHDR.pack(_NLMSGHDR.size + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0) + req
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        nl.sendto(msg, (0, 0))
        data = nl.recv(8192)
    if len(data) < _NLMSGHDR.size:
        return None
    _, kind, _, _, _ = _NLMSGHDR.unpack_from(data)
    if kind in (_NLMSG_ERROR, _NLMSG_DONE):
        return None
    offset = _NLMSGHDR.size + _MSG_HEAD.size + _SOCKID.size + _SOCKID_TAIL.size
    if len(data) < offset + _MSG_TAIL.size:
        return None
    return int(_MSG_TAIL.unpack_from(data, offset)[3])


_GUARDED = False


def guard_actor_ports() -> None:
    """Patch Thespian's TCP transport (in this process and the actors forked from it) so
    that every listener closes a connection from another user's socket at once."""
    global _GUARDED
    if _GUARDED:
        return
    from thespian.system.transport.TCPTransport import TCPTransport  # type: ignore[import-untyped]

    me = os.getuid()
    original = TCPTransport.new_socket

    def new_socket(self: Any, op: Any, *args: Any, **kw: Any) -> Any:
        result = original(self, op, *args, **kw)
        listener = getattr(self, "socket", None)
        if listener is None or getattr(op, "__self__", None) is not listener:
            return result  # not an accept on this transport's listener
        conn, peer = result
        try:
            uid = peer_uid(conn.getsockname(), peer)
        except OSError as exc:
            uid, why = None, f"its owner could not be looked up ({exc})"
        else:
            why = f"it belongs to uid {uid}" if uid is not None else "its socket is not on this machine"
        if uid != me:
            conn.close()  # before a byte of it is read
            log.warning("actor port: refused a connection from %s:%s: %s", peer[0], peer[1], why)
            # Thespian 4.0.1 cannot take a failed accept (it queues a bare UpdateWork that its
            # handlers crash on: the supervisor died of it). Handed an unconnected socket
            # instead, it selects it readable, its recv fails (ENOTCONN) and it drops it.
            return socket.socket(conn.family, socket.SOCK_STREAM), peer
        return result

    TCPTransport.new_socket = new_socket
    _GUARDED = True
