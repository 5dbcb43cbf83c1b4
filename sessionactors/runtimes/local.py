"""The local runtime: one persistent bash per live session, in the session's workspace.

State persists between ``run`` actions as in a terminal (``cd``, exported
variables, aliases, files). A command never blocks the session actor:
``begin()`` writes it to the shell and returns; output is read without
blocking when the shell's stdout is readable and reported by ``poll()``.

Streaming: while a command runs, its output is sent in ``run`` observations
with ``extras.partial: true`` (at most one per ``stream_interval`` seconds);
the final ``run`` observation carries the output not yet sent plus
``extras.exit_code``. Concatenating the ``content`` of every ``run``
observation with the same ``cause`` gives the whole output (capped at
``max_output`` bytes, where ``[output truncated after N bytes]`` marks the cut).

Timeouts (``timeout`` option, or the action's ``timeout`` arg): SIGINT to the
shell's process group like a Ctrl-C; after ``kill_grace`` seconds SIGKILL to
the processes the command started; if the shell still does not come back (a
builtin loop that ignores SIGINT) the shell is replaced. The final
observation then has ``extras.timed_out: true`` and a ``[command timed out
after N s]`` line. A shell that dies (``exit``, killed) ends the running
command with an observation and a ``STATUS$RUNTIME_RESTARTED`` status; the
next command starts a fresh shell in the last known directory.

``read``/``write`` are synchronous, relative to the workspace, and never leave
it (symlinks included).

The shell runs in a ``Sandbox`` (``sandbox.py``; docs/security.md, "Session sandbox"):
its own namespaces, an unprivileged uid, the workspace at ``/workspace``, cgroup limits.
A command that hits a limit ends with ``exit_code`` 137 and a ``[killed: ... limit ...]``
line. ``local-unsandboxed`` is the explicit opt-out: the shell then runs with the
daemon's uid, limited only by rlimits, and that is not a security boundary.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import ActionError, ConfigError, RuntimeStartError
from ._localfiles import LocalFiles
from ._shell import OutputReader, ShellProcess, rlimits_from_options
from .base import Output, RuntimeContext, Status, error_observation, observation
from .sandbox import INSIDE_WORKSPACE, SANDBOX_PATH, SandboxSettings, preflight

__all__ = ["LocalRuntime", "LocalUnsandboxedRuntime"]

_LIVENESS_INTERVAL = 1.0  # without a pidfd, how often a busy runtime checks that bash lives
_LIMITS_INTERVAL = 0.5  # how often a running command's sandbox is checked for a limit hit
_LIMIT_KILL_DELAY = 0.2  # from the Ctrl-C of a command over a limit to the SIGKILL stage


@dataclass
class _Options:
    """The ``[runtime]`` options this runtime understands, checked once."""

    shell: str = "bash"
    timeout: float | None = 120.0
    kill_grace: float = 2.0
    stream_interval: float | None = 0.2
    max_output: int | None = 1_000_000
    max_file_size: int = 1_000_000
    start_timeout: float = 5.0
    env: dict[str, str] = field(default_factory=dict)
    rlimits: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def parse(cls, options: dict[str, Any]) -> _Options:
        def number(key: str, default: float | None, optional: bool = True) -> Any:
            value = options.get(key, default)
            if value is None or (optional and value in (0, math.inf)):
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"runtime option {key!r} must be a non-negative number, not {value!r}")
            return value

        env = options.get("env", {})
        if not isinstance(env, dict):
            raise ValueError("runtime option 'env' must be a table of strings")
        return cls(
            shell=str(options.get("shell", "bash")),
            timeout=number("timeout", 120.0),
            kill_grace=number("kill_grace", 2.0, optional=False) or 0.0,
            stream_interval=number("stream_interval", 0.2),
            max_output=number("max_output", 1_000_000),
            max_file_size=number("max_file_size", 1_000_000, optional=False) or 0,
            start_timeout=number("start_timeout", 5.0, optional=False) or 5.0,
            env={str(k): str(v) for k, v in env.items()},
            rlimits=rlimits_from_options(options),
        )


@dataclass
class _Command:
    """The ``run`` action in progress."""

    cause: int
    command: str
    timeout: float | None
    reader: OutputReader
    before: set[int]  # the shell's children before the command: spared by the SIGKILL stage
    last_flush: float
    flush_at: float | None = None  # when buffered output goes out as a partial observation
    stage: int = 0  # 0 running, 1 interrupted, 2 its processes killed
    stage_at: float | None = None  # when to move to the next stage
    timed_out: bool = False
    interrupted: bool = False  # by change_agent_state (stopped/paused), not by its timeout
    killed: str | None = None  # the sandbox limit that stopped it ("killed: memory limit ...")
    check_at: float | None = None  # when to check the sandbox's limits next


class LocalRuntime(LocalFiles):
    """A persistent bash per session; see the module docstring for the behaviour."""

    name = "local"
    sandboxed = True

    @classmethod
    def preflight(cls, options: dict[str, Any]) -> list[str]:
        """Before the daemon starts: RuntimeStartError/ConfigError when sessions cannot be
        sandboxed here (naming the package and the setting); warnings to log otherwise."""
        _Options.parse(options)
        return preflight(SandboxSettings.parse(options))

    def __init__(self, ctx: RuntimeContext) -> None:
        super().__init__(ctx)
        self._shell: ShellProcess | None = None
        self._cmd: _Command | None = None
        self._workspace = os.path.realpath(ctx.workspace)
        saved = ctx.state.get("cwd")
        self._cwd: str = saved if isinstance(saved, str) else "."
        self._option_error: str | None = None
        try:
            self._opts = _Options.parse(ctx.options)
        except ValueError as exc:  # reported by start(), where a refusal has a wire answer (503)
            self._opts, self._option_error = _Options(), str(exc)
        self._sandbox: SandboxSettings | None = None
        if self.sandboxed:
            try:
                self._sandbox = SandboxSettings.parse(ctx.options)
            except ConfigError as exc:
                self._option_error = str(exc)
        self._root_seen = INSIDE_WORKSPACE if self.sandboxed else self._workspace  # the shell's view

    # -- lifecycle ---------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._cmd is not None

    def start(self) -> list[Output]:
        if self._option_error:
            raise RuntimeStartError(self._option_error)
        try:
            os.makedirs(self.ctx.workspace, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise RuntimeStartError(f"cannot create the workspace: {exc}") from None
        self._workspace = os.path.realpath(self.ctx.workspace)
        if not self.sandboxed:
            self._root_seen = self._workspace
        elif (sandbox := self._new_sandbox()) is not None:
            try:
                sandbox.own_workspace()
            except OSError as exc:
                raise RuntimeStartError(f"cannot give the workspace to the sandbox: {exc}") from None
        if self._shell is None or not self._shell.alive():
            self._spawn()
        return [Status("STATUS$RUNTIME_STARTED", f"Runtime started: {self._opts.shell} in the workspace")]

    def _spawn(self) -> None:
        """Start a shell in the last known directory (the workspace if that is gone or outside)."""
        cwd = os.path.realpath(os.path.join(self._workspace, self._cwd))
        if not (self._inside(cwd) and os.path.isdir(cwd)):
            cwd = self._workspace
        sandbox = self._new_sandbox()
        env = {
            "PATH": SANDBOX_PATH if sandbox else os.environ.get("PATH", os.defpath),
            "HOME": self._root_seen,
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "TERM": "dumb",
            "PAGER": "cat",
            "GIT_PAGER": "cat",
            "HISTFILE": "",
            "SESSIONACTORS_SESSION_ID": self.ctx.session_id,
        }
        # Only an allow-list of the daemon's environment: its secrets stay out of the sandbox.
        env.update({k: os.environ[k] for k in ("USER", "LOGNAME", "LC_ALL", "TZ") if k in os.environ})
        if sandbox is not None:
            env.update(USER="user", LOGNAME="user")
        env.update(self._opts.env)
        rel = os.path.relpath(cwd, self._workspace)
        self._shell = ShellProcess(
            self._opts.shell, rel if sandbox else cwd, env, self._rlimits(), self._opts.start_timeout, sandbox
        )
        self._cwd = rel

    def _rlimits(self) -> list[tuple[int, int]]:
        """The rlimits; in a sandbox one file can never be larger than the workspace cap."""
        cap = self._sandbox.workspace_limit_mb if self._sandbox else None
        if not cap:
            return self._opts.rlimits
        fsize = [(r, v) for r, v in self._opts.rlimits if r == resource.RLIMIT_FSIZE]
        limit = min([cap * 1024**2, *(v for _r, v in fsize)])
        return [(r, v) for r, v in self._opts.rlimits if r != resource.RLIMIT_FSIZE] + [
            (resource.RLIMIT_FSIZE, limit)
        ]

    def state(self) -> dict[str, Any]:
        return {"cwd": self._cwd}

    def stop(self) -> None:
        shell, self._shell, self._cmd = self._shell, None, None
        if shell is not None:
            shell.close(grace=0.5)

    # -- actions -------------------------------------------------------------------
    def validate(self, action: dict[str, Any]) -> None:
        super().validate(action)
        name, args = action["action"], action["args"]
        if name == "run":
            command = args.get("command")
            if not isinstance(command, str) or not command.strip():
                raise ActionError("'command' must be a non-empty string")
            timeout = args.get("timeout")
            if timeout is not None and (
                isinstance(timeout, bool)
                or not isinstance(timeout, (int, float))
                or not math.isfinite(timeout)
                or timeout <= 0
            ):
                raise ActionError("'timeout' must be a positive number of seconds")
        elif name in ("read", "write"):
            self._resolve(args.get("path"))
            if name == "write":
                content = args.get("content")
                if not isinstance(content, str):
                    raise ActionError("'content' must be a string")
                try:
                    size = len(content.encode("utf-8"))
                except UnicodeEncodeError:
                    raise ActionError("'content' is not encodable as UTF-8") from None
                if size > self._opts.max_file_size:
                    raise ActionError(f"'content' is {size} bytes, over the {self._opts.max_file_size} limit")

    def begin(self, action_event: dict[str, Any]) -> list[Output]:
        name, args, cause = action_event["action"], action_event["args"], action_event["id"]
        if name == "run":
            return self._begin_run(args["command"], args.get("timeout"), cause)
        if name == "read":
            return [self._read(args["path"], cause)]
        if name == "write":
            return [self._write(args["path"], args["content"], cause)]
        return []  # message: the local runtime has no agent

    def _begin_run(self, command: str, timeout: float | None, cause: int) -> list[Output]:
        out: list[Output] = []
        if self._shell is not None and not self._shell.alive():
            out += self._bury_shell()  # died while idle and no pidfd told us
        try:
            if self._shell is None:
                self._spawn()
            assert self._shell is not None
            self._shell.read()  # drop what background jobs wrote since the last command ended
            if self._shell.sandbox is not None:
                self._shell.sandbox.limit_hit(workspace=False)  # count hits from here on only
            before = self._shell.children()
            nonce = self._shell.send(command)
        except (RuntimeStartError, OSError) as exc:
            out += self._bury_shell()
            return [
                *out,
                error_observation(f"Cannot run the command: the shell is unavailable: {exc}", cause),
            ]
        now = time.monotonic()
        timeout = timeout if timeout is not None else self._opts.timeout
        self._cmd = _Command(
            cause=cause,
            command=command,
            timeout=timeout,
            reader=OutputReader(nonce, self._opts.max_output),
            before=before,
            last_flush=now,
            stage_at=now + timeout if timeout else None,
            check_at=now + _LIMITS_INTERVAL if self._sandbox else None,
        )
        return out

    # -- progress --------------------------------------------------------------------
    def filenos(self) -> list[int]:
        # Watched even when idle: to drain background jobs' output and to notice a dead shell.
        return self._shell.filenos() if self._shell is not None else []

    def next_deadline(self) -> float | None:
        cmd = self._cmd
        if cmd is None or self._shell is None:
            return None
        times = [t for t in (cmd.stage_at, cmd.flush_at, cmd.check_at) if t is not None]
        if self._shell.pidfd < 0:
            times.append(time.monotonic() + _LIVENESS_INTERVAL)
        return min(times) if times else None

    def poll(self, ready: list[int]) -> list[Output]:
        shell, cmd = self._shell, self._cmd
        if shell is None:
            return []
        data, eof = shell.read()
        if cmd is None:
            # Idle: output now comes from background jobs and belongs to no command.
            return self._bury_shell() if eof or not shell.alive() else []
        if cmd.reader.feed(data):
            return self._finish(cmd)
        if eof or not shell.alive():
            return self._bury_shell()
        now = time.monotonic()
        out: list[Output] = []
        if cmd.check_at is not None and now >= cmd.check_at:
            self._check_limits(cmd, shell)
            cmd.check_at = now + _LIMITS_INTERVAL
        if cmd.stage_at is not None and now >= cmd.stage_at:
            out += self._escalate(cmd, now)
        if self._cmd is cmd and self._opts.stream_interval and cmd.reader.has_text:
            if cmd.flush_at is None:
                cmd.flush_at = cmd.last_flush + self._opts.stream_interval
            if now >= cmd.flush_at:
                cmd.last_flush, cmd.flush_at = now, None
                extras = {"command": cmd.command, "partial": True}
                out.append(observation("run", cmd.reader.take_text(), cmd.cause, extras, "Command output"))
        return out

    def interrupt(self) -> list[Output]:
        """Ctrl-C the running command now: the timeout's path (SIGINT, then SIGKILL, then a
        new shell), started early."""
        cmd = self._cmd
        if cmd is not None and self._shell is not None and cmd.stage == 0:
            cmd.interrupted = True
            self._shell.interrupt()
            cmd.stage, cmd.stage_at = 1, time.monotonic() + self._opts.kill_grace
        return []

    def _escalate(self, cmd: _Command, now: float) -> list[Output]:
        """The command's deadline passed: Ctrl-C, then SIGKILL, then a new shell."""
        assert self._shell is not None
        grace = self._opts.kill_grace
        if cmd.stage == 0:
            cmd.timed_out = True
            cmd.interrupted = False
            self._shell.interrupt()
            cmd.stage, cmd.stage_at = 1, now + grace
        elif cmd.stage == 1:
            if cmd.killed and "process limit" in cmd.killed and self._shell.sandbox is not None:
                self._shell.sandbox.kill_all_but({self._shell.pid})  # a fork bomb's orphans too
            self._shell.kill_new(cmd.before)
            cmd.stage, cmd.stage_at = 2, now + max(grace, 1.0)
        else:  # the shell itself is stuck (e.g. a builtin loop under `trap '' INT`)
            return self._bury_shell("the shell did not return after SIGKILL and was stopped")
        return []

    def _finish(self, cmd: _Command) -> list[Output]:
        self._cmd = None
        reader = cmd.reader
        if self._shell is not None:  # 153: SIGXFSZ, a file as large as the workspace cap
            self._check_limits(cmd, self._shell, final=reader.exit_code == 153)
        if reader.cwd:  # empty after `unset PWD`: keep the last known one
            self._cwd = self._relative(reader.cwd)
        extras: dict[str, Any] = {"command": cmd.command, "exit_code": reader.exit_code}
        text = reader.finish()
        if cmd.interrupted:
            extras["interrupted"] = True
        if cmd.killed:
            extras["exit_code"] = 137
            text += self._note(reader, text, cmd.killed)
        if cmd.timed_out:
            extras["timed_out"] = True
            text += self._note(reader, text, f"command timed out after {cmd.timeout:g} s")
        return [observation("run", text, cmd.cause, extras, "Command finished")]

    def _bury_shell(self, why: str | None = None) -> list[Output]:
        """The shell is dead (or must be): clean up after it, end the running command.

        Never raises: a dead shell is a fact to report, and the next ``run`` starts a new one.
        """
        shell, cmd = self._shell, self._cmd
        self._shell, self._cmd = None, None
        if shell is None:
            return []
        data, eof = shell.read()  # its last output, e.g. of `echo bye; exit 3`
        if eof and shell.alive():
            with contextlib.suppress(Exception):
                shell.proc.wait(timeout=0.2)  # stdout closed: it is exiting; get its real status
        code = shell.returncode
        shell.close(grace=0)  # its background jobs go with it: nothing untracked survives
        if code is None and why is None:  # alive but its stdout closed (`exec >/dev/null`)
            why = "the shell closed its output and was stopped"
        exit_code = code if code is not None and why is None else -1
        said = why or f"the shell exited with code {exit_code}"
        out: list[Output] = []
        if cmd is not None:
            cmd.reader.feed(data)
            text = cmd.reader.finish()
            extras: dict[str, Any] = {"command": cmd.command, "exit_code": exit_code}
            if cmd.timed_out:
                extras["timed_out"] = True
                text += self._note(cmd.reader, text, f"command timed out after {cmd.timeout:g} s")
            text += self._note(cmd.reader, text, f"{said}; the next command starts a new shell")
            out.append(observation("run", text, cmd.cause, extras, "Command finished"))
        out.append(
            Status(
                "STATUS$RUNTIME_RESTARTED", f"{said[0].upper()}{said[1:]}; the next command starts a new one"
            )
        )
        return out

    def _check_limits(self, cmd: _Command, shell: ShellProcess, final: bool | None = None) -> None:
        """Did the sandbox hit a limit? Then name it, and stop what the limit does not stop
        itself: a fork bomb's processes (all but the shell), a disk filler (the command)."""
        sandbox = shell.sandbox
        if sandbox is None or cmd.killed:
            return
        hit = sandbox.limit_hit(workspace=final is None, file_size=bool(final))
        cmd.killed = hit
        if hit is not None and final is None and cmd.stage == 0:
            # Still running: a Ctrl-C now (the shell abandons the command line, which a
            # SIGKILL of its child would not make it do), the SIGKILL stage shortly after.
            shell.interrupt()
            cmd.stage, cmd.stage_at = 1, time.monotonic() + _LIMIT_KILL_DELAY

    @staticmethod
    def _note(reader: OutputReader, text: str, note: str) -> str:
        """``[note]`` on a line of its own after the output handed out so far."""
        ends = text.endswith("\n") if text else reader.ends_with_newline
        return ("" if ends else "\n") + f"[{note}]\n"


class LocalUnsandboxedRuntime(LocalRuntime):
    """The explicit opt-out: the local runtime without its sandbox (the daemon's uid and
    view of the host, rlimits only). Not a security boundary; the daemon warns at start."""

    name = "local-unsandboxed"
    sandboxed = False

    @classmethod
    def preflight(cls, options: dict[str, Any]) -> list[str]:
        _Options.parse(options)
        return [
            'runtime = "local-unsandboxed": session shells run with the daemon\'s uid and see the '
            "whole host (its secret, every workspace, its ports); this is not a security boundary"
        ]
