"""The daemon as an operator meets it (issue 17): ports, orphans, data dirs, the CLI's
manners, polling clients.

- One port, one daemon: a second ``start`` on a taken port fails in one line naming the
  holder, and the kernel keeps a single listener (the gateway binds without SO_REUSEPORT).
- After ``kill -9`` of the daemon's main process, ``status`` says its actor system is
  still there (exit 1) and ``stop`` ends it; with nothing running ``status`` exits 3.
- Unusable data dirs and taken ports give one line, never a traceback.
- ``--version``, ``--help`` descriptions without markup, ``status`` into a closed pipe,
  ISO 8601 times and id prefixes in ``sessions show``, ``logs [-f]`` and the rotation of
  daemon.log, a clean stop without WARNING, no eventlet deprecation text.
- python-socketio's client on ``transports=["polling"]`` gets a replay of 1,000 events.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sessionactors.config import Config

from .daemon_harness import Client, DaemonProcess, free_port, wait_for
from .test_cli import CLI, cli, cli_contained, cli_env


def listeners(port: int) -> int:
    """How many TCP sockets LISTEN on ``port`` (what ``ss -ltn`` shows)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            next(fh)
            count += sum(
                1
                for line in fh
                if line.split()[3] == "0A" and int(line.split()[1].rsplit(":", 1)[1], 16) == port
            )
    return count


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- ports ---------------------------------------------------------------------------------------


def test_second_daemon_on_a_taken_port_fails_naming_the_holder(tmp_path: Path, daemon: DaemonProcess) -> None:
    other = tmp_path / "other"
    result = cli_contained(
        ["start", "--data-dir", str(other), "--port", str(daemon.port), "--admin-port", str(free_port())],
        cli_env(),
        other,
    )
    line = one_line_error(result)
    holder = daemon.state()
    assert holder is not None
    assert f"port {daemon.port} on 127.0.0.1 is already in use by pid " in line, line
    assert "sessionactors.gateway" in line, line  # the program holding it, from /proc
    assert listeners(daemon.port) == 1
    assert daemon.http("GET", "/api/health")[0] == 200  # the first daemon is untouched


def test_port_held_by_another_program_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        data = tmp_path / "data"
        result = cli_contained(
            ["serve", "--data-dir", str(data), "--port", str(port), "--admin-port", str(free_port())],
            cli_env(),
            data,
        )
        line = one_line_error(result)
        assert line.startswith(
            f"sessionactors: port {port} on 127.0.0.1 is already in use by pid {os.getpid()} "
        )


def test_gateway_refuses_a_port_another_socket_shares(tmp_path: Path) -> None:
    """Even a listener that allows SO_REUSEPORT (as eventlet's default did) is not shared."""
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        cfg = Config(data_dir=tmp_path / "data", port=port)
        env = {**cli_env(), "_SA_GATEWAY_CONFIG": cfg.to_json(), "_SA_BRIDGE": str(tmp_path / "b.sock")}
        gateway = subprocess.Popen(
            [sys.executable, "-m", "sessionactors.gateway"], env=env, stderr=subprocess.PIPE, text=True
        )
        try:
            _, err = gateway.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.communicate()
            raise AssertionError("the gateway shared a port another socket listens on") from None
        assert gateway.returncode == 3, err
        assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in err


# -- orphans -------------------------------------------------------------------------------------


def test_status_and_stop_find_the_actor_system_a_killed_daemon_left(daemon: DaemonProcess) -> None:
    common = ["--data-dir", str(daemon.data_dir)]
    c = Client(daemon.url)
    try:
        assert c.init()["status"] == "ok"
    finally:
        c.close()
    daemon.kill9()
    status = cli("status", *common)
    assert status.returncode == 1, status.stdout + status.stderr
    assert (
        "left its actor system running" in status.stdout and "'sessionactors stop' ends it" in status.stdout
    )
    stopped = cli("stop", *common)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stopped the leftover actor system" in stopped.stdout
    wait_for(lambda: not daemon.stop(), 30, "every process of the killed daemon to be gone")
    after = cli("status", *common)
    assert after.returncode == 3 and after.stdout.startswith("daemon: not running"), after.stdout


# -- data dirs -----------------------------------------------------------------------------------


def _immutable_dir(tmp_path: Path) -> Path | None:
    parent = tmp_path / "immutable"
    parent.mkdir()
    if shutil.which("chattr") is None:
        return None
    if subprocess.run(["chattr", "+i", str(parent)], capture_output=True).returncode != 0:
        return None  # not supported on this file system
    return parent


