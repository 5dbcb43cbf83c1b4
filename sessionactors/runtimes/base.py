"""The runtime interface: what a session actor drives to execute actions.

A runtime is the sandbox of one live session (a shell, a container, a remote
sandbox API). The session actor owns exactly one runtime instance, calls it from
its single thread and never blocks on it: a runtime that needs time (a command
that runs for a minute, a container that boots) returns at once and reports
progress later, when one of its file descriptors becomes readable (the actor
watches them with Thespian's ``ThespianWatch``) or when its next deadline
passes (the actor arms ``wakeupAfter``). That is why the interface is a small
state machine rather than a blocking ``execute()``.

Call order, from the session actor::

    rt = RuntimeClass(ctx)          # cheap; no process started yet
    outputs = rt.start()            # may raise RuntimeStartError (-> 503)
    ... rt.ready is False while an asynchronous start is under way;
        rt.poll() drives it and eventually emits Status RUNTIME_STARTED
    rt.validate(action)             # raises ActionError (-> 400) before storing
    outputs = rt.begin(action_event)
    while rt.busy: outputs = rt.poll(ready_fds)   # on fd activity or deadline
    rt.state()                      # restorable state, saved at passivation
    rt.stop()                       # kills everything it started

Runtimes are chosen by name (``runtime = "local"``) and found through the
setuptools entry point group ``sessionactors.runtimes``; see docs/runtimes.md.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

from ..errors import ActionError, ConfigError, PathEscape

__all__ = [
    "ENTRY_POINT_GROUP",
    "RuntimeContext",
    "Event",
    "Status",
    "Output",
    "Runtime",
    "observation",
    "agent_message",
    "error_observation",
    "load_runtime",
]

ENTRY_POINT_GROUP = "sessionactors.runtimes"


@dataclass(frozen=True)
class RuntimeContext:
    """Everything a runtime is given about the session it serves."""

    session_id: str
    workspace: Path
    options: dict[str, Any] = field(default_factory=dict)
    """The ``[runtime]`` section of the configuration (runtime-specific keys)."""
    state: dict[str, Any] = field(default_factory=dict)
    """What ``state()`` returned before the last passivation; empty when new."""
    args: dict[str, Any] = field(default_factory=dict)
    """The session settings sent with INIT (without its secrets)."""
    secrets: dict[str, Any] = field(default_factory=dict, repr=False)
    """The INIT args that carry secrets (``secret_arg_patterns``): in memory only, never
    stored or logged. The session updates this dict in place when a later INIT brings
    new values, so read it when needed rather than copying it at start."""


@dataclass(frozen=True)
class Event:
    """An event the runtime produced: the session actor numbers, stores and sends it.

    ``fields`` holds the contract's event fields except ``id`` and
    ``timestamp`` (``source``, ``message``, ``observation`` or ``action``,
    ``content``, ``extras``, ``cause``...).
    """

    fields: dict[str, Any]


@dataclass(frozen=True)
class Status:
    """A status update for the session's connections (not stored, no id)."""

    id: str
    message: str
    type: str = "info"


Output = Union[Event, Status]


def observation(
    name: str,
    content: str,
    cause: int | None,
    extras: dict[str, Any] | None = None,
    message: str | None = None,
) -> Event:
    """An observation event of source ``environment`` answering action ``cause``."""
    fields: dict[str, Any] = {
        "source": "environment",
        "message": message if message is not None else f"{name} finished",
        "observation": name,
        "content": content,
        "extras": dict(extras or {}),
    }
    if cause is not None:
        fields["cause"] = cause
    return Event(fields)


def error_observation(content: str, cause: int | None) -> Event:
    """The contract's ``error`` observation: a failed action that is not a protocol error."""
    return observation("error", content, cause, message="Action failed")


def agent_message(content: str, cause: int | None = None) -> Event:
    """A ``message`` event of source ``agent``: what an agent loop says."""
    fields: dict[str, Any] = {
        "source": "agent",
        "message": content,
        "action": "message",
        "args": {"content": content},
    }
    if cause is not None:
        fields["cause"] = cause
    return Event(fields)


