"""The three servers under test, as processes the harness starts, measures and stops by pid.

* ``OursTarget``: the real daemon, ``python -m sessionactors.cli serve`` with its own data
  directory, free ports, ``THESPIAN_BASE_IPADDR=127.0.0.1`` and ``SESSIONACTORS_*`` settings;
  stopped with SIGTERM (exit code 0 expected), then checked for leftovers: the gateway pid
  and every member of the actor system's process group (``actor_pgid`` of
  ``<data-dir>/run/daemon.json``).
* ``LimitTarget``: ``bench/limit_server.py``.
* ``SingleTarget``: ``bench/single_process_server.py``.

Every process is started with its own session (process group) and ended by pid.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sessionactors.daemon import descendants, group_members, pid_alive

__all__ = [
    "Target",
    "OursTarget",
    "LimitTarget",
    "SingleTarget",
    "free_port",
    "memory_kb",
    "cpu_seconds",
    "REPO",
]

REPO = Path(__file__).resolve().parent.parent
_CLK = os.sysconf("SC_CLK_TCK")


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out for bind(0) and outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_RNG = random.Random()
# Ports already handed out by this process: a free port is only bound later, so two calls in
# a row could otherwise answer the same one (CI: a daemon given port == admin_port, 1 in ~12,800).
_GIVEN: set[int] = set()


def free_port() -> int:
    """A TCP port nobody uses right now on 127.0.0.1, below the kernel's ephemeral range.

    A port from bind(0) is in that range, and the daemon binds it only later: meanwhile its
    own actor system (every actor listens on a bind(0) port) or any outgoing connection could
    be given the same one. CI failed on it once ("Address already in use" in the gateway).
    """
    high = min(_ephemeral_low(), 32768)
    for _ in range(200):
        port = _RNG.randrange(20000, high)
        if port in _GIVEN:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _GIVEN.add(port)
            return port
    raise RuntimeError(f"no free port found in 20000-{high}")


def memory_kb(pids: list[int]) -> tuple[int, int]:
    """Summed RSS and PSS (kB) of ``pids`` from /proc/<pid>/smaps_rollup (vanished pids count 0)."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


def cpu_seconds(pids: list[int]) -> float:
    """Summed user + system CPU seconds of ``pids`` (from /proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / _CLK


def http_json(url: str, token: str | None = None, timeout: float = 10.0) -> tuple[int, Any]:
    """GET ``url``; (status, parsed JSON body), (0, None) when nothing answers."""
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None
    except (OSError, ValueError):
        return 0, None


def _counts(path: Path) -> tuple[int, int]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        (sessions,) = db.execute("SELECT count(*) FROM sessions").fetchone()
        (events,) = db.execute("SELECT count(*) FROM events").fetchone()
        return int(sessions), int(events)
    finally:
        db.close()


class Target:
    """A server process under test."""

    name = "?"
    label = "?"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.name}.log"
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONACTORS_")}
        env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
        return env

    def start(self, timeout: float = 90.0) -> float:
        """Start the server; return the seconds until ``/api/health`` answered 200."""
        self.port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv(), cwd=REPO, env=self.env(), stdout=self._log, stderr=self._log, start_new_session=True
        )
        while http_json(self.url + "/api/health", timeout=2.0)[0] != 200:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise RuntimeError(f"{self.name} not healthy within {timeout} s; see {self.log_path}")
            time.sleep(0.05)
        return time.monotonic() - t0

    def processes(self) -> dict[str, list[int]]:
        """The server's processes by role (what CPU and memory are measured on)."""
        return {"server": [self.proc.pid]} if self.proc is not None else {}

    def frontend_pid(self) -> int | None:
        """The process that holds the Socket.IO connections."""
        return self.proc.pid if self.proc is not None else None

    def cpu(self) -> dict[str, float]:
        return {role: cpu_seconds(pids) for role, pids in self.processes().items()}

    stop_timeout = 30.0

    def stop(self) -> dict[str, Any]:
        """SIGTERM, wait, SIGKILL if needed; answer the exit code and any process left behind."""
        result: dict[str, Any] = {"exit_code": None, "leftovers": []}
        if self.proc is None:
            return result
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        result["exit_code"] = self.proc.returncode
        self.proc = None
        if self._log is not None:
            self._log.close()
        return result


