"""Issue 18, item 11: Thespian's actor ports unpickle what any connection sends. Another
local user connects to the admin port and sends a pickle that would create a file as the
daemon's user; the connection must be refused before it is read (``actorports.py``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sessionactors.actorports import _diag_uid, _proc_uid, peer_uid

from .daemon_harness import Client, wait_for

NOBODY = 65534
ATTACK = r"""
import pickle, socket, sys
port, marker = int(sys.argv[1]), sys.argv[2]

class Evil:
    def __reduce__(self):  # runs in whoever unpickles it
        return (open, (marker, "w"))

payload = pickle.dumps((None, Evil()))
frame = b"%d>" % len(payload) + payload  # Thespian's TCP framing (streamBuffer.toSendBuffer)
sock = socket.create_connection(("127.0.0.1", port), timeout=5)
try:
    sock.sendall(frame)
    print("answer", sock.recv(100))
except OSError as exc:
    print("refused", exc)
"""


def _other_user_python() -> str:
    if os.getuid() != 0:
        pytest.skip("needs root to run a process as another user (uid 65534)")
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 that another user can run")
    return python


def test_peer_uid_names_the_owner_of_a_loopback_connection() -> None:
    python = _other_user_python()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        mine = socket.create_connection(listener.getsockname())
        conn, peer = listener.accept()
        assert peer_uid(conn.getsockname(), peer) == os.getuid()
        # netlink, and the /proc fallback for kernels without inet_diag, agree
        assert _diag_uid(conn.getsockname(), peer) == _proc_uid(conn.getsockname(), peer) == os.getuid()
        code = f"import socket,sys; s=socket.create_connection({listener.getsockname()!r}); sys.stdin.read()"
        other = subprocess.Popen([python, "-c", code], user=NOBODY, stdin=subprocess.PIPE)
        try:
            conn2, peer2 = listener.accept()
            assert peer_uid(conn2.getsockname(), peer2) == NOBODY
            assert _proc_uid(conn2.getsockname(), peer2) == NOBODY
            conn2.close()
        finally:
            assert other.stdin is not None
            other.stdin.close()
            other.wait(10)
        conn.close()
        mine.close()


def listening_ports(pid: int) -> list[int]:
    """The TCP ports process ``pid`` listens on (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            inodes.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    ports = []
    with open("/proc/net/tcp") as fh:
        for line in list(fh)[1:]:
            cols = line.split()
            if cols[3] == "0A" and f"socket:[{cols[9]}]" in inodes:
                ports.append(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def test_another_user_cannot_unpickle_into_an_actor(daemon_factory: Any, tmp_path: Path) -> None:
    """The admin's port and the supervisor's (forked actors inherit the guard)."""
    python = _other_user_python()
    d = daemon_factory()
    marker = tmp_path / "pwned"
    state = wait_for(lambda: (d.state() or {}).get("supervisor_pid") and d.state(), what="supervisor pid")
    supervisor_ports = listening_ports(int(state["supervisor_pid"]))
    assert supervisor_ports
    for port in (d.admin_port, *supervisor_ports):
        out = subprocess.run(
            [python, "-c", ATTACK, str(port), str(marker)],
            user=NOBODY,
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
        )
        assert out.returncode == 0, out.stderr
    wait_for(
        lambda: marker.exists() or d.log_path.read_text().count("refused a connection") >= 2,
        what="the pickle to run, or both refusals in the log",
    )
    assert not marker.exists(), "another user's pickle ran as the daemon's user"
    assert "the supervisor actor" not in d.log_path.read_text(), "a refusal must not kill an actor"
    c = Client(d.url)  # and the daemon works on
    assert c.init()["status"] == "ok"
    c.close()