@pytest.mark.parametrize("case", ["under-a-file", "under-proc", "immutable-parent"])
@pytest.mark.parametrize("command", ["serve", "start"])
def test_unusable_data_dir_is_one_line(tmp_path: Path, case: str, command: str) -> None:
    if case == "under-a-file":
        (tmp_path / "file").write_text("")
        data, why = tmp_path / "file" / "data", f"{tmp_path / 'file'} is a file, not a directory"
    elif case == "under-proc":
        data, why = Path("/proc/sessionactors-test/data"), "/proc/sessionactors-test"
    else:
        parent = _immutable_dir(tmp_path)
        if parent is None:
            pytest.skip("chattr +i is not available here")
        data, why = parent / "data", "Operation not permitted"
    try:
        args = [
            command,
            "--data-dir",
            str(data),
            "--port",
            str(free_port()),
            "--admin-port",
            str(free_port()),
        ]
        line = one_line_error(cli_contained(args, cli_env(), tmp_path / "unused"))
    finally:
        if case == "immutable-parent":
            subprocess.run(["chattr", "-i", str(tmp_path / "immutable")], check=True)
    assert line.startswith(f"sessionactors: cannot use the data directory {data}: "), line
    assert why in line, line


# -- the command line ----------------------------------------------------------------------------


def test_version_and_help_describe_every_command() -> None:
    from sessionactors import __version__

    version = cli("--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"sessionactors {__version__}")
    assert "``" not in cli("--help").stdout
    for command in ("serve", "start", "stop", "status", "logs", "sessions", "rotate-secret"):
        text = cli(command, "--help").stdout
        description = text.split("\n\n")[1]  # after the usage paragraph
        assert not description.startswith(("options:", "positional")), (command, text)
        assert "``" not in text and ":class:" not in text, (command, text)


def test_status_into_a_closed_pipe_has_no_traceback(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before status writes a byte: `status | head -0`
    try:
        done = subprocess.run(
            [*CLI, "status", "--data-dir", str(tmp_path / "d")],
            env=cli_env(), stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141


def test_sessions_show_takes_a_prefix_and_prints_iso_times(tmp_path: Path, daemon: DaemonProcess) -> None:
    c = Client(daemon.url)
    try:
        session_id = c.init()["session_id"]
    finally:
        c.close()
    shown = cli("sessions", "show", session_id[:6], "--data-dir", str(daemon.data_dir))
    assert shown.returncode == 0, shown.stderr
    import json

    info = json.loads(shown.stdout)
    assert info["session_id"] == session_id
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", info["last_active"]), info


def test_logs_rotation_follow_and_a_clean_stop(tmp_path: Path) -> None:
    data = tmp_path / "data"
    common = ["--data-dir", str(data)]
    port = free_port()
    env = cli_env(
        SESSIONACTORS_LOG_MAX_BYTES="3000", SESSIONACTORS_LOG_KEEP="2", SESSIONACTORS_CLOSE_DELAY="60"
    )
    started = cli("start", *common, "--port", str(port), "--admin-port", str(free_port()), env=env)
    log = data / "run" / "daemon.log"
    follower = None
    try:
        assert started.returncode == 0, started.stderr
        follower = subprocess.Popen(
            [*CLI, "logs", "-f", *common], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        clients = []
        try:
            # every new session logs a few INFO lines: enough of them rotate the log twice
            def grow() -> bool:
                c = Client(f"http://127.0.0.1:{port}")
                clients.append(c)
                c.init()
                return log.with_name("daemon.log.2").exists()

            wait_for(grow, 120, "daemon.log to rotate twice")
        finally:
            for c in clients:
                c.close()
        assert not log.with_name("daemon.log.3").exists()  # keep = 2
        assert log.with_name("daemon.log.1").stat().st_size < 3000 + 65536
        printed = cli("logs", *common, env=env)
        assert (
            printed.returncode == 0
            and printed.stdout.encode() == log.read_bytes()[: len(printed.stdout.encode())]
        )
    finally:
        stopped = cli("stop", *common, env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert follower is not None
    follower.terminate()
    followed, _ = follower.communicate(timeout=30)
    assert b"session activated" in followed  # what was appended after it started, across rotations
    everything = "".join(p.read_text() for p in sorted(log.parent.glob("daemon.log*")))
    assert "supervisor: gateway stopped" in everything
    assert "gateway link lost" not in everything and "WARNING" not in everything, everything[-3000:]
    assert "Eventlet is deprecated" not in everything


# -- polling clients -----------------------------------------------------------------------------


def test_polling_python_client_gets_a_replay_of_1000_events(daemon_factory: Any) -> None:
    daemon = daemon_factory(rate_limit=100000, rate_burst=100000)
    c = Client(daemon.url)
    try:
        token = c.init()["token"]
        for i in range(500):  # an action and its observation each
            c.send({"action": "run", "args": {"command": f"echo {i}"}})
        c.wait_events(1000, 120)
    finally:
        c.close()
    polling = Client(daemon.url, transports=["polling"])
    try:
        assert polling.init(token=token, latest=-1)["status"] == "ok"
        events = polling.wait_events(1000, 120)
        assert [e["id"] for e in events] == list(range(len(events)))
        assert polling.sio.connected
    finally:
        polling.close()
