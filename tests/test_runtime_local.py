"""The local runtime driven directly (no actors), with real bash processes.

``Driver`` plays the session actor's part: it calls ``poll()`` when
``select`` says a runtime fd is readable or when ``next_deadline()`` passes,
until the runtime is no longer busy, under an overall deadline. Every runtime
a test creates is stopped at teardown, and the teardown fails the test if any
process still carries the test's session id in its environment.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from sessionactors.errors import ActionError, PathEscape, RuntimeStartError
from sessionactors.runtime import Event, Output, RuntimeContext, Status, load_runtime
from sessionactors.runtimes.local import LocalRuntime, LocalUnsandboxedRuntime

EXAMPLE_DIR = Path(__file__).parent / "data" / "example_runtime"


class Driver:
    """Runs actions on a runtime the way the session actor does, without blocking on it."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.next_id = 0

    def pump(self, until: Callable[[], bool], limit: float) -> list[Output]:
        """Poll on fd activity or deadline until ``until()``; fail after ``limit`` seconds."""
        outputs: list[Output] = []
        end = time.monotonic() + limit
        while not until():
            now = time.monotonic()
            assert now < end, f"runtime still busy after {limit} s; outputs so far: {outputs}"
            deadline = self.rt.next_deadline()
            wait = end - now if deadline is None else max(0.0, min(deadline, end) - now)
            ready, _, _ = select.select(self.rt.filenos(), [], [], wait)
            outputs.extend(self.rt.poll(ready))
        return outputs

    def act(self, action: str, limit: float = 20.0, **args: Any) -> list[Output]:
        """Validate, begin and drive one action to its end; every output it produced."""
        event = {"id": self.next_id, "source": "user", "action": action, "args": args}
        self.next_id += 1
        self.rt.validate({"action": action, "args": args})
        outputs = list(self.rt.begin(event))
        return outputs + self.pump(lambda: not self.rt.busy, limit)

    def run(self, command: str, limit: float = 20.0, **args: Any) -> dict[str, Any]:
        """Run ``command``; the final observation, its ``content`` being the whole output
        (the concatenation of the partial observations and the final one)."""
        outputs = self.act("run", limit, command=command, **args)
        events = [o.fields for o in outputs if isinstance(o, Event)]
        finals = [e for e in events if not e["extras"].get("partial")]
        assert len(finals) == 1 and finals[0] is events[-1], outputs
        return {**finals[0], "content": "".join(e["content"] for e in events)}


def _partial(output: Output) -> bool:
    return isinstance(output, Event) and bool(output.fields.get("extras", {}).get("partial"))


def _statuses(outputs: list[Output]) -> list[str]:
    return [o.id for o in outputs if isinstance(o, Status)]


def _session_processes(session_id: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose environment names this test session."""
    found = []
    needle = f"SESSIONACTORS_SESSION_ID={session_id}"
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and needle in "\0".join(
                f"{k}={v}" for k, v in proc.environ().items()
            ):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


SEEN = "/workspace"  # where the sandboxed shell sees its workspace


def host_pid(rt: LocalRuntime, pid: int) -> int:
    """The host pid of a process the sandboxed shell knows as ``pid`` (``$$``, ``$!``)."""
    shell = rt._shell
    if shell is None or shell.sandbox is None:
        return pid
    for proc in psutil.Process(shell.sandbox.init_pid).children(recursive=True):
        with open(f"/proc/{proc.pid}/status") as fh:
            nspid = [line.split()[-1] for line in fh if line.startswith("NSpid:")]
        if nspid == [str(pid)]:
            return proc.pid
    raise AssertionError(f"no process {pid} in the sandbox")


def _gone(pid: int, timeout: float = 2.0) -> bool:
    """True when ``pid`` is dead (a zombie counts: only its reaping is pending)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., tuple[LocalRuntime, Driver]]]:
    """Create started LocalRuntimes (``make(**options)``); all stopped and checked at teardown."""
    made: list[tuple[LocalRuntime, str]] = []

    def factory(
        state: dict[str, Any] | None = None,
        workspace: Path | None = None,
        unsandboxed: bool = False,
        **options: Any,
    ) -> tuple[LocalRuntime, Driver]:
        session_id = f"test-{uuid.uuid4().hex[:12]}"
        ctx = RuntimeContext(
            session_id=session_id,
            workspace=workspace or tmp_path / "ws",
            options=options,
            state=state or {},
        )
        rt = (LocalUnsandboxedRuntime if unsandboxed else LocalRuntime)(ctx)
        made.append((rt, session_id))
        statuses = _statuses(rt.start())
        assert statuses == ["STATUS$RUNTIME_STARTED"]
        return rt, Driver(rt)

    yield factory
    leftovers = []
    for rt, session_id in made:
        rt.stop()
        for proc in _session_processes(session_id):
            leftovers.append(f"{proc.pid} {proc.name()}")
            proc.kill()
    assert not leftovers, f"processes left behind: {leftovers}"


