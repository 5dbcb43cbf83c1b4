"""The ``sessionactors`` command line, as real subprocesses of ``python -m sessionactors.cli``.

Invalid configuration exits 1 naming the key and starts nothing; ``serve`` exits 0 on
SIGTERM and on SIGINT (Ctrl-C: the whole foreground process group) and leaves no process
behind; ``status`` and ``sessions list|show|delete`` work against a running daemon (admin
API) and a stopped one (the store); a deleted session's token is refused and its
workspace is gone. Everything runs on 127.0.0.1 with free ports, tmp data dirs and the
echo runtime. ``start``/``status``/``stop`` as a trio is test_daemon_e2e's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionactors.actorsystem import port_in_use
from sessionactors.config import Config
from sessionactors.daemon import descendants, group_members, pid_alive, read_state

from .daemon_harness import Client, DaemonProcess, free_port, wait_for

CLI = [sys.executable, "-m", "sessionactors.cli"]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONACTORS_")}
    env.update(THESPIAN_BASE_IPADDR="127.0.0.1", SESSIONACTORS_RUNTIME="echo", **extra)
    return env


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env or cli_env(), capture_output=True, text=True, timeout=timeout
    )


def cli_contained(args: list[str], env: dict[str, str], data: Path) -> subprocess.CompletedProcess[str]:
    """``cli`` for a command that should exit at once: if it runs instead (a daemon that should
    not have started), end it and everything it started, by pid, before failing."""
    proc = subprocess.Popen(
        [*CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        state = read_state(Config(data_dir=data)) or {}
        pids = {proc.pid, *descendants(proc.pid), *group_members(proc.pid)}
        if int(state.get("actor_pgid") or 0) > 1:
            pids |= set(group_members(int(state["actor_pgid"])))
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"sessionactors {' '.join(args)} did not exit: it ran") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def msg(text: str) -> dict[str, Any]:
    return {"action": "message", "args": {"content": text}}


def table(stdout: str) -> dict[str, list[str]]:
    """The rows of the sessions table by session id: [id, state, conns, events, owner, date, time]."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("SESSION "))
    assert lines[start].split()[:4] == ["SESSION", "STATE", "CONNS", "EVENTS"], lines[start]
    return {cols[0]: cols for cols in (line.split() for line in lines[start + 1 :]) if cols}


def shutdown(daemon: DaemonProcess, sig: signal.Signals, group: bool = False) -> tuple[int | None, list[int]]:
    """Signal ``serve`` (its process group, like Ctrl-C in a terminal, when ``group``).

    Returns its exit code (None: it did not exit within 60 s) and the pids of every process
    it had (itself, its descendants, its actor system's process group) still alive 10 s
    after it exited; those are then ended by pid.
    """
    assert daemon.proc is not None
    daemon.remember_pids()
    if group:
        os.killpg(daemon.proc.pid, sig)
    else:
        daemon.proc.send_signal(sig)
    try:
        code: int | None = daemon.proc.wait(60)
    except subprocess.TimeoutExpired:
        code = None
    return code, daemon.stop()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Any]:
    """``serve`` daemons (echo runtime); any still running at teardown is stopped, stragglers ended."""
    started: list[DaemonProcess] = []

    def make(data_dir: Path, **options: Any) -> DaemonProcess:
        daemon = DaemonProcess(data_dir, **options)
        started.append(daemon)
        daemon.start()
        return daemon

    yield make
    for daemon in started:
        if daemon.proc is not None:
            try:
                daemon.stop()
            except AssertionError:  # a failed exit code: still end every process of ours
                for pid in daemon.known_pids:
                    if pid_alive(pid):
                        os.kill(pid, signal.SIGKILL)


# -- invalid configuration --------------------------------------------------------------------

# (command line after the data dir, extra environment, the key the message must name)
INVALID: list[tuple[list[str], dict[str, str], str]] = [
    (["serve", "--port", "70000"], {}, "port"),
    (["serve", "--port", "abc"], {}, "port"),
    (["start", "--close-delay", "-1"], {}, "close_delay"),
    (["serve"], {"SESSIONACTORS_CLOSE_DELAY": "abc"}, "close_delay"),
    (["start"], {"SESSIONACTORS_ACTOR_IP": "192.0.2.1"}, "actor_ip"),
    (["serve"], {"SESSIONACTORS_NO_SUCH_KEY": "1"}, "no_such_key"),
    (["serve", "--runtime", "no-such-runtime"], {}, "runtime"),
    (["serve", "--config", "{missing}"], {}, "config"),
    (["start", "--config", "{bad_toml}"], {}, "config"),
    (["status"], {"SESSIONACTORS_FSYNC": "sometimes"}, "fsync"),
]


