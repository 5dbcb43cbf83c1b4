"""Escape attempts from inside a real session's shell (the default, sandboxed ``local`` runtime).

Each test runs what an attacker would type in a session's terminal, through a real daemon
and a Socket.IO client, and checks that it fails: the daemon's secret, its data dir and
store, another session's workspace, the daemon's processes and ports, the bridge socket,
writing outside the workspace, root on the host. Then that no process is left behind by
passivation, shutdown or a SIGKILL of every daemon process, and that a daemon which cannot
make sandboxes refuses to start. The limits are in test_sandbox_limits.py.

These need bubblewrap (tests/install-sandbox.sh installs it); without it they skip, except
in CI (``CI`` set), where they must run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from sessionactors.daemon import pid_alive

from .daemon_harness import Client, DaemonProcess, session_processes, wait_for

if shutil.which("bwrap") is None and not os.environ.get("CI"):
    pytest.skip("bubblewrap is not installed (tests/install-sandbox.sh)", allow_module_level=True)


def run(command: str, timeout: float | None = None) -> dict[str, Any]:
    args: dict[str, Any] = {"command": command}
    if timeout is not None:
        args["timeout"] = timeout
    return {"action": "run", "args": args}


class Shell:
    """A session's shell, driven from a client as a user would."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.client = Client(daemon.url)
        self.ok = self.client.init()
        self.session_id: str = self.ok["session_id"]

    def run(self, command: str, timeout: float = 30) -> dict[str, Any]:
        before = len(self._finals())
        self.client.send(run(command))
        wait_for(lambda: len(self._finals()) > before, timeout, f"the answer to {command!r}")
        return self._finals()[-1]

    def out(self, command: str) -> str:
        return str(self.run(command)["content"])

    def _finals(self) -> list[dict[str, Any]]:
        return [
            e
            for e in self.client.events()
            if e.get("observation") == "run" and not e.get("extras", {}).get("partial")
        ]

    def close(self) -> None:
        self.client.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon with the default runtime for the escape attempts of this module."""
    d = DaemonProcess(tmp_path_factory.mktemp("sandbox") / "data", runtime="local", close_delay=30)
    d.start()
    yield d
    assert not d.stop(), "processes left behind"


@pytest.fixture(scope="module")
def shells(daemon: DaemonProcess) -> Iterator[tuple[Shell, Shell]]:
    """Two sessions: the attacker's and a victim's (with a file of its own)."""
    attacker, victim = Shell(daemon), Shell(daemon)
    assert victim.run("echo victim-data > private.txt")["extras"]["exit_code"] == 0
    yield attacker, victim
    attacker.close()
    victim.close()


def failed(obs: dict[str, Any]) -> bool:
    return bool(obs["extras"]["exit_code"] != 0)


# -- the daemon's files --------------------------------------------------------------------


def test_cannot_read_the_secret(daemon: DaemonProcess, shells: tuple[Shell, Shell]) -> None:
    attacker, _ = shells
    secret_file = daemon.data_dir / "secret.key"
    assert secret_file.is_file()  # the attempt below would succeed without the sandbox
    obs = attacker.run(f"cat {secret_file}")
    assert failed(obs) and "No such file" in obs["content"]
    secret = secret_file.read_text().strip()
    # nowhere the shell can reach: its whole view of the file system holds no copy
    obs = attacker.run(
        f"grep -rlF --exclude=command.sh -- '{secret}' /workspace /tmp /etc /run /dev 2>/dev/null; echo end"
    )
    assert obs["content"] == "end\n"


def test_cannot_see_the_data_dir_or_the_store(daemon: DaemonProcess, shells: tuple[Shell, Shell]) -> None:
    attacker, _ = shells
    for path in (daemon.data_dir, daemon.data_dir / "workspaces", daemon.data_dir / "run"):
        assert path.is_dir()
        obs = attacker.run(f"ls -a {path}")
        assert failed(obs) and "No such file" in obs["content"], path
    stored = [p for p in daemon.data_dir.rglob("*") if p.is_file() and "workspaces" not in p.parts]
    assert stored  # the store and the daemon's files exist on the host
    for path in stored:
        assert failed(attacker.run(f"cat {path} > /dev/null")), path
    # the host's homes are not there either
    assert attacker.out("ls -a /root /home 2>&1; echo end").count("No such file") == 2


def test_cannot_reach_another_sessions_workspace(daemon: DaemonProcess, shells: tuple[Shell, Shell]) -> None:
    attacker, victim = shells
    host_path = daemon.data_dir / "workspaces" / victim.session_id / "private.txt"
    assert host_path.read_text() == "victim-data\n"
    obs = attacker.run(f"cat {host_path}")
    assert failed(obs)
    assert victim.session_id not in attacker.out("ls -a /workspace/.. /workspace")
    obs = attacker.run(f"cat /workspace/../{victim.session_id}/private.txt")
    assert failed(obs)
    # nor by guessing through /proc: no process of the victim's sandbox is visible
    assert "victim" not in attacker.out("cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | sort -u")
    # the victim's own view is unharmed
    assert victim.out("cat private.txt") == "victim-data\n"


def test_cannot_write_outside_the_workspace(shells: tuple[Shell, Shell]) -> None:
    attacker, _ = shells
    for target in ("/usr/evil", "/etc/evil", "/evil", "/run/sessionactors/evil", "/bin/evil", "/proc/evil"):
        obs = attacker.run(f"echo x > {target}")
        assert failed(obs), target
    assert not Path("/usr/evil").exists() and not Path("/etc/evil").exists()
    # its /tmp is its own: what it writes there never reaches the host's /tmp
    marker = f"sandbox-escape-{os.getpid()}"
    assert attacker.run(f"echo x > /tmp/{marker} && cat /tmp/{marker}")["content"] == "x\n"
    assert not Path(f"/tmp/{marker}").exists()
    # remounting its read-only system writable is refused
    assert failed(attacker.run("mount -o remount,rw /usr"))


# -- the daemon's processes, socket and ports ------------------------------------------------


def test_cannot_see_or_signal_daemon_processes(daemon: DaemonProcess, shells: tuple[Shell, Shell]) -> None:
    attacker, _ = shells
    daemon.remember_pids()
    ours = sorted(p for p in daemon.known_pids if pid_alive(p))
    assert ours
    listing = attacker.out("ps -eo pid,comm --no-headers")
    names = {line.split()[1] for line in listing.splitlines()}
    assert names <= {"bwrap", "bash", "ps"}, listing  # no python, no daemon, no other session
    for pid in ours:
        obs = attacker.run(f"kill -9 {pid}")
        assert failed(obs) and "No such process" in obs["content"], pid
    assert all(pid_alive(p) for p in ours)
    assert attacker.out("echo still-here") == "still-here\n"


def test_cannot_reach_the_bridge_socket(daemon: DaemonProcess, shells: tuple[Shell, Shell]) -> None:
    attacker, _ = shells
    sockets = [p for p in daemon.data_dir.rglob("*.sock")]
    assert sockets
    for sock in sockets:
        code = (
            f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(sock)!r}); print('connected')"
        )
        obs = attacker.run(f'python3 -c "{code}"')
        assert failed(obs) and "connected" not in obs["content"]


def test_cannot_connect_to_any_daemon_port(daemon: DaemonProcess, shells: tuple[Shell, Shell]) -> None:
    attacker, _ = shells
    daemon.remember_pids()
    ports = set()
    for pid in daemon.known_pids:
        try:
            for conn in psutil.Process(pid).net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    ports.add(conn.laddr.port)
        except psutil.Error:
            pass
    assert daemon.port in ports and daemon.admin_port in ports  # the HTTP and Thespian ports
    for port in sorted(ports):
        for host in ("127.0.0.1", "localhost"):
            code = (
                "import socket; s = socket.create_connection(("
                f"{host!r}, {port}), timeout=2); print('connected')"
            )
            obs = attacker.run(f'python3 -c "{code}"')
            assert failed(obs) and "connected" not in obs["content"], (host, port)
    # only its own loopback
    assert attacker.out("cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '") == "lo\n"


def test_not_root_on_the_host(daemon: DaemonProcess, shells: tuple[Shell, Shell]) -> None:
    attacker, _ = shells
    uid = int(attacker.out("id -u"))
    assert uid != 0
    status = attacker.out("grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status")
    assert "0000000000000000" in status and "NoNewPrivs:\t1" in status
    for line in status.splitlines():
        if line.startswith("Cap"):
            assert line.split()[1] == "0000000000000000", line
    # the files it makes belong to that uid on the host, not to root
    attacker.run("echo mine > owned.txt")
    host_file = daemon.data_dir / "workspaces" / attacker.session_id / "owned.txt"
    assert host_file.stat().st_uid == uid != 0
    # a setuid program does not help (no new privileges)
    assert failed(attacker.run("su -c id root </dev/null"))


def test_daemon_reads_and_writes_the_sandboxs_files(
    daemon: DaemonProcess, shells: tuple[Shell, Shell]
) -> None:
    """The other side of the unprivileged uid: the REST file API and the shell share files."""
    attacker, _ = shells
    attacker.run("mkdir -p docs && echo from-shell > docs/a.txt")
    token = attacker.ok["token"]
    sid = attacker.session_id
    status, body = daemon.http("GET", f"/api/sessions/{sid}/files/docs/a.txt", token=token)
    assert status == 200, body
    assert attacker.run("rm docs/a.txt && echo appended >> owned2.txt && echo ok")["content"] == "ok\n"


def test_ordinary_work_runs_inside(shells: tuple[Shell, Shell]) -> None:
    attacker, _ = shells
    assert attacker.out("mkdir -p w/x && cd w/x && pwd") == "/workspace/w/x\n"
    assert attacker.out("pwd; echo a b c | tr ' ' '\\n' | sort -r | head -2") == "/workspace/w/x\nc\nb\n"
    assert attacker.out("(sleep 0.1; echo child) & wait; python3 -c 'print(6*7)'") == "child\n42\n"
    assert attacker.out("cd /workspace; echo $HOME; whoami") == "/workspace\nuser\n"
    # streaming output and timeouts
    before = len(attacker.client.events())
    attacker.client.send(run("for i in 1 2 3; do echo $i; sleep 0.4; done; sleep 30", timeout=2))
    wait_for(
        lambda: any(e.get("extras", {}).get("timed_out") for e in attacker.client.events()), 30, "timeout"
    )
    runs = [e for e in attacker.client.events()[before:] if e.get("observation") == "run"]
    assert any(e["extras"].get("partial") for e in runs)
    assert "".join(e["content"] for e in runs).startswith("1\n2\n3\n")


# -- nothing left behind ---------------------------------------------------------------------


def test_sigkill_of_every_daemon_process_leaves_nothing(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "data", runtime="local")
    d.start()
    try:
        shell = Shell(d)
        # a long command, a background job and a double-forked daemon with a scrubbed env
        shell.client.send(run("sleep 1000 & setsid env -i sleep 1001 & grep -r zzz-never / ; sleep 1002"))
        wait_for(lambda: len(session_processes(shell.session_id)) >= 3, 20, "the session's processes")
        d.remember_pids()  # the daemon's processes, the sandbox's bwrap among them
        ours = [p for p in d.known_pids if pid_alive(p)]
        scrubbed = [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] == ["sleep", "1001"] and any(a.pid in ours for a in p.parents())
        ]
        assert len(scrubbed) == 1  # found by ancestry only: its environment names no session
        # every daemon process (python: the daemon, its gateway and actors) at once, as the OOM
        # killer or an operator would; what runs in the sandbox must then die by itself
        daemons = [p for p in ours if "python" in " ".join(psutil.Process(p).cmdline()[:1])]
        assert len(daemons) >= 3 and len(daemons) < len(ours)
        for pid in daemons:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if d.proc is not None:
            d.proc.wait()
        everything = set(ours) | set(scrubbed)

        def gone() -> bool:
            return not session_processes(shell.session_id) and not any(pid_alive(p) for p in everything)

        wait_for(gone, 10, "every process of the sandbox to die with the daemon")
        shell.close()
    finally:
        assert not d.stop()


def test_shutdown_and_passivation_leave_nothing(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "data", runtime="local", close_delay=0.5)
    d.start()
    try:
        a, b = Shell(d), Shell(d)
        for s in (a, b):
            s.run("sleep 1000 & setsid sleep 1001 & echo started")
        procs = {s.session_id: session_processes(s.session_id) for s in (a, b)}
        assert all(len(p) >= 3 for p in procs.values())
        a.close()  # a passivates after close_delay
        wait_for(lambda: not session_processes(a.session_id), 10, "the passivated session's processes")
        assert session_processes(b.session_id)
        b.close()
    finally:
        assert not d.stop()  # shutdown
    assert not session_processes(b.session_id)


# -- clear failures ------------------------------------------------------------------------------


def serve(tmp_path: Path, runtime_options: str, runtime: str = "local") -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SESSIONACTORS_DATA_DIR": str(tmp_path / "data"),
        "SESSIONACTORS_RUNTIME": runtime,
        "SESSIONACTORS_RUNTIME_OPTIONS": runtime_options,
    }
    return subprocess.run(
        [sys.executable, "-m", "sessionactors.cli", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_daemon_refuses_to_start_without_bubblewrap(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = serve(tmp_path, '{"bwrap": "/nonexistent/bwrap"}')
    assert proc.returncode != 0
    assert "apt-get install bubblewrap" in proc.stderr and "runtime.bwrap" in proc.stderr
    assert "local-unsandboxed" in proc.stderr
    assert time.monotonic() - started < 30
    assert not (tmp_path / "data" / "run" / "daemon.json").exists()  # nothing was started


def test_bad_sandbox_setting_is_named(tmp_path: Path) -> None:
    proc = serve(tmp_path, '{"network": "everywhere"}')
    assert proc.returncode != 0 and "runtime.network" in proc.stderr


# -- the outbound network ------------------------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("pasta") is None and not os.environ.get("CI"), reason="passt is not installed"
)
def test_outbound_network_never_reaches_the_daemon(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "data", runtime="local", runtime_options='{"network": "outbound"}')
    d.start()
    try:
        shell = Shell(d)
        # a route out, through an interface that is not loopback
        routes = shell.out("tail -n +2 /proc/net/route | awk '{print $1, $2, $3}'")
        default = [line.split() for line in routes.splitlines() if line.split()[1] == "00000000"]
        assert default and default[0][0] != "lo", routes
        gateway = ".".join(str(b) for b in reversed(bytes.fromhex(default[0][2])))
        own = shell.out("hostname -I 2>/dev/null || true").split()
        d.remember_pids()
        ports = set()
        for pid in d.known_pids:
            try:
                ports |= {
                    c.laddr.port
                    for c in psutil.Process(pid).net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN
                }
            except psutil.Error:
                pass
        assert d.port in ports and d.admin_port in ports
        for port in sorted(ports):
            others = (gateway, *own) if port in (d.port, d.admin_port) else ()  # (connect timeouts)
            for host in ("127.0.0.1", *others):
                code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=2); print('connected')"
                obs = shell.run(f'python3 -c "{code}"')
                assert failed(obs) and "connected" not in obs["content"], (host, port)
        shell.close()
    finally:
        assert not d.stop()  # pasta included: it is a child of the session's process


def status_of(d: DaemonProcess) -> subprocess.CompletedProcess[str]:
    """`sessionactors status` of the daemon ``d``."""
    return subprocess.run(
        [sys.executable, "-m", "sessionactors.cli", "status", "--data-dir", str(d.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SESSIONACTORS_ADMIN_PORT": str(d.admin_port)},
    )


def test_status_says_whether_sessions_are_sandboxed(daemon: DaemonProcess) -> None:
    status = status_of(daemon)
    assert "runtime: local (sandboxed)" in status.stdout, status.stdout + status.stderr


def test_health_and_status_show_the_unsandboxed_opt_out(tmp_path: Path) -> None:
    """The opt-out is visible where an operator looks: /api/health and `status`."""
    d = DaemonProcess(tmp_path / "data", runtime="local-unsandboxed")
    d.start()
    try:
        assert d.http("GET", "/api/health") == (
            200,
            {"status": "ok", "runtime": "local-unsandboxed", "sandboxed": False},
        )
        status = status_of(d)
        assert "runtime: local-unsandboxed (NOT sandboxed)" in status.stdout, status.stdout + status.stderr
    finally:
        assert not d.stop(), "processes left behind"