# -- the shell ------------------------------------------------------------------------


def test_state_persists_across_runs(make: Any, tmp_path: Path) -> None:
    rt, d = make()
    ws = tmp_path / "ws"
    assert (ws.stat().st_mode & 0o777) == 0o700
    assert d.run("mkdir -p sub/deeper && cd sub && export GREETING=hi && LOCAL=1")["extras"]["exit_code"] == 0
    obs = d.run('pwd; echo "$GREETING $LOCAL"; echo data > f.txt')
    assert obs["content"] == f"{SEEN}/sub\nhi 1\n"  # the sandbox's view of the workspace
    assert obs["observation"] == "run" and obs["cause"] == 1 and obs["source"] == "environment"
    assert d.run("cat f.txt; cd deeper")["content"] == "data\n"
    assert rt.state() == {"cwd": "sub/deeper"}
    assert (ws / "sub" / "f.txt").read_text() == "data\n"
    # declare at top level stays global; an alias defined in one run works in the next
    d.run("declare -a ARR=(x y); alias hello='echo alias-ok'")
    assert d.run('echo "${ARR[1]}"; hello')["content"] == "y\nalias-ok\n"


def test_exit_codes_and_errors_are_observations(make: Any) -> None:
    _, d = make()
    assert d.run("true")["extras"] == {"command": "true", "exit_code": 0}
    assert d.run("false")["extras"]["exit_code"] == 1
    assert d.run("(exit 7)")["extras"]["exit_code"] == 7
    missing = d.run("no-such-command-xyz")
    assert missing["extras"]["exit_code"] == 127 and "not found" in missing["content"]
    # stderr is merged; output without a final newline is kept as is
    assert d.run("echo out; echo err >&2; printf tail")["content"] == "out\nerr\ntail"
    # a syntax error is contained: it cannot swallow the end marker
    broken = d.run('echo "unbalanced')
    assert broken["extras"]["exit_code"] == 2 and "unexpected EOF" in broken["content"]
    assert d.run("echo fine")["content"] == "fine\n"


def test_validate_refuses_bad_actions(make: Any) -> None:
    rt, d = make()
    for action in (
        {"action": "run", "args": {"command": "  "}},
        {"action": "run", "args": {"command": 3}},
        {"action": "run", "args": {"command": "ls", "timeout": -1}},
        {"action": "run", "args": {"command": "ls", "timeout": "5"}},
        {"action": "run", "args": {"command": "ls", "timeout": True}},
        {"action": "explode", "args": {}},
        {"action": "write", "args": {"path": "a", "content": 5}},
        {"action": "read", "args": {"path": ""}},
    ):
        with pytest.raises(ActionError):
            rt.validate(action)
    assert d.act("message", content="hello") == []  # the local runtime has no agent


def test_timeout_interrupts_and_shell_stays_usable(make: Any) -> None:
    rt, d = make(timeout=30, kill_grace=5)
    d.run("export KEPT=yes; cd /tmp")
    start = time.monotonic()
    obs = d.run("echo started; sleep 30; echo never", timeout=0.5)
    assert time.monotonic() - start < 3  # SIGINT ended it: no kill_grace wait
    assert obs["extras"]["timed_out"] is True and obs["extras"]["exit_code"] == 130
    assert obs["content"].startswith("started\n") and "never" not in obs["content"]
    assert obs["content"].endswith("[command timed out after 0.5 s]\n")
    # same shell: variables and directory kept
    assert d.run("echo $KEPT; pwd")["content"] == "yes\n/tmp\n"
    # a loop is abandoned as a whole, like Ctrl-C in a terminal
    obs = d.run("for i in 1 2 3 4 5 6 7 8 9; do sleep 1; done; echo loop-finished", timeout=0.5)
    assert obs["extras"]["timed_out"] and "loop-finished" not in obs["content"]
    assert rt.state() == {"cwd": "/tmp"}