@pytest.mark.parametrize(("argv", "env", "key"), INVALID, ids=[f"{c[2]}-{i}" for i, c in enumerate(INVALID)])
def test_invalid_configuration_exits_1_naming_the_key_and_starts_nothing(
    tmp_path: Path, argv: list[str], env: dict[str, str], key: str
) -> None:
    data = tmp_path / "data"
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("port = = 1\n")
    argv = [a.format(missing=tmp_path / "missing.toml", bad_toml=bad_toml) for a in argv]
    command, rest = argv[0], argv[1:]
    port = free_port()
    if command in ("serve", "start") and "--port" not in rest:
        rest += ["--port", str(port), "--admin-port", str(free_port())]
    result = cli_contained([command, "--data-dir", str(data), *rest], cli_env(**env), data)
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith(f"sessionactors: invalid configuration '{key}': "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not data.exists()  # no data dir, no run dir, no log: nothing was started
    assert not port_in_use(port)


# -- stop/status with no daemon ----------------------------------------------------------------


def test_stop_and_status_when_not_running(tmp_path: Path) -> None:
    data = tmp_path / "data"
    stopped = cli("stop", "--data-dir", str(data))
    assert (stopped.returncode, stopped.stdout.strip(), stopped.stderr) == (0, "not running", "")
    status = cli("status", "--data-dir", str(data))
    assert status.returncode == 3, status.stderr  # LSB: not running
    assert status.stdout.startswith(f"daemon: not running (data dir {data})")
    assert "sessions: 0 live, 0 other" in status.stdout and table(status.stdout) == {}
    listed = cli("sessions", "list", "--data-dir", str(data))
    assert listed.returncode == 0 and table(listed.stdout) == {}

    # A state file left by a daemon that is gone (its pid is dead): still "not running", exit 0.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (data / "run").mkdir(parents=True)
    (data / "run" / "daemon.json").write_text(
        json.dumps({"pid": gone.pid, "host": "127.0.0.1", "port": free_port(), "actor_pgid": 0})
    )
    again = cli("stop", "--data-dir", str(data))
    assert (again.returncode, again.stdout.strip()) == (0, "not running")
    assert "daemon: not running" in cli("status", "--data-dir", str(data)).stdout


# -- against a running daemon ------------------------------------------------------------------


def test_status_and_sessions_against_a_running_daemon_then_sigterm(tmp_path: Path, daemons: Any) -> None:
    data = tmp_path / "data"
    daemon = daemons(data, close_delay=0.5)
    clients: list[Client] = []
    try:
        live = Client(daemon.url)
        clients.append(live)
        ok_live = live.init()
        live.send(msg("hello"))
        live.wait_events(1)

        idle = Client(daemon.url)
        ok_idle = idle.init()
        idle.send(msg("one"))
        idle.send(msg("two"))
        idle.wait_events(2)
        idle.close()
        wait_for(
            lambda: (
                daemon.http("GET", f"/api/sessions/{ok_idle['session_id']}", token=ok_idle["token"])[1][
                    "state"
                ]
                == "passivated"
            ),
            what="the idle session to passivate",
        )

        doomed = Client(daemon.url)
        clients.append(doomed)
        ok_doomed = doomed.init()
        doomed.send(msg("bye"))
        doomed.wait_events(1)
        workspace = data / "workspaces" / ok_doomed["session_id"]
        workspace.mkdir(parents=True)  # the echo runtime keeps files in memory: make one as `local` would
        (workspace / "notes.txt").write_text("x")

        common = ["--data-dir", str(data)]
        status = cli("status", *common)
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith(
            f"daemon: running (pid {daemon.proc.pid}) on http://127.0.0.1:{daemon.port}"
        ), status.stdout
        assert "sessions: 2 live, 1 other" in status.stdout
        rows = table(status.stdout)
        assert set(rows) == {ok_live["session_id"], ok_idle["session_id"], ok_doomed["session_id"]}
        assert rows[ok_live["session_id"]][1:4] == ["live", "1", "1"]  # state, connections, events
        assert rows[ok_idle["session_id"]][1:4] == ["passivated", "0", "2"]
        assert rows[ok_doomed["session_id"]][1:4] == ["live", "1", "1"]

        listed = cli("sessions", "list", *common)
        assert listed.returncode == 0 and set(table(listed.stdout)) == set(rows)

        shown = cli("sessions", "show", ok_idle["session_id"], *common)
        assert shown.returncode == 0, shown.stderr
        info = json.loads(shown.stdout)
        assert info["session_id"] == ok_idle["session_id"]
        assert (info["state"], info["connections"], info["last_event_id"]) == ("passivated", 0, 1)

        unknown = cli("sessions", "show", "0" * 32, *common)
        assert unknown.returncode == 1 and f"no session {'0' * 32}" in unknown.stderr
        no_id = cli("sessions", "delete", *common)
        assert no_id.returncode == 2 and "needs a session id" in no_id.stderr

        deleted = cli("sessions", "delete", ok_doomed["session_id"], *common)
        assert deleted.returncode == 0, deleted.stderr
        assert deleted.stdout.strip() == f"deleted {ok_doomed['session_id']}"
        doomed.wait(
            lambda fs: any(f.get("id") == "STATUS$SESSION_DELETED" for f in fs), what="SESSION_DELETED status"
        )
        wait_for(lambda: not workspace.exists(), what="the deleted session's workspace to go")
        wait_for(
            lambda: ok_doomed["session_id"] not in table(cli("sessions", "list", *common).stdout),
            what="the deleted session to leave the list",
        )
        stranger = Client(daemon.url)
        clients.append(stranger)
        assert stranger.init(token=ok_doomed["token"]) == {"error": "Invalid token", "error_code": 401}

        # The other sessions are untouched.
        live.send(msg("still here"))
        assert [e["id"] for e in live.wait_events(2)] == [0, 1]
        assert stranger.init(token=ok_idle["token"])["session_id"] == ok_idle["session_id"]
        assert [e["id"] for e in stranger.wait_events(2)] == [0, 1]
    finally:
        for client in clients:
            client.close()

    code, left = shutdown(daemon, signal.SIGTERM)
    assert code == 0, daemon.log_path.read_text()[-3000:]
    assert left == [], f"processes left behind: {left}"
    assert not (data / "run" / "daemon.json").exists()


# -- against a stopped daemon, then a new one on SIGINT ------------------------------------------


def test_sessions_against_a_stopped_daemon_then_sigint(tmp_path: Path, daemons: Any) -> None:
    data = tmp_path / "data"
    common = ["--data-dir", str(data)]
    first = daemons(data, close_delay=60)
    a, b = Client(first.url), Client(first.url)
    try:
        ok_a = a.init()
        a.send(msg("a0"))
        a.send(msg("a1"))
        a.wait_events(2)
        ok_b = b.init()
        b.send(msg("b0"))
        b.wait_events(1)
    finally:
        a.close()
        b.close()
    code, left = shutdown(first, signal.SIGTERM)  # both still live (close_delay 60): persisted on the way out
    assert code == 0 and left == [], (code, left)

    status = cli("status", *common)
    assert status.returncode == 3, status.stderr
    assert status.stdout.startswith("daemon: not running")
    assert "sessions: 0 live, 2 other" in status.stdout
    rows = table(status.stdout)
    assert rows[ok_a["session_id"]][1:4] == ["passivated", "0", "2"]
    assert rows[ok_b["session_id"]][1:4] == ["passivated", "0", "1"]
    assert set(table(cli("sessions", "list", *common).stdout)) == set(rows)

    shown = cli("sessions", "show", ok_a["session_id"], *common)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["last_event_id"] == 1

    workspace = data / "workspaces" / ok_b["session_id"]
    workspace.mkdir(parents=True)
    (workspace / "notes.txt").write_text("x")
    deleted = cli("sessions", "delete", ok_b["session_id"], *common)
    assert deleted.returncode == 0 and deleted.stdout.strip() == f"deleted {ok_b['session_id']}"
    assert not workspace.exists()
    assert set(table(cli("sessions", "list", *common).stdout)) == {ok_a["session_id"]}
    assert cli("sessions", "show", ok_b["session_id"], *common).returncode == 1
    assert cli("sessions", "delete", ok_b["session_id"], *common).returncode == 1

    # A new daemon on the same data dir: the deleted session's token is refused, the other rejoins.
    second = daemons(data, close_delay=60)
    c = Client(second.url)
    try:
        assert c.init(token=ok_b["token"]) == {"error": "Invalid token", "error_code": 401}
        ok = c.init(token=ok_a["token"])
        assert ok["status"] == "ok" and ok["session_id"] == ok_a["session_id"]
        assert [e["id"] for e in c.wait_events(2)] == [0, 1]
        assert table(cli("status", *common).stdout)[ok_a["session_id"]][1] == "live"
    finally:
        c.close()
    code, left = shutdown(second, signal.SIGINT, group=True)  # Ctrl-C: daemon and gateway get SIGINT
    assert code == 0, second.log_path.read_text()[-3000:]
    assert left == [], f"processes left behind: {left}"
    stopped = cli("stop", *common)
    assert (stopped.returncode, stopped.stdout.strip()) == (0, "not running")
