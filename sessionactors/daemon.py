"""The daemon: an un-patched launcher that owns the actor system and the gateway process.

Why two processes: eventlet's monkey-patching breaks a multiprocess Thespian
system started from the patched process (measured: ``createActor`` hangs). So
this process starts the actor system and the supervisor, then runs the gateway
as a child process (``python -m sessionactors.gateway``), restarts it if it
dies, and on SIGINT/SIGTERM stops it, asks the supervisor to stop every session
cleanly (persist, stop runtimes), shuts the actor system down and ends any
process of its own that is left.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .actorsystem import (
    check_port_free,
    end_processes,
    group_members,
    leftover_actor_pids,
    listening_pid,
    pid_alive,
    port_error,
    port_holder,
    port_in_use,
    proc_stat,
    shutdown_system,
    start_system,
)
from .bridge import INSTANCE_ENV, INSTANCE_HEADER
from .config import Config
from .errors import GATEWAY_BIND_FAILED, ActorSystemInUse, DaemonError, StoreError
from .messages import Configure, Configured, GatewayStopping, Shutdown, ShutdownDone
from .recovery import SupervisorRecovery

__all__ = [
    "Daemon",
    "INSTANCE_ENV",
    "INSTANCE_HEADER",
    "read_state",
    "pid_alive",
    "descendants",
    "group_members",
    "listening_pid",
    "port_holder",
    "check_port_free",
    "prepare_data_dir",
    "leftover_actor_pids",
    "end_processes",
    "health_ok",
]


log = logging.getLogger("sessionactors.daemon")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found through /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(proc_stat(entry)[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def prepare_data_dir(cfg: Config) -> None:
    """Create the data directory and its parts (mode 0700), or DaemonError in one line saying why."""
    for d in (cfg.data_dir, cfg.run_dir, cfg.workspaces_dir):
        try:
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        except OSError as exc:
            raise DaemonError(
                f"cannot use the data directory {cfg.data_dir}: {_why_not_a_dir(d, exc)}"
            ) from None
    probe = cfg.run_dir / f".probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DaemonError(
            f"cannot use the data directory {cfg.data_dir}: cannot write in it ({exc.strerror})"
        ) from None


def _why_not_a_dir(path: Path, exc: OSError) -> str:
    """What is in the way of directory ``path``: a file on the way, or the system's reason."""
    for parent in [path, *path.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                return f"{parent} is a file, not a directory"
            break
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def health_ok(host: str, port: int, timeout: float = 2.0, instance: str | None = None) -> bool:
    """True when ``/api/health`` answers 200 (and, with ``instance``, from that daemon)."""
    import urllib.request  # here: actor processes fork from this one; keep ssl (~5 MB) out of them

    try:
        with urllib.request.urlopen(f"http://{host}:{port}/api/health", timeout=timeout) as resp:
            if instance is not None and resp.headers.get(INSTANCE_HEADER) != instance:
                return False  # another daemon answers on this port
            return bool(resp.status == 200)
    except OSError:
        return False


def read_state(cfg: Config) -> dict[str, Any] | None:
    """What the running (or crashed) daemon wrote about itself, or None."""
    try:
        return dict(json.loads((cfg.run_dir / "daemon.json").read_text()))
    except (OSError, ValueError):
        return None


class Daemon(SupervisorRecovery):
    """Runs the actor system, the supervisor and the gateway until told to stop (and brings
    a dead supervisor back: ``recovery.py``)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stop_event = threading.Event()
        self.gateway: subprocess.Popen[bytes] | None = None
        self.asys: Any = None
        self.supervisor: Any = None
        self.bridge_path = ""
        self.gateway_restarts = 0
        self.actor_pgid = 0
        self.admin_pid = 0
        self.owns_run_dir = False
        # Answered on /api/health, so that `start` knows its own daemon from another one.
        self.instance = os.environ.pop(INSTANCE_ENV, "") or secrets.token_hex(8)

    # -- start-up ------------------------------------------------------------------
    def _prepare_dirs(self) -> None:
        prepare_data_dir(self.cfg)
        path = self.cfg.run_dir / "bridge.sock"
        if len(str(path)) > 100:  # AF_UNIX paths are limited to 108 bytes
            path = Path(tempfile.mkdtemp(prefix="sa-")) / "bridge.sock"
        self.bridge_path = str(path)

    def _check_store(self) -> None:
        """Open the store once before any actor starts: a damaged or foreign registry stops
        the daemon with its reason (one line), and a schema migration runs here, once."""
        from .store import open_store

        try:
            open_store(self.cfg.data_dir, **self.cfg.store_options).close()
        except StoreError as exc:
            # The PostgreSQL store's errors already say what could not be reached.
            raise DaemonError(str(exc) if self.cfg.store_url else f"cannot open the store: {exc}") from None

    def _check_leftovers(self) -> None:
        """Refuse to join, or reclaim, an actor system a crashed daemon left behind."""
        state = read_state(self.cfg)
        if state and pid_alive(int(state.get("pid", 0))) and int(state["pid"]) != os.getpid():
            raise DaemonError(f"a daemon is already running for {self.cfg.data_dir} (pid {state['pid']})")
        if not port_in_use(self.cfg.admin_port, self.cfg.actor_ip):
            return
        pids = leftover_actor_pids(state, self.cfg.admin_port, self.cfg.actor_ip)
        if not pids:
            raise ActorSystemInUse(
                f"admin port {self.cfg.admin_port} is held by an actor system this data directory did not"
                f" start ({port_holder(self.cfg.admin_port)}); stop it or set another admin_port"
            )
        log.warning("reclaiming a leftover actor system of a crashed daemon: pids %s", pids)
        end_processes(pids)
        deadline = time.monotonic() + 10
        while port_in_use(self.cfg.admin_port, self.cfg.actor_ip) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "host": self.cfg.host,
            "port": self.cfg.port,
            "admin_port": self.cfg.admin_port,
            "actor_pgid": self.actor_pgid,
            "supervisor_pid": self.supervisor_pid,
            "started": time.time(),
            "instance": self.instance,
            "runtime": self.cfg.runtime,  # `status` says whether sessions run sandboxed
        }
        tmp = self.cfg.run_dir / "daemon.json.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.cfg.run_dir / "daemon.json")

    def _write_admin_token(self) -> None:
        path = self.cfg.run_dir / "admin.token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))

    def start(self) -> None:
        """Start the actor system, the supervisor and the gateway; return once healthy."""
        self._prepare_dirs()
        self._check_leftovers()
        check_port_free(self.cfg.host, self.cfg.port)  # before anything starts: nothing to undo
        self._check_store()
        self.owns_run_dir = True
        self.asys = start_system(
            self.cfg.actor_base,
            self.cfg.admin_port,
            self.cfg.actor_ip,
            self.cfg.multi_host,
            self.cfg.log_level,
            self.cfg.log_json,
        )
        self.admin_pid = listening_pid(self.cfg.admin_port) or 0
        self.actor_pgid = os.getpgid(self.admin_pid) if self.admin_pid else 0
        self._reap()
        self._write_state()
        self._write_admin_token()
        self._start_supervisor()
        self._write_state()
        self._start_gateway()
        self._wait_healthy()
        log.info("serving on http://%s:%d", self.cfg.host, self.cfg.port)

    def _start_supervisor(self, dead: Any = None) -> None:
        """Create and configure the supervisor; learn its pid (the watchdog watches it).

        After a supervisor died (``dead``: its address), the admin forgets its global name
        once it has handled the exit; until then ``createActor`` hands back the dead address.
        """
        from .actors.supervisor import SUPERVISOR_NAME, SupervisorActor

        deadline = time.monotonic() + 10
        self.supervisor = self.asys.createActor(SupervisorActor, globalName=SUPERVISOR_NAME)
        while dead is not None and self.supervisor == dead:
            if time.monotonic() > deadline:
                raise DaemonError("the actor system still names the dead supervisor after 10 s")
            time.sleep(0.05)
            self.supervisor = self.asys.createActor(SupervisorActor, globalName=SUPERVISOR_NAME)
        reply = self.ask_supervisor(Configure(self.cfg.to_json(), self.bridge_path), Configured, 30)
        if not isinstance(reply, Configured):
            raise DaemonError(f"the supervisor did not start (answer: {reply!r})")
        # Retried: after a recovery the first answer to this handle can be a late one meant
        # for the old supervisor (CI: a restart that gave up at once under load).
        deadline = time.monotonic() + 10
        while not self.ping_supervisor():
            if time.monotonic() > deadline:
                raise DaemonError("the supervisor did not answer its first ping within 10 s")
        log.info("supervisor ready (pid %d); %d stored session(s)", self.supervisor_pid, reply.sessions)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + 30
        while not health_ok(self.cfg.host, self.cfg.port, instance=self.instance):
            if self.gateway is not None and self.gateway.poll() == GATEWAY_BIND_FAILED:
                raise DaemonError(port_error(self.cfg.host, self.cfg.port))
            if self.gateway is not None and self.gateway.poll() is not None:
                raise DaemonError(f"the gateway exited with code {self.gateway.returncode} (see the log)")
            if time.monotonic() > deadline:
                raise DaemonError("the gateway did not become healthy within 30 s")
            time.sleep(0.05)

    def _start_gateway(self) -> None:
        env = dict(os.environ)
        env["_SA_GATEWAY_CONFIG"] = self.cfg.to_json()
        env["_SA_BRIDGE"] = self.bridge_path
        env[INSTANCE_ENV] = self.instance
        self.gateway = subprocess.Popen([sys.executable, "-m", "sessionactors.gateway"], env=env)

    # -- running -------------------------------------------------------------------
    def _reap(self) -> None:
        """Collect exited children other than the gateway (Thespian's admin start-up leaves one)."""
        gateway_pid = self.gateway.pid if self.gateway is not None else None
        for pid in descendants(os.getpid()):
            if pid != gateway_pid:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def serve_forever(self) -> None:
        """Watch the gateway (restart it when it dies) and the supervisor (``recovery.py``)
        until SIGINT/SIGTERM; DaemonError when the supervisor cannot be brought back."""
        backoff = 0.1
        while not self.stop_event.wait(0.2):
            self.watch_supervisor()
            if self.gateway is not None and self.gateway.poll() is not None:
                log.error("gateway exited with code %s; restarting it", self.gateway.returncode)
                self.gateway_restarts += 1
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._start_gateway()
            else:
                backoff = 0.1

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            self.stop_event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # -- shutdown ------------------------------------------------------------------
    def stop(self) -> None:
        """Stop the gateway, then every session, then the actor system; leave no process behind."""
        if self.gateway is not None and self.gateway.poll() is None:
            if self.asys is not None and self.supervisor_alive():
                try:  # so that the supervisor logs the link it loses now as a clean stop
                    self.ask_supervisor(GatewayStopping(), GatewayStopping, 5)
                except Exception:
                    log.exception("telling the supervisor that the gateway stops failed")
            self.gateway.terminate()
            try:
                self.gateway.wait(10)
            except subprocess.TimeoutExpired:
                self.gateway.kill()
                self.gateway.wait()
        if self.asys is not None:
            if self.supervisor_alive():
                try:
                    done = self.ask_supervisor(Shutdown(), ShutdownDone, 30)
                    if not isinstance(done, ShutdownDone):
                        log.error("supervisor did not confirm shutdown: %r", done)
                except Exception:
                    log.exception("asking the supervisor to shut down failed")
            leftover = set(descendants(os.getpid()))
            if self.actor_pgid > 1:
                leftover |= set(group_members(self.actor_pgid))
            shutdown_system(self.asys, self.cfg.admin_port)
            self.asys = None
            alive = [p for p in leftover if pid_alive(p) and p != os.getpid()]
            if alive:
                log.warning("ending %d actor process(es) left after shutdown", len(alive))
                end_processes(alive)
        if not self.owns_run_dir:
            return  # start-up failed before we took the data dir: leave another daemon's files alone
        for name in ("daemon.json", "admin.token"):
            try:
                (self.cfg.run_dir / name).unlink()
            except OSError:
                pass
        if self.bridge_path and os.path.exists(self.bridge_path):
            os.unlink(self.bridge_path)

    def run(self) -> int:
        """Foreground run: start, serve until a signal, stop. Returns the exit code."""
        self.install_signal_handlers()
        try:
            self.start()
            self.serve_forever()
        finally:
            self.stop()
        return 0