def test_command_ignoring_sigint_is_killed_after_grace(make: Any) -> None:
    rt, d = make(timeout=0.5, kill_grace=0.5)
    bg = host_pid(rt, int(d.run("sleep 1000 & echo $!")["content"]))
    d.run("export KEPT=yes")
    start = time.monotonic()
    obs = d.run("trap '' INT; echo stubborn; sleep 30")
    elapsed = time.monotonic() - start
    assert 0.9 < elapsed < 5
    assert obs["extras"]["timed_out"] is True and obs["extras"]["exit_code"] == 137
    assert obs["content"] == "stubborn\n[command timed out after 0.5 s]\n"
    # the shell survived (its variables too), and so did the earlier background job
    assert d.run("echo $KEPT")["content"] == "yes\n"
    assert psutil.Process(bg).status() != psutil.STATUS_ZOMBIE
    rt.stop()
    assert _gone(bg)


def test_stuck_shell_is_replaced_after_timeout(make: Any) -> None:
    _, d = make(timeout=0.3, kill_grace=0.2)
    d.run("mkdir -p keep && cd keep")
    outputs = d.act("run", command="trap '' INT; while :; do :; done")
    assert _statuses(outputs) == ["STATUS$RUNTIME_RESTARTED"]
    (obs,) = [o.fields for o in outputs if isinstance(o, Event)]
    assert obs["extras"]["timed_out"] is True and obs["extras"]["exit_code"] == -1
    assert "[command timed out after 0.3 s]" in obs["content"] and "new shell" in obs["content"]
    assert d.run("pwd")["content"].endswith("/keep\n")  # fresh shell, last known directory


def test_streaming_partial_observations(make: Any) -> None:
    _, d = make(stream_interval=0.2)
    outputs = d.act("run", command="for i in 1 2 3; do echo $i; sleep 0.3; done")
    events = [o.fields for o in outputs if isinstance(o, Event)]
    partials, final = events[:-1], events[-1]
    assert len(partials) >= 2 and all(_partial(Event(p)) for p in partials)
    assert all(p["cause"] == 0 and p["observation"] == "run" for p in events)
    assert "partial" not in final["extras"] and final["extras"]["exit_code"] == 0
    assert "".join(e["content"] for e in events) == "1\n2\n3\n"


def test_streaming_is_rate_limited(make: Any) -> None:
    _, d = make(stream_interval=0.25)
    script = "import sys, time\nfor i in range(1, 301):\n    print('line', i, flush=True); time.sleep(0.003)"
    outputs = d.act("run", command=f'python3 -c "{script}"')
    events = [o.fields for o in outputs if isinstance(o, Event)]
    assert len(events) <= 12  # ~1-2 s of output, at most one partial per 0.25 s
    assert "".join(e["content"] for e in events) == "".join(f"line {i}\n" for i in range(1, 301))


def test_output_cap(make: Any) -> None:
    _, d = make(max_output=1000, stream_interval=0.05)
    outputs = d.act("run", command="head -c 3000000 /dev/zero | tr '\\0' a; echo; echo after-cap")
    events = [o.fields for o in outputs if isinstance(o, Event)]
    text = "".join(e["content"] for e in events)
    assert text == "a" * 1000 + "\n[output truncated after 1000 bytes]\n"
    assert events[-1]["extras"]["exit_code"] == 0
    assert d.run("echo next")["content"] == "next\n"  # the pipe was drained up to the marker


def test_utf8_split_across_reads(make: Any) -> None:
    _, d = make()
    assert d.run("printf 'h\\xc3'; sleep 0.1; printf '\\xa9llo \\xe2\\x82\\xac\\n'")["content"] == "héllo €\n"


def test_interactive_commands_do_not_hang(make: Any) -> None:
    _, d = make(timeout=10)
    start = time.monotonic()
    assert d.run("read x; echo rc=$?")["content"] == "rc=1\n"
    assert d.run("cat")["extras"]["exit_code"] == 0
    py = d.run("python3 -c 'input()'")
    assert py["extras"]["exit_code"] == 1 and "EOFError" in py["content"]
    assert time.monotonic() - start < 5


