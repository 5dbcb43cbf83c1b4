"""Starting, reaching and stopping the Thespian actor system, kept on loopback; finding
processes and ports through /proc (who holds a port, a process group's members, the actor
system a crashed daemon left).

Thespian's TCP transport addresses actors by the machine's external interface
unless ``THESPIAN_BASE_IPADDR`` is set, and binds every listener (admin and each
actor) to all interfaces even when it is set. It has no authentication and
unpickles what it receives, so a reachable actor port is remote code execution.
``restrict_to_loopback()`` fixes both in this process before the system starts, and
makes every listener refuse connections from other users' sockets (``actorports.py``);
actor processes are forked from it and inherit the patches.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from .errors import ActorSystemInUse, DaemonError
from .logs import formatter_config

__all__ = [
    "restrict_to_loopback",
    "pid_alive",
    "port_in_use",
    "proc_stat",
    "group_members",
    "listening_pid",
    "port_holder",
    "port_error",
    "check_port_free",
    "leftover_actor_pids",
    "end_processes",
    "start_system",
    "shutdown_system",
    "system_capabilities",
]

log = logging.getLogger("sessionactors.actorsystem")

_PATCHED = False


def restrict_to_loopback(ip: str = "127.0.0.1", multi_host: bool = False) -> None:
    """Make Thespian address actors by ``ip`` and bind its listeners to it (not 0.0.0.0).

    With ``multi_host`` only the address is set: listeners must then be reachable
    by the other hosts, and docs/security.md says what protects them.
    """
    global _PATCHED
    os.environ["THESPIAN_BASE_IPADDR"] = ip
    from thespian.system.transport import IPBase, TCPTransport  # type: ignore[import-untyped]

    # Measured here: with socket reuse the supervisor's latency grew with its number of
    # children (1.1 ms at 0, 12 ms at 150, 25 ms at 300); without it, ~1.4 ms at 300.
    TCPTransport.REUSE_SOCKETS = False
    if multi_host or _PATCHED:
        return
    from .actorports import guard_actor_ports

    guard_actor_ports()  # only this user's processes may connect to an actor port

    original_init = IPBase.IPActorAddress.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        # Thespian binds "external" addresses to ('', port): all interfaces.
        if self.bindname and self.bindname[0] == "":
            self.bindname = (ip, self.bindname[1])

    IPBase.IPActorAddress.__init__ = __init__
    _PATCHED = True


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie (an actor that died unreaped is one)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def system_capabilities(admin_port: int) -> dict[str, Any]:
    """Capabilities for a private actor system on ``admin_port``."""
    return {"Admin Port": admin_port, "Process Startup Method": "fork"}


def start_system(
    base: str,
    admin_port: int,
    ip: str = "127.0.0.1",
    multi_host: bool = False,
    log_level: str = "warning",
    log_json: bool = False,
) -> Any:
    """Start a new actor system; refuse to join one that is already there.

    Thespian's ``ActorSystem(base, {'Admin Port': N})`` silently *joins* an admin
    already listening on N; a second daemon must never do that.
    """
    from thespian.actors import ActorSystem  # type: ignore[import-untyped]

    if base == "simpleSystemBase":
        return ActorSystem("simpleSystemBase", transientUnique=True)
    restrict_to_loopback(ip, multi_host)
    if port_in_use(admin_port, ip):
        raise ActorSystemInUse(
            f"admin port {admin_port} is already taken (a leftover actor system or another daemon); "
            f"stop it or choose another admin_port"
        )
    logcfg = {
        "version": 1,
        "formatters": {"plain": formatter_config(log_json)},
        # Actor processes log through Thespian's logger process, which inherits our stderr.
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
        "root": {"handlers": ["stderr"], "level": log_level.upper()},
    }
    return ActorSystem(base, system_capabilities(admin_port), logDefs=logcfg, transientUnique=True)


def shutdown_system(asys: Any, admin_port: int | None = None, timeout: float = 15.0) -> None:
    """Shut the system down and wait until its admin port is free.

    Thespian waits up to 10 s for the admin's "shutdown completed" reply, which is lost now
    and then (measured: 2 of 12 stops) although the admin has exited: so the call runs in
    a thread, and the wait ends as soon as the admin port is closed.
    """
    done = threading.Event()

    def run() -> None:
        try:
            asys.shutdown()
        except Exception:  # a failing shutdown must not hide the wait below
            log.exception("actor system shutdown failed")
        finally:
            done.set()

    threading.Thread(target=run, name="thespian-shutdown", daemon=True).start()
    deadline = time.monotonic() + timeout
    while not done.wait(0.05) and time.monotonic() < deadline:
        if admin_port is not None and not port_in_use(admin_port):
            break
    if admin_port is None:
        return
    while port_in_use(admin_port) and time.monotonic() < deadline:
        time.sleep(0.05)


# -- finding processes and ports through /proc ------------------------------------------
def proc_stat(pid: int | str) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name: state, ppid, pgrp, ..."""
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``: the actor system's, since Thespian's admin setsid()s."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = proc_stat(entry)
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry))
    return found


def listening_pid(port: int) -> int | None:
    """The pid holding the TCP listener on ``port`` (from /proc/net/tcp), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    cols = line.split()
                    if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{cols[9]}]")
        except OSError:
            continue
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                    return int(entry)
        except OSError:
            continue
    return None


def port_holder(port: int) -> str:
    """Who holds the TCP listener on ``port``: ``pid N (command line)`` when /proc tells."""
    pid = listening_pid(port)
    if pid is None:
        return "another program (its process is not visible here)"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = ""
    if len(cmd) > 100:
        cmd = cmd[:97] + "..."
    return f"pid {pid} ({cmd})" if cmd else f"pid {pid}"


def port_error(host: str, port: int, exc: OSError | None = None) -> str:
    """The one-line message for a port that cannot be listened on."""
    if exc is None or exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use by {port_holder(port)}; stop it or choose another --port"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def check_port_free(host: str, port: int) -> None:
    """Raise DaemonError when ``host:port`` cannot be bound the way the gateway binds it.

    The gateway binds without ``SO_REUSEPORT``, so a second daemon (or any other program
    listening there) makes the bind fail instead of sharing the port.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return  # an unresolvable host: the gateway reports it
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise DaemonError(port_error(host, port, exc)) from None


def leftover_actor_pids(state: dict[str, Any] | None, admin_port: int, ip: str = "127.0.0.1") -> list[int]:
    """The processes of an actor system a crashed daemon of this data dir left behind, or [].

    Ours only when the admin port is held by a member of the process group that daemon
    recorded (Thespian's admin setsid()s): a reused group id alone proves nothing.
    """
    if not port_in_use(admin_port, ip):
        return []
    pgid = int((state or {}).get("actor_pgid") or 0)
    pids = group_members(pgid) if pgid > 1 else []
    return pids if pids and listening_pid(admin_port) in pids else []


def end_processes(pids: list[int], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds, until every pid is gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not any(pid_alive(p) for p in pids):
            return
