"""The session sandbox: one session's shell inside Linux namespaces (bubblewrap) and cgroups.

What it is for: the default ``local`` runtime starts its bash through a ``Sandbox`` so that
whatever runs in a session can touch nothing but that session's workspace. A plugin
runtime gets the same sandbox by building one from its ``RuntimeContext`` and starting its
processes with ``Sandbox.wrap``/``Sandbox.started`` (docs/runtimes.md). Imports ``errors``,
``cgroups`` and ``_procs``.

What the sandboxed process gets (docs/security.md, "Session sandbox"):

- an unprivileged uid of its own, picked from a range by the session id
  (``sandbox_uid_base`` + hash mod ``sandbox_uid_count``), no capabilities, no new
  privileges (``setpriv``); the workspace and the files the daemon writes there are owned
  by that uid, and the daemon (root) reads and writes them as before;
- its own mount namespace: ``/usr`` (and the ``/bin``, ``/lib*``, ``/sbin`` links) read-only,
  a few files of ``/etc``, its workspace read-write at ``/workspace``, a private ``/tmp``
  (tmpfs, ``tmp_size_mb``), its own ``/proc`` and a minimal ``/dev``; nothing else of the
  host (not the data dir, the bridge socket, ``/root``, ``/home``, the host's ``/tmp``);
- its own PID namespace: bwrap is its init; when init dies the kernel kills everything in
  it, and ``--die-with-parent`` kills init when the session's process dies (even by SIGKILL);
- its own network namespace: loopback only (``network = "none"``), or outbound through
  pasta (``network = "outbound"``, see ``_net``) that never reaches the host's loopback;
- its own IPC and UTS namespaces, and a new session (no TIOCSTI into a terminal);
- a ``CgroupSet`` with the memory, process and CPU limits where cgroups are usable, and
  rlimits otherwise.

Why bwrap runs as root and ``setpriv`` drops to the session's uid, rather than bwrap's
own user namespace (which would also allow ``--disable-userns``): bwrap 0.8 resolves every
bind source with ``realpath`` as the sandbox's uid, and that uid cannot traverse the
daemon's 0700 data dir to reach the workspace (``--bind-fd`` is resolved the same way).
The cost is one more ``exec`` and that the shell may create user namespaces of its own
(kernel attack surface, no host privilege). A daemon that is not root gets bwrap's user
namespace instead: the shell is uid 1000 inside, the daemon's uid outside.

Why prlimit is not used from outside: the kernel refuses it (EPERM) for a process in the
sandbox; the shell sets its rlimits itself with ``ulimit`` before any command runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, RuntimeStartError
from . import _procs
from ._sandboxfs import INSIDE_CTL, cgroup_name, etc_dir, read_info, workspace_usage
from .cgroups import CgroupError, CgroupLimits, CgroupSet, available

__all__ = ["INSIDE_CTL", "INSIDE_WORKSPACE", "Sandbox", "SandboxSettings", "preflight", "workspace_usage"]

INSIDE_WORKSPACE = "/workspace"  # as OpenHands
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_TOP = ("bin", "lib", "lib32", "lib64", "libx32", "sbin")


@dataclass(frozen=True)
class SandboxSettings:
    """The sandbox options of the ``[runtime]`` table, checked (docs/configuration.md)."""

    network: str = "none"
    memory_limit_mb: int | None = 512
    pids_limit: int | None = 256
    cpu_limit: float | None = 1.0
    workspace_limit_mb: int | None = 1024
    tmp_size_mb: int = 64
    uid_base: int = 200_000
    uid_count: int = 65_536
    cgroups: str = "auto"  # auto: use them when usable; required: refuse to start without; off
    bwrap: str = "bwrap"

    @classmethod
    def parse(cls, options: dict[str, Any]) -> SandboxSettings:
        """Raise ConfigError naming the key for a bad value."""

        def num(key: str, default: Any, kind: type = int, minimum: float = 1) -> Any:
            value = options.get(key, default)
            if value is None or value == 0:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
                raise ConfigError(f"runtime.{key}", f"must be a number, not {value!r}")
            if value < minimum:
                raise ConfigError(f"runtime.{key}", f"must be at least {minimum} (or 0 for no limit)")
            return kind(value)

        network = options.get("network", "none")
        if network not in ("none", "outbound"):
            raise ConfigError("runtime.network", f'must be "none" or "outbound", not {network!r}')
        cgroups = options.get("cgroups", "auto")
        if cgroups not in ("auto", "required", "off"):
            raise ConfigError("runtime.cgroups", f'must be "auto", "required" or "off", not {cgroups!r}')
        settings = cls(
            network=network,
            memory_limit_mb=num("memory_limit_mb", 512, minimum=16),
            pids_limit=num("pids_limit", 256, minimum=8),
            cpu_limit=num("cpu_limit", 1.0, float, minimum=0.01),
            workspace_limit_mb=num("workspace_limit_mb", 1024),
            tmp_size_mb=num("tmp_size_mb", 64) or 64,
            uid_base=num("sandbox_uid_base", 200_000),
            uid_count=num("sandbox_uid_count", 65_536),
            cgroups=cgroups,
            bwrap=str(options.get("bwrap", "bwrap")),
        )
        if settings.uid_base + settings.uid_count > 2**32 - 2:
            raise ConfigError("runtime.sandbox_uid_base", "the uid range must end below 2^32 - 1")
        return settings

    def uid_for(self, session_id: str) -> int:
        """The session's uid: stable across activations, so its files stay its own."""
        digest = hashlib.sha256(session_id.encode()).digest()
        return self.uid_base + int.from_bytes(digest[:8], "big") % self.uid_count

    @property
    def limits(self) -> CgroupLimits:
        mem = self.memory_limit_mb * 1024**2 if self.memory_limit_mb else None
        return CgroupLimits(memory_bytes=mem, pids=self.pids_limit, cpu=self.cpu_limit)