def test_background_output_between_commands_is_dropped(make: Any) -> None:
    rt, d = make()
    assert d.run("(sleep 0.2; echo late) &")["content"] == ""
    ready, _, _ = select.select(rt.filenos(), [], [], 5)  # the late line arrives while idle
    assert ready and rt.poll(ready) == []  # drained, belongs to no command
    assert d.run("echo next")["content"] == "next\n"
    d.run("(sleep 0.2; echo late2) &")
    assert select.select(rt.filenos()[:1], [], [], 5)[0]  # not polled: still in the pipe...
    assert d.run("echo next2")["content"] == "next2\n"  # ...and dropped when the next command begins
    # prompts are not output, even when a command sets them
    assert d.run("PS1='$ '; PS2='> '; echo p")["content"] == "p\n"
    assert d.run("echo q")["content"] == "q\n"


# -- shell death, stop, restart -----------------------------------------------------


def test_exit_in_command_restarts_shell(make: Any, tmp_path: Path) -> None:
    _, d = make()
    d.run("mkdir -p sub && cd sub && export GONE=1 && echo kept > file")
    outputs = d.act("run", command="echo bye; exit 3")
    assert _statuses(outputs) == ["STATUS$RUNTIME_RESTARTED"]
    (obs,) = [o.fields for o in outputs if isinstance(o, Event)]
    assert obs["extras"]["exit_code"] == 3
    assert obs["content"].startswith("bye\n") and "shell exited with code 3" in obs["content"]
    # a fresh shell, same workspace and directory, new environment
    assert d.run('pwd; cat file; echo "${GONE:-unset}"')["content"] == f"{SEEN}/sub\nkept\nunset\n"
    # set -e then a failure, and a shell whose stdout is redirected away, end the same way
    for command in ("set -e; false", "exec >/dev/null; echo lost"):
        outputs = d.act("run", command=command)
        assert _statuses(outputs) == ["STATUS$RUNTIME_RESTARTED"]
        assert d.run("echo again")["content"] == "again\n"


def test_killed_shell_while_busy_and_while_idle(make: Any) -> None:
    rt, d = make()
    bash = host_pid(rt, int(d.run("echo $$")["content"]))
    d.rt.begin({"id": 50, "action": "run", "args": {"command": "sleep 30"}})
    os.kill(bash, signal.SIGKILL)
    outputs = d.pump(lambda: not rt.busy, 10)
    assert _statuses(outputs) == ["STATUS$RUNTIME_RESTARTED"]
    (obs,) = [o.fields for o in outputs if isinstance(o, Event)]
    assert obs["cause"] == 50 and obs["extras"]["exit_code"] == 137
    bash = host_pid(rt, int(d.run("echo $$")["content"]))  # a new shell
    # killed while idle: noticed from the watched fds, reported as a status
    os.kill(bash, signal.SIGKILL)
    seen: list[Output] = []
    seen += d.pump(lambda: bool(seen) or not rt.filenos(), 10)
    assert _statuses(seen) == ["STATUS$RUNTIME_RESTARTED"]
    assert d.run("echo back")["content"] == "back\n"


def test_stop_leaves_no_process(make: Any) -> None:
    rt, d = make()
    bash = host_pid(rt, int(d.run("echo $$")["content"]))
    pids = [int(p) for p in d.run("sleep 1000 & echo $!; setsid sleep 1001 & echo $!")["content"].split()]
    pids = [host_pid(rt, p) for p in pids]
    # a double-forked daemon in its own session, no longer a descendant of bash
    daemon = host_pid(rt, int(d.run("setsid bash -c 'sleep 1002 & echo $!' </dev/null")["content"]))
    for pid in (bash, *pids, daemon):
        assert psutil.pid_exists(pid)
    rt.begin({"id": 99, "action": "run", "args": {"command": "sleep 1003"}})  # stop while busy
    rt.stop()
    rt.stop()  # idempotent
    for pid in (bash, *pids, daemon):
        assert _gone(pid, 0.5), f"pid {pid} survived stop()"
    assert rt.filenos() == [] and not rt.busy