class Runtime(abc.ABC):
    """Base class of every runtime: the sandbox one live session owns.

    Subclasses set ``name`` and implement ``start``, ``begin`` and ``stop``;
    the rest has defaults that suit a synchronous runtime.
    """

    name: ClassVar[str] = ""
    actions: ClassVar[frozenset[str]] = frozenset({"message", "run", "read", "write"})

    def __init__(self, ctx: RuntimeContext) -> None:
        self.ctx = ctx

    @property
    def ready(self) -> bool:
        """False while an asynchronous start is still under way."""
        return True

    @property
    def busy(self) -> bool:
        """True while an action is executing (passivation waits for it)."""
        return False

    @abc.abstractmethod
    def start(self) -> list[Output]:
        """Start (or reconnect to) the sandbox. Raise RuntimeStartError when it cannot."""

    def validate(self, action: dict[str, Any]) -> None:
        """Refuse an action before it is stored: raise ActionError (-> 400).

        ``action`` has already passed the protocol's shape checks
        (``{"action": str, "args": dict}``).
        """
        if action["action"] not in self.actions:
            raise ActionError(f"action {action['action']!r} is not supported by runtime {self.name!r}")

    @abc.abstractmethod
    def begin(self, action_event: dict[str, Any]) -> list[Output]:
        """Start executing a stored action event (it carries its ``id``).

        Return what is known at once; a long action reports the rest through
        ``poll``. Only called when ``busy`` is False.
        """

    def filenos(self) -> list[int]:
        """File descriptors the session actor must watch for this runtime."""
        return []

    def next_deadline(self) -> float | None:
        """``time.monotonic()`` instant at which ``poll`` must run even without fd activity."""
        return None

    def poll(self, ready: list[int]) -> list[Output]:
        """Make progress after fd activity (``ready``) or a deadline; return new outputs."""
        return []

    def state(self) -> dict[str, Any]:
        """Restorable state (JSON-serialisable), saved with the session record."""
        return {}

    def interrupt(self) -> list[Output]:
        """Interrupt the running action as a Ctrl-C would (``change_agent_state`` to
        ``stopped`` or ``paused``). Return what is known at once; the action still ends with
        its observation, through ``poll``. Default: nothing to interrupt."""
        return []

    # -- workspace access for the REST API (works whether or not the runtime is started) --
    def _confine(self, path: str) -> Path:
        """``path`` resolved inside the workspace (symlinks followed), or PathEscape."""
        if not isinstance(path, str) or "\0" in path or len(path) > 4096:
            raise ActionError("'path' must be a string")
        if path.startswith("/"):
            raise PathEscape(f"path {path!r} is absolute; paths are relative to the workspace")
        root = self.ctx.workspace.resolve()
        target = (root / path).resolve()
        if target != root and root not in target.parents:
            raise PathEscape(f"path {path!r} is outside the workspace")
        return target

    def list_files(self, path: str = ".") -> list[dict[str, Any]]:
        """Entries of a workspace directory: ``[{"name", "type": "file"|"dir"|"other", "size"}]``."""
        target = self._confine(path or ".")
        if not target.exists():
            if target == self.ctx.workspace.resolve():
                return []
            raise FileNotFoundError(path)
        if not target.is_dir():
            raise ActionError(f"{path} is not a directory")
        entries = []
        for child in sorted(target.iterdir(), key=lambda p: p.name):
            kind = "dir" if child.is_dir() else "file" if child.is_file() else "other"
            size = child.stat().st_size if kind == "file" else None
            entries.append({"name": child.name, "type": kind, "size": size})
        return entries

    def read_file(self, path: str, limit: int = 1_000_000) -> str:
        """A workspace file as text (UTF-8), refused when larger than ``limit`` or binary.

        Opened once beneath the workspace with no symlink followed, sized with ``fstat``
        before anything is read and read through that one fd (``_files.read_beneath``): a
        link the session's shell swaps in after ``_confine`` fails the open, and a huge
        (or sparse) file gets its 400 without being read.
        """
        from ._files import read_beneath

        target = self._confine(path)
        root = self.ctx.workspace.resolve()
        if target == root:
            raise FileNotFoundError(path)
        data = read_beneath(str(root), str(target.relative_to(root)), limit)
        if data is None:
            raise ActionError(f"{path} is larger than the {limit} byte limit")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ActionError(f"{path} is a binary file (not valid UTF-8)") from None

    def write_file(self, path: str, data: bytes) -> None:
        """Create or replace a workspace file (REST ``save-file``/``upload-files``); no symlink
        is followed, missing directories are made."""
        import stat

        from ._files import open_beneath

        target = self._confine(path)
        root = self.ctx.workspace.resolve()
        root.mkdir(parents=True, exist_ok=True)
        fd = open_beneath(str(root), str(target.relative_to(root)), os.O_WRONLY | os.O_CREAT, make_dirs=True)
        with os.fdopen(fd, "wb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ActionError(f"{path} is not a regular file")
            fh.truncate(0)
            fh.write(data)

    def zip_workspace(self, dest: Path) -> None:
        """Write the workspace as a zip archive to ``dest`` (REST ``zip-directory``), file by
        file, without holding it in memory; symlinks and special files are left out.

        Each file is opened beneath the workspace with no symlink followed and copied from
        that fd (``_files.open_beneath``): a link the session's shell swaps in while the
        walk runs is skipped, never followed out of the workspace.
        """
        import shutil
        import stat
        import time
        import zipfile

        from ._files import open_beneath

        root = self.ctx.workspace.resolve()
        with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
            if not root.is_dir():
                return
            for folder, dirs, files in os.walk(root):
                dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(folder, d)))
                for name in sorted(files):
                    rel = os.path.relpath(os.path.join(folder, name), root)
                    try:
                        fd = open_beneath(str(root), rel, os.O_RDONLY)
                    except OSError:
                        continue  # a symlink (maybe swapped in on the way), or gone meanwhile
                    with os.fdopen(fd, "rb") as src:
                        info = os.fstat(fd)
                        if not stat.S_ISREG(info.st_mode):
                            continue
                        os.set_blocking(fd, True)
                        stamp = max(time.localtime(info.st_mtime)[:6], (1980, 1, 1, 0, 0, 0))
                        entry = zipfile.ZipInfo(rel, date_time=stamp)
                        entry.compress_type = zipfile.ZIP_DEFLATED
                        entry.external_attr = (info.st_mode & 0xFFFF) << 16
                        with archive.open(entry, "w", force_zip64=True) as out:
                            shutil.copyfileobj(src, out, 1 << 16)

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the sandbox and everything it started. Must be idempotent."""


@functools.cache
def load_runtime(name: str) -> type[Runtime]:
    """The built-in runtime ``name`` (echo, local), or the one registered under it in the
    entry point group.

    Cached: scanning the installed distributions' entry points costs ~10 ms, which was the
    largest part of a session's activation; the supervisor resolves it before forking, so
    session actors inherit the answer.
    """
    import importlib

    builtin = _BUILTINS.get(name)
    if builtin is not None:  # no metadata scan: importlib.metadata alone weighs ~3 MB per process
        module_name, cls_name = builtin.rsplit(":", 1)
        return getattr(importlib.import_module(module_name), cls_name)  # type: ignore[no-any-return]
    from importlib import metadata

    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Runtime)):
                raise ConfigError("runtime", f"entry point {name!r} is not a Runtime subclass")
            return cls
    raise ConfigError("runtime", f"no runtime named {name!r} is installed")


# Found even when the package runs from a source tree without installed metadata.
_BUILTINS = {
    "echo": "sessionactors.runtimes.echo:EchoRuntime",
    "local": "sessionactors.runtimes.local:LocalRuntime",
    "local-unsandboxed": "sessionactors.runtimes.local:LocalUnsandboxedRuntime",
}


def replace_state(ctx: RuntimeContext, state: dict[str, Any]) -> RuntimeContext:
    """A copy of ``ctx`` carrying ``state`` (used when a runtime is restarted)."""
    return dataclasses.replace(ctx, state=dict(state))
