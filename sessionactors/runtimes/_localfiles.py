"""The file side of the local runtime: ``read``/``write`` and the REST writes, in the workspace.

What it is for: ``LocalFiles`` is the base of ``LocalRuntime`` holding what touches
workspace files from the daemon's side: paths resolved (symlinks too) and never outside
the workspace (``open_beneath``), the size limits, and, with the sandbox, the workspace
cap and handing what the daemon wrote to the sandbox's uid so that the shell can change
it. Imports ``errors`` and its sibling runtime modules.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from ..errors import ActionError, PathEscape
from ._files import open_beneath
from .base import Output, Runtime, error_observation, observation
from .sandbox import Sandbox, SandboxSettings, workspace_usage

__all__ = ["LocalFiles"]


class LocalFiles(Runtime):
    """Workspace file access of the local runtime (its subclass runs the shell)."""

    _workspace: str  # the workspace, resolved, as the daemon sees it
    _root_seen: str  # the workspace as the shell sees it (/workspace in the sandbox)
    _sandbox: SandboxSettings | None
    _opts: Any  # local._Options: max_file_size

    def _new_sandbox(self) -> Sandbox | None:
        if self._sandbox is None:
            return None
        return Sandbox(self._sandbox, self.ctx.session_id, self._workspace)

    def _inside(self, real: str) -> bool:
        return real == self._workspace or real.startswith(self._workspace.rstrip(os.sep) + os.sep)

    def _relative(self, seen: str) -> str:
        """A directory the shell reported, relative to the workspace when inside it."""
        root = self._root_seen
        inside = seen == root or seen.startswith(root.rstrip(os.sep) + os.sep)
        return os.path.relpath(seen, root) if inside else seen

    def _resolve(self, path: Any) -> str:
        """``path`` resolved (symlinks too) relative to the workspace; PathEscape if it leaves it."""
        if not isinstance(path, str) or not path or "\0" in path:
            raise ActionError("'path' must be a non-empty string")
        if os.path.isabs(path):
            raise PathEscape(f"path {path!r} is absolute; paths are relative to the workspace")
        real = os.path.realpath(os.path.join(self._workspace, path))
        if not self._inside(real):
            raise PathEscape(f"path {path!r} is outside the workspace")
        return os.path.relpath(real, self._workspace)

    def _read(self, path: str, cause: int) -> Output:
        limit = self._opts.max_file_size
        try:
            fd = open_beneath(self._workspace, self._resolve(path), os.O_RDONLY)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                return error_observation(f"{path} is not a regular file", cause)
            with os.fdopen(fd, "rb") as fh:
                data = fh.read(limit + 1)
        except ActionError as exc:  # the path changed meaning since validate()
            return error_observation(str(exc), cause)
        except FileNotFoundError:
            return error_observation(f"No such file: {path}", cause)
        except OSError as exc:
            return error_observation(f"Cannot read {path}: {exc.strerror or exc}", cause)
        if len(data) > limit:
            return error_observation(f"{path} is larger than the {limit} byte limit for read", cause)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return error_observation(
                f"{path} is a binary file (not valid UTF-8); read returns text only", cause
            )
        return observation("read", text, cause, {"path": path}, f"Read {path}")

    def write_file(self, path: str, data: bytes) -> None:
        """The REST API's writes: as the base class, then the file is the sandbox's."""
        self._check_room(len(data))
        super().write_file(path, data)
        self._give(self._confine(path))

    def _check_room(self, size: int) -> None:
        cap = self._sandbox.workspace_limit_mb if self._sandbox else None
        if cap and workspace_usage(self._workspace) + size > cap * 1024**2:
            raise ActionError(f"the workspace is full: its size limit is {cap} MiB")

    def _give(self, target: Any) -> None:
        """Hand a file the daemon wrote (and the directories made for it) to the sandbox uid."""
        if self._sandbox is None:
            return
        sandbox, path = self._new_sandbox(), os.path.realpath(target)
        assert sandbox is not None
        while self._inside(path) and path != self._workspace:
            sandbox.give(path)
            path = os.path.dirname(path)

    def _write(self, path: str, content: str, cause: int) -> Output:
        try:
            self._check_room(len(content.encode("utf-8")))
            fd = open_beneath(self._workspace, self._resolve(path), os.O_WRONLY | os.O_CREAT, make_dirs=True)
            with os.fdopen(fd, "wb") as fh:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    return error_observation(f"{path} is not a regular file", cause)
                fh.truncate(0)  # only now: never truncate something that is not a regular file
                fh.write(content.encode("utf-8"))
        except ActionError as exc:
            return error_observation(str(exc), cause)
        except OSError as exc:
            return error_observation(f"Cannot write {path}: {exc.strerror or exc}", cause)
        self._give(os.path.join(self._workspace, path))
        return observation("write", "", cause, {"path": path}, f"Wrote {path}")