def test_restart_restores_cwd(make: Any, tmp_path: Path) -> None:
    rt, d = make()
    d.run("mkdir -p a/b && cd a/b && touch here")
    saved = rt.state()
    assert saved == {"cwd": "a/b"}
    rt.stop()
    _, d2 = make(state=saved)
    assert d2.run("pwd; ls")["content"] == f"{SEEN}/a/b\nhere\n"
    # a saved directory outside the workspace (or gone) is not restored
    for state in ({"cwd": "/tmp"}, {"cwd": "../.."}, {"cwd": "vanished"}):
        _, d3 = make(state=state)
        assert d3.run("pwd")["content"] == f"{SEEN}\n"


def test_start_failures(tmp_path: Path) -> None:
    for options in (
        {"shell": "/nonexistent/bash"},
        {"shell": "false"},
        {"timeout": "soon"},
        {"rlimit_as": -1},
    ):
        rt = LocalRuntime(RuntimeContext("bad", tmp_path / "ws", options=options))
        with pytest.raises(RuntimeStartError):
            rt.start()
        rt.stop()


# -- resource limits ----------------------------------------------------------------------


def test_rlimits_configured_and_enforced(make: Any) -> None:
    _, d = make(rlimit_cpu=77, rlimit_as=1024**3, rlimit_nproc=123, rlimit_fsize=4096)
    assert d.run("ulimit -t; ulimit -v; ulimit -u; ulimit -f")["content"].split() == [
        "77",
        "1048576",
        "123",
        "4",
    ]
    obs = d.run("head -c 10000 /dev/zero > big; echo rc=$?; stat -c %s big")
    assert obs["content"].splitlines()[-2:] == ["rc=153", "4096"]  # 128 + SIGXFSZ


def test_rlimits_defaults_and_disabled(make: Any) -> None:
    _, d = make()
    assert d.run("ulimit -t; ulimit -v; ulimit -u; ulimit -f")["content"].split() == [
        "3600",
        str(2 * 1024**2),
        "256",
        str(1024**2),
    ]
    import resource

    _, d2 = make(rlimit_cpu=0, rlimit_fsize=None)
    ours = resource.getrlimit(resource.RLIMIT_CPU)[1]
    expected = "unlimited" if ours == resource.RLIM_INFINITY else str(ours)
    assert d2.run("ulimit -t")["content"].strip() == expected


def _real_root() -> bool:
    """Root of the initial user namespace (not a rootless container's mapped root)."""
    try:
        uid_map = Path("/proc/self/uid_map").read_text().split()
    except OSError:
        return False
    return os.geteuid() == 0 and uid_map[:3] == ["0", "0", "4294967295"]


@pytest.mark.skipif(not _real_root(), reason="documents the behaviour observed as real root")
def test_rlimit_nproc_not_enforced_for_root(make: Any) -> None:
    # The kernel exempts root (and CAP_SYS_RESOURCE/CAP_SYS_ADMIN) from RLIMIT_NPROC:
    # the limit is set (ulimit -u shows it) but forks beyond it succeed. See docs/runtimes.md.
    _, d = make(rlimit_nproc=3, unsandboxed=True)  # in the sandbox the shell is not root
    obs = d.run("ulimit -u; for i in 1 2 3 4 5 6; do sleep 0.5 & done; jobs -p | wc -l; wait")
    assert obs["content"].split() == ["3", "6"]


# -- read and write -----------------------------------------------------------------------


def test_read_write_roundtrip(make: Any, tmp_path: Path) -> None:
    _, d = make()
    (write_obs,) = d.act("write", path="new/dir/notes.txt", content="héllo\n")
    assert write_obs.fields["observation"] == "write" and write_obs.fields["extras"] == {
        "path": "new/dir/notes.txt"
    }
    assert (tmp_path / "ws/new/dir/notes.txt").read_text() == "héllo\n"
    (read_obs,) = d.act("read", path="new/dir/notes.txt")
    assert read_obs.fields["observation"] == "read" and read_obs.fields["content"] == "héllo\n"
    # overwrite truncates; relative paths are relative to the workspace, not the shell's cwd
    d.run("cd new")
    d.act("write", path="new/dir/notes.txt", content="x")
    assert d.act("read", path="./new/../new/dir/notes.txt")[0].fields["content"] == "x"
    # a symlink inside the workspace is followed
    d.run("ln -s dir/notes.txt link")
    assert d.act("read", path="new/link")[0].fields["content"] == "x"