def preflight(settings: SandboxSettings) -> list[str]:
    """Check, before the daemon starts, that sandboxes can be made here.

    Raises RuntimeStartError naming the package and the setting when they cannot; returns
    warnings (e.g. no cgroups: rlimits instead) for the daemon to log.
    """
    optout = 'or run without the sandbox with runtime = "local-unsandboxed" (not a security boundary)'
    path = shutil.which(settings.bwrap)
    if path is None:
        raise RuntimeStartError(
            f"the session sandbox needs bubblewrap: {settings.bwrap!r} is not installed "
            f"(Debian/Ubuntu: apt-get install bubblewrap; setting: runtime.bwrap), {optout}"
        )
    if settings.network == "outbound" and shutil.which("pasta") is None:
        raise RuntimeStartError(
            'runtime.network = "outbound" needs pasta (Debian/Ubuntu: apt-get install passt), '
            'or set runtime.network = "none"'
        )
    import dataclasses
    import subprocess
    import tempfile

    # The probe is a real sandbox (without cgroups, checked below): what fails here would
    # fail every session.
    with tempfile.TemporaryDirectory(prefix="sessionactors-probe-") as tmp:
        ws = os.path.join(tmp, "ws")
        os.makedirs(ws)
        probe_box = Sandbox(dataclasses.replace(settings, cgroups="off"), "preflight", ws)
        try:
            probe_box.own_workspace()
            argv, kwargs = probe_box.wrap(["/bin/sh", "-c", "exit 0"], ".")
            with subprocess.Popen(argv, stderr=subprocess.PIPE, **kwargs) as proc:
                probe_box.started(proc, 10)
                _out, err = proc.communicate(timeout=10)
        except (OSError, subprocess.SubprocessError, RuntimeStartError) as exc:
            probe_box.close()
            raise RuntimeStartError(
                f"cannot start a sandbox with bubblewrap ({path}): {exc}; {optout}"
            ) from None
        probe_box.close()
    if proc.returncode != 0:
        said = err.decode(errors="replace").strip()[-300:]
        # Say what applies to this daemon: as root bwrap needs the namespaces themselves
        # (a container without CAP_SYS_ADMIN, or a seccomp profile, forbids them); unprivileged,
        # it needs user namespaces first.
        need = (
            "mount, PID and network namespaces, which this host or container forbids to root "
            "(a container needs CAP_SYS_ADMIN and a seccomp profile that allows unshare)"
            if os.geteuid() == 0
            else "unprivileged user namespaces (sysctl user.max_user_namespaces > 0, and on "
            "Debian/Ubuntu kernel.unprivileged_userns_clone = 1)"
        )
        raise RuntimeStartError(
            f"bubblewrap cannot create the sandbox's namespaces here ({said}): it needs {need}; {optout}"
        )
    warnings = []
    if settings.cgroups != "off":
        why = available()
        if why is not None:
            if settings.cgroups == "required":
                raise RuntimeStartError(f'runtime.cgroups = "required" but {why}')
            warnings.append(f"session limits use rlimits, not cgroups: {why}")
    return warnings


