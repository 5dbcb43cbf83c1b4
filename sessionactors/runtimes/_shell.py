"""Operating-system helpers of the local runtime: its bash process, the marker protocol, files.

``ShellProcess`` owns one long-lived bash and nothing else: it starts it, hands
it one command at a time, reads its output without blocking, signals it and
kills everything it started. ``OutputReader`` turns the raw output of one
command into text, finds the end marker and applies the output cap.
``open_beneath`` opens a workspace file without following symlinks. The
runtime logic (deadlines, streaming, observations) lives in ``local.py``.

Why an *interactive* bash (``-i``) with job control off (``+m``): a command
must run inside the shell itself so that ``cd``/``export`` persist, yet a
timeout must stop the command without killing the shell. An interactive bash
reacts to SIGINT as a terminal user expects: it abandons the command line it
is executing (loops included) and goes back to reading input, where the end
marker of the command is waiting. With job control off, commands stay in the
shell's process group, so one ``killpg(SIGINT)`` reaches the shell and the
foreground command like a Ctrl-C; background jobs (``cmd &``) ignore SIGINT
because bash starts asynchronous commands with SIGINT ignored when job control
is off. ``--noediting`` keeps readline (and its echo) away from the pipe.

A command is written to a private file and run with
``. FILE </dev/null 2>&1`` on one input line; the next line prints the marker
``__SA_DONE_<nonce>_<exit code>_<cwd>\\0``. Sourcing (not ``eval`` nor a
function) keeps ``declare``/``cd``/``export`` at top level, contains syntax
errors of the command (an unbalanced quote cannot swallow the marker line) and
has no size limit; ``</dev/null`` stops commands from reading the protocol;
the marker is a separate line so that it still runs after a SIGINT abandoned
the command line; the nonce is passed as a printf argument so that ``set -x``
traces never contain the marker; the cwd is NUL-terminated because a path may
contain newlines but never NUL.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import resource
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

from ..errors import RuntimeStartError
from . import _procs
from .sandbox import INSIDE_CTL, Sandbox

__all__ = ["RLIMIT_OPTIONS", "OutputReader", "ShellProcess", "rlimits_from_options"]

# option name -> (resource, default); 0 or None in the options disables a limit.
RLIMIT_OPTIONS: dict[str, tuple[int, int]] = {
    "rlimit_cpu": (resource.RLIMIT_CPU, 3600),
    "rlimit_as": (resource.RLIMIT_AS, 2 * 1024**3),
    "rlimit_nproc": (resource.RLIMIT_NPROC, 256),
    "rlimit_fsize": (resource.RLIMIT_FSIZE, 1024**3),
}

MARKER_PREFIX = b"__SA_DONE_"
_TAG_VAR = "SESSIONACTORS_SHELL_TAG"


def rlimits_from_options(options: dict[str, Any]) -> list[tuple[int, int]]:
    """(resource, value) pairs to apply to a new shell; raises ValueError on a bad option."""
    limits = []
    for key, (res, default) in RLIMIT_OPTIONS.items():
        value = options.get(key, default)
        if value is None or value == 0:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"runtime option {key!r} must be a non-negative integer, not {value!r}")
        limits.append((res, value))
    return limits


class OutputReader:
    """The output of one command: decoded, capped, and cut at its end marker."""

    def __init__(self, nonce: str, max_output: int | None) -> None:
        self.marker = MARKER_PREFIX + nonce.encode() + b"_"
        self.max_output = max_output or None
        self.exit_code: int | None = None
        self.cwd: str | None = None
        self.taken = 0  # bytes of output accepted so far (the cap counts these)
        self.truncated = False
        self._pending = bytearray()  # raw bytes not yet known to be output or marker
        self._text: list[str] = []  # decoded output not yet handed out
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.ends_with_newline = True  # of everything handed out so far; for appended notes

    @property
    def done(self) -> bool:
        """True once the whole marker line has been read."""
        return self.exit_code is not None

    def feed(self, data: bytes) -> bool:
        """Add raw shell output; return True when the end marker is complete."""
        if self.done:
            return True
        self._pending += data
        i = self._pending.find(self.marker)
        if i < 0:
            # Hold back only a tail that could be the start of a marker split across reads.
            keep = _prefix_overlap(self._pending, self.marker)
            self._accept(bytes(self._pending[: len(self._pending) - keep]))
            del self._pending[: len(self._pending) - keep]
            return False
        self._accept(bytes(self._pending[:i]))
        del self._pending[:i]
        j = self._pending.find(b"\0", len(self.marker))
        if j < 0:
            return False
        code, _, cwd = bytes(self._pending[len(self.marker) : j]).partition(b"_")
        self.exit_code = int(code) if code.isdigit() else -1
        self.cwd = os.fsdecode(cwd)
        self._pending.clear()  # anything after the marker is a background job's late output
        return True

    def _accept(self, chunk: bytes) -> None:
        if self.truncated or not chunk:
            return
        if self.max_output is not None and self.taken + len(chunk) > self.max_output:
            chunk = chunk[: self.max_output - self.taken]
            self.taken += len(chunk)
            self._text.append(self._decoder.decode(chunk, final=True))
            self._text.append(f"\n[output truncated after {self.max_output} bytes]\n")
            self.truncated = True
            return
        self.taken += len(chunk)
        self._text.append(self._decoder.decode(chunk))

    def take_text(self) -> str:
        """Output decoded so far and not yet handed out (for a partial observation)."""
        text = "".join(self._text)
        self._text.clear()
        if text:
            self.ends_with_newline = text.endswith("\n")
        return text

    def finish(self) -> str:
        """Everything not yet handed out, including bytes held back: the command is over."""
        if not self.done:
            self._accept(bytes(self._pending))
            self._pending.clear()
        if not self.truncated:
            self._text.append(self._decoder.decode(b"", final=True))
        return self.take_text()

    @property
    def has_text(self) -> bool:
        return any(self._text)


class ShellProcess:
    """One bash process (its own session and process group) running commands one at a time."""

    def __init__(
        self,
        shell: str,
        cwd: str,
        env: dict[str, str],
        rlimits: list[tuple[int, int]],
        start_timeout: float = 5.0,
        sandbox: Sandbox | None = None,
    ) -> None:
        """Start bash in ``cwd`` and wait (bounded) until it has run its init line.

        With a ``sandbox``, ``cwd`` is relative to the workspace and bash runs inside it:
        ``proc`` is then bwrap (its exit status is bash's) and ``pid`` bash as the host sees it.
        """
        self.tag = secrets.token_hex(8)
        env = {**env, _TAG_VAR: self.tag}  # finds setsid'd/orphaned descendants at kill time
        self.sandbox = sandbox
        self._ctl_dir = tempfile.mkdtemp(prefix="sessionactors-shell-")
        self._cmd_file = os.path.join(self._ctl_dir, "command.sh")
        self._cmd_seen = os.path.join(INSIDE_CTL, "command.sh") if sandbox else self._cmd_file
        self.pidfd = -1
        self._closed = False
        argv = [shell, "--noprofile", "--norc", "--noediting", "-i", "+m"]
        kwargs: dict[str, Any] = {"cwd": cwd}
        try:
            if sandbox is not None:
                argv, kwargs = sandbox.wrap(argv, cwd)
                kwargs["cwd"] = "/"
            errors = open(self._errors, "wb") if sandbox else None
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                # The shell's own stderr carries prompts, "exit", the newline after a Ctrl-C and
                # traces of the marker line: noise. Commands get stdout as stderr (`2>&1` below).
                # bwrap's own errors are kept (a file, until bash's init line drops the rest).
                stderr=subprocess.DEVNULL if errors is None else errors,
                env=env,
                start_new_session=True,  # own session and group: killpg reaches everything it starts
                bufsize=0,
                **kwargs,
            )
            if errors is not None:
                errors.close()
        except (OSError, ValueError, RuntimeStartError) as exc:  # ValueError: a NUL in the env
            if sandbox is not None:
                sandbox.abort()
            shutil.rmtree(self._ctl_dir, ignore_errors=True)
            if isinstance(exc, RuntimeStartError):
                raise
            raise RuntimeStartError(
                f"cannot start shell {shell!r}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
        self.pid = self.pgid = self.proc.pid
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        # prlimit after the fact instead of preexec_fn (unsafe in threaded processes): bash runs
        # nothing of the user's before the init line below, so every command inherits the limits.
        try:
            with contextlib.suppress(AttributeError, OSError):  # pidfd: Linux >= 5.3
                self.pidfd = os.pidfd_open(self.proc.pid)
            if sandbox is not None:
                sandbox.started(self.proc, start_timeout)
            else:
                self._limit(rlimits)
            nonce = secrets.token_hex(8)
            # The trap removes the command file's directory when bash exits on its own: at EOF
            # on stdin, which is what it sees when its session actor was killed (no close()).
            # In a sandbox that directory is read-only and bash's stderr has served its purpose.
            init = "PS1=; PS2=; PS0=; unset PROMPT_COMMAND HISTFILE; set +H +m +o history; "
            if sandbox is None:
                init += f"trap {shlex.quote('rm -rf -- ' + shlex.quote(self._ctl_dir))} EXIT\n"
            else:  # the limits set by bash itself (prlimit from outside is refused, EPERM)
                init += "exec 2>/dev/null; " + _ulimits(rlimits) + "\n"
            self._write(init.encode() + self._marker_line(nonce))
            self._wait_ready(OutputReader(nonce, None), start_timeout)
            if sandbox is not None:
                # bwrap's init made the new session: the shell is in its group, and SIGINT
                # to that group spares init (a namespace's init ignores default-action signals).
                self.pid, self.pgid = sandbox.shell_pid(), sandbox.init_pid
                sandbox.confirm(self.pid)
                self._cmd_file = f"/proc/{self.pid}/root{self._cmd_seen}"  # in its own tmpfs
                shutil.rmtree(self._ctl_dir, ignore_errors=True)  # held bwrap's errors: done
        except (OSError, RuntimeStartError) as exc:
            said = self._bwrap_errors()
            self.close(grace=0)
            why = str(exc) if isinstance(exc, RuntimeStartError) else f"cannot start shell {shell!r}: {exc}"
            raise RuntimeStartError(f"{why}: {said}" if said else why) from None

    def _limit(self, rlimits: list[tuple[int, int]]) -> None:
        for res, value in rlimits:
            _soft, hard = resource.prlimit(self.pid, res)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.prlimit(self.pid, res, (value, value))

    @property
    def _errors(self) -> str:
        return os.path.join(self._ctl_dir, "stderr")

    def _bwrap_errors(self) -> str:
        """What bwrap printed when it failed (the sandbox only)."""
        if self.sandbox is None:
            return ""
        with contextlib.suppress(OSError), open(self._errors, "rb") as fh:
            return fh.read()[-500:].decode(errors="replace").strip()
        return ""

    def _wait_ready(self, reader: OutputReader, timeout: float) -> None:
        # A bounded wait (bash is ready within milliseconds) so that a broken shell
        # fails start() with RuntimeStartError instead of failing the first command.
        end = time.monotonic() + timeout
        while not reader.done:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise RuntimeStartError(f"the shell did not become ready within {timeout} s")
            select.select([self.fd], [], [], remaining)
            data, eof = self.read()
            if reader.feed(data):
                break
            if eof or not self.alive():
                said = reader.finish().strip()[-500:]
                why = f"the shell exited at start (code {self.returncode})"
                raise RuntimeStartError(f"{why}: {said}" if said else why)
        # What bash printed before ("no job control in this shell") is dropped with the reader.

    @staticmethod
    def _marker_line(nonce: str) -> bytes:
        return f'printf \'__SA_DONE_%s_%s_%s\\0\' {nonce} "$?" "$PWD"\n'.encode()

    def _write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)  # a few hundred bytes into an idle shell's empty pipe

    def send(self, command: str) -> str:
        """Start ``command`` in the shell; return the nonce of its end marker.

        Raises OSError (BrokenPipeError) when the shell is gone.
        """
        nonce = secrets.token_hex(8)
        with open(self._cmd_file, "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write(command if command.endswith("\n") else command + "\n")
        line = f". {shlex.quote(self._cmd_seen)} </dev/null 2>&1\n".encode()
        self._write(line + self._marker_line(nonce))
        return nonce

    def filenos(self) -> list[int]:
        """Stdout (output, EOF) and, where the kernel has it, a pidfd (readable at exit)."""
        return [self.fd] + ([self.pidfd] if self.pidfd >= 0 else [])

    def read(self, limit: int = 1 << 20) -> tuple[bytes, bool]:
        """Whatever output is available now (at most ``limit`` bytes) and whether stdout hit EOF."""
        chunks: list[bytes] = []
        size = 0
        while size < limit:  # bounded: a chatty command must not starve the actor
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return b"".join(chunks), not chunks and self._output_moved()
            except OSError:
                return b"".join(chunks), True
            if not data:
                return b"".join(chunks), True
            chunks.append(data)
            size += len(data)
        return b"".join(chunks), False

    def _output_moved(self) -> bool:
        """In a sandbox, bwrap holds the pipe open too: `exec >/dev/null` gives no EOF, so
        look whether the shell's stdout is still our pipe."""
        if self.sandbox is None or self.pid == self.proc.pid:
            return False
        try:
            return os.readlink(f"/proc/{self.pid}/fd/1") != f"pipe:[{os.fstat(self.fd).st_ino}]"
        except OSError:
            return False

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The shell's exit status in shell convention (128 + signal when killed)."""
        rc = self.proc.poll()
        return None if rc is None else (128 - rc if rc < 0 else rc)

    def children(self) -> set[int]:
        """Pids of the shell's direct children, and in a sandbox the orphans its init adopted
        (a cheap snapshot taken before each command)."""
        kids = set(_procs.children(self.pid))
        return kids | self.sandbox.orphans(self.pid) if self.sandbox is not None else kids

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the shell's process group (the shell and its foreground command)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGINT)

    def kill_new(self, before: set[int]) -> int:
        """SIGKILL the process trees of children started since ``before``; return how many."""
        roots = [pid for pid in self.children() if pid not in before]
        victims = _procs.descendants(roots)
        _procs.signal_all(victims, signal.SIGKILL)
        return len(victims)

    def close(self, grace: float = 0.5) -> None:
        """Kill the shell and everything it started, reap it, release its fds. Idempotent."""
        if self._closed:
            return
        self._closed = True
        victims = self._everything()
        _procs.signal_all(victims - {self.pid}, signal.SIGTERM)
        if self.proc.returncode is None:  # once reaped, its pid may belong to someone else
            # An interactive bash ignores SIGTERM; SIGHUP makes it exit (and hang up its jobs).
            _procs.signal_all({self.pid}, signal.SIGHUP)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        victims = {pid for pid in victims | self._everything() if _procs.exists(pid)}
        _procs.signal_all(victims, signal.SIGKILL)
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)  # also whatever forked since the scan
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=2)  # SIGKILLed: bounded and short
        if self.sandbox is not None:
            self.sandbox.close()  # its init: the kernel kills whatever is left in the namespace
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=2)
        _procs.wait_gone(victims, 1.0)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        for fh in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                fh.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        shutil.rmtree(self._ctl_dir, ignore_errors=True)

    def _everything(self) -> set[int]:
        """Every live process this shell started: its session, its group, their
        descendants, and anything carrying its environment tag (setsid'd daemons)."""
        tag = f"{_TAG_VAR}={self.tag}".encode()
        stats = _procs.all_stats()
        # The kernel does not reuse a pid while it names a live group or session, so
        # matching on them is safe even after bash itself was reaped; bash's own pid is not.
        found = {pid for pid, (_ppid, pgrp, sid) in stats.items() if self.pgid in (pgrp, sid)}
        if self.proc.returncode is None:
            found.add(self.pid)
        else:
            found.discard(self.pid)
        for pid in stats:
            if pid not in found:
                with contextlib.suppress(OSError), open(f"/proc/{pid}/environ", "rb") as fh:
                    if tag in fh.read().split(b"\0"):
                        found.add(pid)
        children: dict[int, list[int]] = {}
        for pid, (ppid, _pgrp, _sid) in stats.items():
            children.setdefault(ppid, []).append(pid)
        todo = list(found)
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        found.discard(os.getpid())
        return found


_ULIMIT_FLAGS = {resource.RLIMIT_CPU: ("t", 1), resource.RLIMIT_AS: ("v", 1024)}
_ULIMIT_FLAGS.update({resource.RLIMIT_NPROC: ("u", 1), resource.RLIMIT_FSIZE: ("f", 1024)})


def _ulimits(rlimits: list[tuple[int, int]]) -> str:
    """``ulimit`` commands setting ``rlimits`` (soft and hard); a limit the shell cannot
    raise stays at its lower hard value."""
    parts = []
    for res, value in rlimits:
        flag, unit = _ULIMIT_FLAGS[res]
        parts.append(f"ulimit -SH -{flag} {max(1, value // unit)} 2>/dev/null;")
    return " ".join(parts)


def _prefix_overlap(data: bytearray, marker: bytes) -> int:
    """Length of the longest tail of ``data`` that is a proper prefix of ``marker``."""
    for k in range(min(len(data), len(marker) - 1), 0, -1):
        if data.endswith(marker[:k]):
            return k
    return 0