def _error(outputs: list[Output]) -> str:
    (obs,) = outputs
    assert isinstance(obs, Event) and obs.fields["observation"] == "error", outputs
    return str(obs.fields["content"])


def test_read_errors(make: Any, tmp_path: Path) -> None:
    _, d = make(max_file_size=100)
    assert "No such file" in _error(d.act("read", path="missing.txt"))
    d.run("printf '\\xff\\xfe\\x00binary' > blob; head -c 200 /dev/zero | tr '\\0' a > big; mkdir adir")
    assert "binary" in _error(d.act("read", path="blob"))
    assert "limit" in _error(d.act("read", path="big"))
    assert "not a regular file" in _error(d.act("read", path="adir"))
    assert "directory" in _error(d.act("read", path="."))


def test_write_size_limit(make: Any) -> None:
    rt, d = make(max_file_size=100)
    with pytest.raises(ActionError, match="limit"):
        rt.validate({"action": "write", "args": {"path": "f", "content": "é" * 51}})
    d.act("write", path="f", content="a" * 100)


def test_path_escapes_are_refused(make: Any, tmp_path: Path) -> None:
    rt, d = make()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s3cret")
    d.run(
        f"ln -s {outside} out; ln -s {outside}/secret secretlink; ln -s ../../.. up; ln -s {outside}/new dangling"
    )
    for path in (
        "/etc/passwd",
        str(outside / "secret"),
        "../outside/secret",
        "a/../../outside/secret",
        "out/secret",
        "secretlink",
        "up/etc/passwd",
        "dangling",
        "out",
    ):
        for action, args in (("read", {"path": path}), ("write", {"path": path, "content": "x"})):
            with pytest.raises(PathEscape):
                rt.validate({"action": action, "args": args})
    assert (outside / "secret").read_text() == "s3cret" and not (outside / "new").exists()


def test_path_swapped_for_symlink_after_validate(make: Any, tmp_path: Path) -> None:
    rt, d = make()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text("outside")
    d.run("mkdir sub && echo inside > sub/f")
    for action, args in (("read", {"path": "sub/f"}), ("write", {"path": "sub/f", "content": "x"})):
        rt.validate({"action": action, "args": args})  # fine now...
        d.run(f"mv sub sub.old && ln -s {outside} sub")  # ...then the directory becomes a symlink
        outputs = rt.begin({"id": 500, "action": action, "args": args})
        assert "outside the workspace" in _error(outputs)
        d.run("rm sub && mv sub.old sub")
    assert (outside / "f").read_text() == "outside"


# -- a third-party runtime through the entry point group ----------------------------------


def test_entry_point_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "site" / "example_runtime-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: example-runtime\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(
        "[sessionactors.runtimes]\nrulebot = example_runtime:RuleBotRuntime\n"
    )
    monkeypatch.syspath_prepend(str(EXAMPLE_DIR))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "example_runtime", raising=False)
    cls = load_runtime("rulebot")
    assert cls.__name__ == "RuleBotRuntime" and cls.name == "rulebot"
    rt = cls(RuntimeContext("rb", tmp_path / "ws", state={"messages": 4}))
    assert _statuses(rt.start()) == ["STATUS$RUNTIME_STARTED"]
    d = Driver(rt)
    (hello,) = d.act("message", content="Hello there!")
    assert hello.fields["source"] == "agent" and hello.fields["action"] == "message"
    assert hello.fields["args"]["content"] == "Hello! Send `run` actions to execute commands."
    assert hello.fields["cause"] == 0
    (count,) = d.act("message", content="count")
    assert "6 message" in count.fields["args"]["content"]  # restored state: 4 before, 2 now
    (ran,) = d.act("run", command="echo hi")
    assert ran.fields["content"] == "echo hi\n" and ran.fields["extras"]["exit_code"] == 0
    with pytest.raises(ActionError):
        rt.validate({"action": "read", "args": {"path": "x"}})
    assert rt.state() == {"messages": 6}
    rt.stop()


def test_docs_example_matches_test_data() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "runtimes.md").read_text()
    code = (EXAMPLE_DIR / "example_runtime.py").read_text()
    assert f"```python\n{code}```" in docs