class Sandbox:
    """One sandbox start: the bwrap command line, its setup after the fork, its teardown."""

    def __init__(self, settings: SandboxSettings, session_id: str, workspace: str) -> None:
        self.settings = settings
        self.session_id = session_id
        self.workspace = workspace
        self.privileged = os.geteuid() == 0  # else: no uid of its own, see wrap()
        self.uid = settings.uid_for(session_id) if self.privileged else os.geteuid()
        self.cgroups: CgroupSet | None = None
        self.init_pid = 0  # the sandbox's init (bwrap, pid 1 inside), as the host sees it
        self.net: Any = None  # the pasta process of an outbound sandbox
        self._fds: list[int] = []
        self._info_r = -1
        self._moving: Callable[[], None] | None = None  # waits for the cgroup moves
        self.cgroup_error: str | None = None

    # -- before the fork -------------------------------------------------------------
    def own_workspace(self) -> None:
        """Give the workspace to the sandbox uid (files the daemon wrote there as well)."""
        st = os.stat(self.workspace)
        if not self.privileged or (st.st_uid == self.uid and st.st_gid == self.uid):
            return
        for folder, dirs, files in os.walk(self.workspace):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    os.lchown(os.path.join(folder, name), self.uid, self.uid)
        os.chown(self.workspace, self.uid, self.uid)
        os.chmod(self.workspace, 0o700)

    def give(self, path: str) -> None:
        """A file or directory the daemon made in the workspace now belongs to the sandbox."""
        with contextlib.suppress(OSError):
            os.lchown(path, self.uid, self.uid)

    def wrap(self, argv: list[str], cwd: str) -> tuple[list[str], dict[str, Any]]:
        """The command line running ``argv`` in the sandbox (in ``cwd``, relative to the
        workspace) and the ``subprocess.Popen`` arguments it needs."""
        s = self.settings
        info_r, info_w = os.pipe()
        self._fds = [info_w]
        self._info_r = info_r
        if self.privileged:
            # bwrap runs as root and drops to the session's uid with setpriv as the last step:
            # see the module docstring for why not bwrap's own user namespace.
            cmd = [s.bwrap, "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:  # a daemon that is not root: a user namespace, mapped to the daemon's own uid
            cmd = [s.bwrap, "--unshare-user", "--uid", "1000", "--gid", "1000", "--disable-userns"]
        cmd += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        cmd += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
        cmd += ["--ro-bind", "/usr", "/usr"]
        cmd += ["--perms", "0755", "--dir", "/run"]
        for top in _TOP:
            host = "/" + top
            if os.path.islink(host):
                cmd += ["--symlink", os.readlink(host), host]
            elif os.path.isdir(host):
                cmd += ["--ro-bind", host, host]
        # The control files live in the sandbox's own tmpfs (the daemon writes them through
        # /proc/<pid>/root): they vanish with it, even when nobody is left to clean up.
        cmd += ["--ro-bind", etc_dir(), "/etc", "--perms", "0755", "--size", str(16 * 1024**2)]
        cmd += ["--tmpfs", INSIDE_CTL]
        cmd += ["--proc", "/proc", "--dev", "/dev"]
        cmd += ["--perms", "1777", "--size", str(s.tmp_size_mb * 1024**2), "--tmpfs", "/tmp"]
        cmd += ["--bind", self.workspace, INSIDE_WORKSPACE]
        cmd += ["--chdir", os.path.join(INSIDE_WORKSPACE, cwd) if cwd != "." else INSIDE_WORKSPACE]
        cmd += ["--info-fd", str(info_w), "--"]
        if self.privileged:
            cmd += ["setpriv", "--reuid", str(self.uid), "--regid", str(self.uid), "--clear-groups"]
            cmd += ["--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"]
        cmd += argv
        if s.cgroups != "off":
            try:  # before the fork: its cost must not hold the sandbox's init waiting
                self.cgroups = CgroupSet.create(cgroup_name(self.session_id), s.limits)
            except CgroupError as exc:
                if s.cgroups == "required":
                    self.abort()
                    raise RuntimeStartError(str(exc)) from None
                self.cgroup_error = str(exc)
        kwargs = {"pass_fds": tuple(self._fds)}
        return cmd, kwargs

    # -- after the fork --------------------------------------------------------------
    def started(self, proc: Any, timeout: float) -> None:
        """bwrap forked its init, which sets the sandbox up meanwhile: start moving init into
        its cgroups (``confirm`` waits for that before any command runs)."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        try:
            info = read_info(self._info_r, timeout)
            if info is None:
                raise RuntimeStartError("the sandbox did not start (bubblewrap failed)")
            self.init_pid = int(info["child-pid"])
            if self.cgroups is not None:
                # Init forks the shell when its setup is done, maybe before its own move is:
                # move the shell too, as soon as it exists (while it starts up).
                cgroups, init_moved = self.cgroups, self.cgroups.attach_async(self.init_pid)
                child = threading.Thread(target=self._move_child, args=(cgroups,), daemon=True)
                child.start()

                def moving() -> None:
                    init_moved()
                    child.join()

                self._moving = moving
        finally:
            with contextlib.suppress(OSError):
                os.close(self._info_r)
            self._info_r = -1

    def _move_child(self, cgroups: CgroupSet) -> None:
        with contextlib.suppress(RuntimeStartError, CgroupError):
            cgroups.attach(self.shell_pid())

    def confirm(self, shell_pid: int) -> None:
        """The shell is ready and has run nothing of the user's: make sure it is in the
        cgroups (init may have forked it before its own move was done: then move it too),
        and attach the outbound network."""
        try:
            if self._moving is not None:
                moving, self._moving = self._moving, None
                moving()
                assert self.cgroups is not None
                if not self.cgroups.holds(shell_pid):
                    self.cgroups.attach(shell_pid)
        except CgroupError as exc:
            raise RuntimeStartError(str(exc)) from None
        if self.settings.network == "outbound":
            from ._net import attach

            self.net = attach(self.init_pid)
        inside = self.uid if self.privileged else 1000
        passwd = f"root:x:0:0::/:/usr/sbin/nologin\nuser:x:{inside}:{inside}::{INSIDE_WORKSPACE}:/bin/bash\n"
        self.put(shell_pid, "passwd", passwd)
        self.put(shell_pid, "group", f"root:x:0:\nuser:x:{inside}:\n")

    @staticmethod
    def put(pid: int, name: str, text: str) -> str:
        """Write a control file the shell reads (``INSIDE_CTL/name``); its host path."""
        path = f"/proc/{pid}/root{INSIDE_CTL}/{name}"
        with open(path, "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write(text)
        return path

    def shell_pid(self, timeout: float = 2.0) -> int:
        """The host pid of the command bwrap started (its init's only child)."""
        end = time.monotonic() + timeout
        while True:
            kids = _procs.children(self.init_pid)
            if kids:
                return kids[0]
            if time.monotonic() > end or not _procs.exists(self.init_pid):
                raise RuntimeStartError("the sandbox's shell did not start")
            time.sleep(0.001)

    def orphans(self, shell_pid: int) -> set[int]:
        """Processes reparented to the sandbox's init (double-forked, a fork bomb's)."""
        return {p for p in _procs.children(self.init_pid) if p != shell_pid} if self.init_pid else set()

    def kill_all_but(self, keep: set[int]) -> None:
        """SIGKILL every process of the sandbox except ``keep`` (and its init)."""
        for _ in range(50):  # bounded: survivors of a fork bomb fork again while we kill
            pids = self.cgroups.pids() if self.cgroups is not None else set()
            pids |= _procs.descendants([self.init_pid]) if self.init_pid else set()
            victims = pids - keep - {self.init_pid}
            if not victims:
                return
            _procs.signal_all(victims, signal.SIGKILL)

    def close(self) -> None:
        """Kill the sandbox (its init: the kernel ends the rest) and remove its cgroups."""
        if self.init_pid:
            _procs.signal_all({self.init_pid}, signal.SIGKILL)
        if self.cgroups is not None:
            self.cgroups.kill_all()
            self.cgroups.remove()
            self.cgroups = None
        if self.net is not None:
            self.net.close()
            self.net = None
        self.abort()

    def abort(self) -> None:
        for fd in (*self._fds, self._info_r):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fds, self._info_r = [], -1
        if self._moving is not None:
            moving, self._moving = self._moving, None
            with contextlib.suppress(CgroupError):
                moving()

    # -- limits ------------------------------------------------------------------------
    def limit_hit(self, workspace: bool = True, file_size: bool = False) -> str | None:
        """The limit the sandbox hit since the last call, as the note of an observation;
        the workspace is measured only when ``workspace`` (a walk: not on every command);
        ``file_size``: the command died of SIGXFSZ, one file reached the workspace cap."""
        s = self.settings
        if file_size and s.workspace_limit_mb:
            return f"killed: workspace size limit {s.workspace_limit_mb} MiB"
        if self.cgroups is not None:
            hits = self.cgroups.hits()
            if hits["oom_kill"]:
                return f"killed: memory limit {s.memory_limit_mb} MiB"
            if hits["pids_max"]:
                return f"killed: process limit {s.pids_limit}"
        if (
            workspace
            and s.workspace_limit_mb
            and workspace_usage(self.workspace) > s.workspace_limit_mb * 1024**2
        ):
            return f"killed: workspace size limit {s.workspace_limit_mb} MiB"
        return None