class LimitTarget(Target):
    name = "limit"
    label = "the limit (bare python-socketio echo)"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "bench.limit_server", "--port", str(self.port)]


class SingleTarget(Target):
    name = "single"
    label = "single-process design (sessions in dicts + SQLite)"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.db_path = workdir / "single.db"
        self.seeded: tuple[str, str] | None = None

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench.single_process_server",
            "--port",
            str(self.port),
            "--db",
            str(self.db_path),
        ]

    def seed(self, n_events: int) -> tuple[str, str]:
        """Before start: store one session of ``n_events`` events; (token, session_id)."""
        from ._shared import seed_session

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.seeded = seed_session(str(self.db_path), n_events)
        return self.seeded

    def db_size(self) -> int:
        return sum(p.stat().st_size for p in self.workdir.glob("single.db*"))

    def db_counts(self) -> tuple[int, int]:
        """(sessions, events) stored."""
        return _counts(self.db_path)


class OursTarget(Target):
    name = "ours"
    label = "sessionactors daemon"
    stop_timeout = 90.0  # its own shutdown may take gateway 10 s + sessions 20 s + actor system 15 s

    LOG_PATTERNS = {
        "append failed (database is locked)": "failed appending events: database is locked",
        "slow client dropped": "frames behind; disconnecting",
        "sessions did not stop in time": "sessions did not all stop in time",
        "ERROR lines": " ERROR ",
    }

    def log_counts(self) -> dict[str, int]:
        """How often the daemon's log says what the harness looks for (errors under load)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return {}
        return {label: text.count(pattern) for label, pattern in self.LOG_PATTERNS.items()}

    def __init__(self, workdir: Path, settings: dict[str, Any]) -> None:
        super().__init__(workdir)
        self.settings = settings
        self.data_dir = workdir / "ours-data"
        self.admin_port = 0
        self.state: dict[str, Any] = {}
        self.known: set[int] = set()
        self._gateway: int | None = None

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "sessionactors.cli", "serve", "--data-dir", str(self.data_dir),
            "--port", str(self.port), "--admin-port", str(self.admin_port),
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        env = super().env()
        env["THESPIAN_BASE_IPADDR"] = "127.0.0.1"
        for key, value in self.settings.items():
            env["SESSIONACTORS_" + key.upper()] = str(value)
        return env

    def start(self, timeout: float = 90.0) -> float:
        self.admin_port = free_port()
        elapsed = super().start(timeout)
        self.state = json.loads((self.data_dir / "run" / "daemon.json").read_text())
        self._gateway = None
        self.remember()
        return elapsed

    @property
    def actor_pgid(self) -> int:
        return int(self.state.get("actor_pgid") or 0)

    def actor_pids(self) -> list[int]:
        """Every live process of the actor system (admin, logger, supervisor, sessions, pool)."""
        return group_members(self.actor_pgid) if self.actor_pgid > 1 else []

    def gateway_pid(self) -> int | None:
        if self._gateway is not None and pid_alive(self._gateway):
            return self._gateway
        if self.proc is None:
            return None
        for pid in descendants(self.proc.pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if b"sessionactors.gateway" in fh.read():
                        self._gateway = pid
                        return pid
            except OSError:
                continue
        return None

    def frontend_pid(self) -> int | None:
        return self.gateway_pid()

    def remember(self) -> None:
        """Note every process of this daemon, to check after stop that none is left."""
        if self.proc is not None:
            self.known |= {self.proc.pid, *descendants(self.proc.pid)}
        self.known |= set(self.actor_pids())

    def processes(self) -> dict[str, list[int]]:
        if self.proc is None:
            return {}
        gateway = self.gateway_pid()
        supervisor = self.supervisor_pid()
        return {
            "daemon": [self.proc.pid],
            "gateway": [gateway] if gateway else [],
            "supervisor": [supervisor] if supervisor else [],
            "actors": [p for p in self.actor_pids() if p != supervisor],  # sessions, pool, admin, logger
        }

    def admin_sessions(self) -> list[dict[str, Any]]:
        """The admin view of every session (includes the pid of live ones)."""
        token = (self.data_dir / "run" / "admin.token").read_text().strip()
        status, body = http_json(self.url + "/api/admin/sessions", token)
        return list(body) if status == 200 and isinstance(body, list) else []

    def session_state(self, session_id: str, token: str) -> str | None:
        status, body = http_json(f"{self.url}/api/sessions/{session_id}", token)
        return body.get("state") if status == 200 and isinstance(body, dict) else None

    def passivation_times(self, session_ids: list[str]) -> dict[str, tuple[str, float]]:
        """(state, last_active) of sessions, read from the daemon's SQLite file (read-only).

        A session actor writes ``state='passivated', last_active=time.time()`` when it
        passivates, so ``last_active`` is the moment it did."""
        db = sqlite3.connect(f"file:{self.data_dir / 'sessionactors.db'}?mode=ro", uri=True, timeout=10)
        try:
            out: dict[str, tuple[str, float]] = {}
            for i in range(0, len(session_ids), 500):
                chunk = session_ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for sid, state, last in db.execute(
                    f"SELECT session_id, state, last_active FROM sessions WHERE session_id IN ({marks})",
                    chunk,
                ):
                    out[sid] = (state, float(last))
            return out
        finally:
            db.close()

    def append_events(self, session_id: str, count: int) -> int:
        """Append ``count`` message events to a *passivated* session, straight into the store
        (one transaction); answers the last event id. Only safe while no actor owns the session."""
        from sessionactors.store.sqlite import SQLiteStore

        store = SQLiteStore(self.data_dir, fsync="normal")
        try:
            first = store.last_event_id(session_id) + 1
            stamp = "2026-11-29T10:00:00.000000+00:00"
            events = [
                {"id": first + i, "timestamp": stamp, "source": "user", "message": f"seed {first + i}",
                 "action": "message", "args": {"content": f"seed {first + i}"}}
                for i in range(count)
            ]  # fmt: skip
            store.append(session_id, events)
            return first + count - 1
        finally:
            store.close()

    def db_size(self) -> int:
        """Bytes of the store's files: the registry, the journals (schema 4) and any shards (3)."""
        files = [
            *self.data_dir.glob("sessionactors.db*"),
            *self.data_dir.glob("journals/*/*.log"),
            *self.data_dir.glob("events/shard-*.db*"),
        ]
        return sum(p.stat().st_size for p in files)

    def db_counts(self) -> tuple[int, int]:
        """(sessions, events) stored: records in the registry, events in the journals (a line
        each after the header) or the shards."""
        db = sqlite3.connect(f"file:{self.data_dir / 'sessionactors.db'}?mode=ro", uri=True, timeout=10)
        try:
            (sessions,) = db.execute("SELECT count(*) FROM sessions").fetchone()
        finally:
            db.close()
        events = sum(p.read_bytes().count(b"\n") - 1 for p in self.data_dir.glob("journals/*/*.log"))
        for shard in sorted(self.data_dir.glob("events/shard-*.db")):
            db = sqlite3.connect(f"file:{shard}?mode=ro", uri=True, timeout=10)
            try:
                events += int(db.execute("SELECT count(*) FROM events").fetchone()[0])
            finally:
                db.close()
        return int(sessions), events

    def supervisor_pid(self) -> int | None:
        """The actor process that parents the session actors: of the admin's children (the
        logger and the supervisor), the one with children (the pool, the sessions)."""
        pids = set(self.actor_pids())
        parent: dict[int, int] = {}
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    parent[pid] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
        roots = {p for p, pp in parent.items() if pp not in pids}  # the admin
        children: dict[int, int] = {p: 0 for p, pp in parent.items() if pp in roots}
        for pp in parent.values():
            if pp in children:
                children[pp] += 1
        return max(children, key=lambda p: children[p]) if children else None

    def stop(self) -> dict[str, Any]:
        self.remember()
        pgid = self.actor_pgid
        t0 = time.monotonic()
        result = super().stop()
        result["stop_s"] = round(time.monotonic() - t0, 2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            any(pid_alive(p) for p in self.known) or (pgid > 1 and group_members(pgid))
        ):
            time.sleep(0.05)
        left = sorted({p for p in self.known if pid_alive(p)} | set(group_members(pgid) if pgid > 1 else []))
        for pid in left:  # report, then end them by pid
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        result["leftovers"] = left
        return result
