"""A real daemon in a subprocess, and python-socketio clients that record what they get."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import socketio

from bench.targets import free_port
from sessionactors.daemon import descendants, group_members, pid_alive, read_state


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 15.0,
    what: str = "condition",
    pump: Callable[[], None] | None = None,
) -> Any:
    """Poll ``predicate`` until truthy; fail with ``what`` after ``timeout`` seconds.

    ``pump`` replaces the pause between polls (simpleSystemBase runs its actors, timers
    included, only inside ``listen()``).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        if pump is not None:
            pump()
        else:
            time.sleep(0.01)


class DaemonProcess:
    """``sessionactors serve`` on free ports with its own data dir."""

    def __init__(self, data_dir: Path, runtime: str = "echo", **options: Any) -> None:
        self.data_dir = data_dir
        self.port = options.pop("port", None) or free_port()
        self.admin_port = options.pop("admin_port", None) or free_port()
        self.options = {"runtime": runtime, **options}
        self.proc: subprocess.Popen[bytes] | None = None
        self.known_pids: set[int] = set()
        self.log_path = data_dir.parent / f"{data_dir.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONACTORS_")}
        env["THESPIAN_BASE_IPADDR"] = "127.0.0.1"
        for key, value in self.options.items():
            env["SESSIONACTORS_" + key.upper()] = (
                json.dumps(value) if isinstance(value, (dict, list)) else str(value)
            )
        return env

    def argv_prefix(self) -> list[str]:
        """What runs the daemon's command (nothing here; ``ip netns exec NAME`` in tests/netns.py)."""
        return []

    def start(self) -> None:
        argv = [
            *self.argv_prefix(), sys.executable, "-m", "sessionactors.cli", "serve",
            "--data-dir", str(self.data_dir), "--port", str(self.port), "--admin-port", str(self.admin_port),
        ]  # fmt: skip
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            argv, env=self.env(), stdout=self.log, stderr=self.log, start_new_session=True
        )
        wait_for(self._healthy_or_dead, 60, f"daemon health ({self.log_path})")
        assert self.proc.poll() is None, f"daemon exited: {self.log_path.read_text()[-3000:]}"
        self.remember_pids()

    def _healthy_or_dead(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            return True
        return self.http("GET", "/api/health")[0] == 200

    def remember_pids(self) -> None:
        """Every process of this daemon: its descendants and its actor system's process group."""
        if self.proc is not None:
            self.known_pids |= {self.proc.pid, *descendants(self.proc.pid)}
        state = self.state()
        if state and int(state.get("actor_pgid") or 0) > 1:
            members = group_members(int(state["actor_pgid"]))
            self.known_pids |= set(members)
            for pid in members:
                self.known_pids |= set(descendants(pid))

    def state(self) -> dict[str, Any] | None:
        from sessionactors.config import Config

        return read_state(Config(data_dir=self.data_dir))

    def http(
        self, method: str, path: str, token: str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, method=method, headers=dict(headers or {}))
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")
        except OSError:
            return 0, None

    def kill9(self) -> None:
        """SIGKILL the daemon process alone (its actor system and gateway stay)."""
        assert self.proc is not None
        self.remember_pids()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 60.0) -> list[int]:
        """SIGTERM, wait, then report (and end) any process of ours still alive."""
        if self.proc is None:
            return []
        self.remember_pids()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
                assert code == 0, f"daemon exit code {code}: {self.log_path.read_text()[-3000:]}"
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(pid_alive(p) for p in self.known_pids):
            time.sleep(0.05)
        left = [p for p in self.known_pids if pid_alive(p)]
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return left


@contextmanager
def running(data_dir: Path, **options: Any) -> Iterator[DaemonProcess]:
    """A daemon for the ``with`` block; afterwards no process of it may be left."""
    daemon = DaemonProcess(data_dir, **options)
    try:
        daemon.start()
        yield daemon
    finally:
        left = daemon.stop()
    assert not left, f"processes left behind: {left}"


class Client:
    """A python-socketio client that records every ``oh_event`` it receives."""

    def __init__(self, url: str, transports: list[str] | None = None) -> None:
        self.sio = socketio.Client(reconnection=False)
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.sio.on("oh_event", self._on_event)
        # python-engineio's sync client runs every message handler in a new thread, which can
        # reorder frames on the client side; handle them in the reader thread, in arrival order.
        eio = self.sio.eio
        trigger = eio._trigger_event

        def in_order(event: str, *args: Any, **kwargs: Any) -> Any:
            kwargs["run_async"] = False
            return trigger(event, *args, **kwargs)

        eio._trigger_event = in_order
        self.sio.connect(url, transports=transports or ["websocket"], wait_timeout=10)

    def _on_event(self, data: Any) -> None:
        with self.lock:
            self.received.append(data)

    def send(self, payload: Any) -> None:
        self.sio.emit("oh_action", payload)

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.received)

    def events(self) -> list[dict[str, Any]]:
        return [f for f in self.snapshot() if isinstance(f.get("id"), int) and "status_update" not in f]

    def errors(self) -> list[dict[str, Any]]:
        return [f for f in self.snapshot() if "error" in f]

    def wait(
        self, predicate: Callable[[list[dict[str, Any]]], Any], timeout: float = 15.0, what: str = "frames"
    ) -> Any:
        return wait_for(lambda: predicate(self.snapshot()), timeout, what)

    def init(self, token: str | None = None, latest: int | None = None, **extra: Any) -> dict[str, Any]:
        before = len(self.snapshot())
        payload: dict[str, Any] = {"action": "initialize", "args": extra.pop("args", {})}
        if token is not None:
            payload["token"] = token
        if latest is not None:
            payload["latest_event_id"] = latest
        payload.update(extra)
        self.send(payload)
        frame = self.wait(
            lambda fs: next((f for f in fs[before:] if f.get("status") == "ok" or "error" in f), None),
            what="INIT answer",
        )
        return dict(frame)

    def wait_events(self, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        return wait_for(lambda: len(self.events()) >= n and self.events(), timeout, f"{n} events")

    def close(self) -> None:
        self.sio.disconnect()


def session_processes(session_id: str) -> list[int]:
    """Host pids whose environment carries the session id (every process of its shell)."""
    needle = f"SESSIONACTORS_SESSION_ID={session_id}".encode()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as fh:
                    if needle in fh.read().split(b"\0"):
                        found.append(int(name))
            except OSError:
                pass
    return found
