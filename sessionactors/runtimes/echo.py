"""The echo runtime: an in-process stand-in sandbox for tests and benchmarks.

``run`` answers with the command text as output (exit code 0), except
``sleep N`` which keeps the runtime busy for N seconds (deadline-driven, no
thread, so it works on every Thespian base), ``fail`` which exits 1, and ``secret-names``
which lists the names of the INIT secrets the runtime holds in memory;
``write``/``read`` use an in-memory file table that survives passivation
through ``state()``; ``message`` gets no reaction.

Test hooks (options of the ``[runtime]`` table): ``fail_start`` makes ``start``
fail (a runtime that cannot start; the INIT arg ``echo_fail_start`` does it for one session); ``stop_delay`` makes ``stop`` take that many
seconds after creating ``<workspace>/.stopping``, which widens the passivation
window so that tests can send an INIT into it deterministically.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path
from typing import Any

from ..errors import ActionError, PathEscape
from .base import Output, Runtime, Status, error_observation, observation

__all__ = ["EchoRuntime"]


class EchoRuntime(Runtime):
    """Answers actions from memory; what tests use when no shell is needed."""

    name = "echo"

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self._files: dict[str, str] = dict(ctx.state.get("files", {}))
        self._pending: tuple[float, dict[str, Any]] | None = None
        self._started = False

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def start(self) -> list[Output]:
        if self.ctx.options.get("fail_start") or self.ctx.args.get("echo_fail_start"):
            from ..errors import RuntimeStartError

            raise RuntimeStartError("echo runtime configured to fail at start")
        self._started = True
        return [Status("STATUS$RUNTIME_STARTED", "Runtime started")]

    def validate(self, action: dict[str, Any]) -> None:
        super().validate(action)
        args = action["args"]
        if action["action"] in ("read", "write"):
            path = args["path"]
            if path.startswith("/") or ".." in path.split("/"):
                raise PathEscape(f"path {path!r} is outside the workspace")
        if action["action"] == "run" and not args["command"].strip():
            raise ActionError("'command' must not be empty")

    def begin(self, action_event: dict[str, Any]) -> list[Output]:
        name = action_event["action"]
        args = action_event["args"]
        cause = action_event["id"]
        if name == "run":
            command = args["command"]
            parts = command.split()
            if parts[0] == "sleep" and len(parts) == 2:
                timeout = args.get("timeout")
                seconds = float(parts[1])
                if timeout is not None and timeout < seconds:
                    seconds = float(timeout)
                self._pending = (time.monotonic() + seconds, action_event)
                return []
            exit_code = 1 if command == "fail" else 0
            if command == "secret-names":  # what reached the runtime in memory (names, never values)
                names = " ".join(sorted(self.ctx.secrets))
                return [observation("run", names + "\n", cause, {"command": command, "exit_code": 0})]
            return [observation("run", command + "\n", cause, {"command": command, "exit_code": exit_code})]
        if name == "write":
            self._files[args["path"]] = args["content"]
            return [observation("write", "", cause, {"path": args["path"]})]
        if name == "read":
            if args["path"] not in self._files:
                return [error_observation(f"No such file: {args['path']}", cause)]
            return [observation("read", self._files[args["path"]], cause, {"path": args["path"]})]
        return []

    def next_deadline(self) -> float | None:
        return self._pending[0] if self._pending else None

    def poll(self, ready: list[int]) -> list[Output]:
        if self._pending is None or time.monotonic() < self._pending[0]:
            return []
        _, event = self._pending
        self._pending = None
        command = event["args"]["command"]
        return [observation("run", "", event["id"], {"command": command, "exit_code": 0})]

    def interrupt(self) -> list[Output]:
        """A pending ``sleep`` ends at once, with exit code 130 as after a Ctrl-C."""
        if self._pending is None:
            return []
        _, event = self._pending
        self._pending = None
        extras = {"command": event["args"]["command"], "exit_code": 130, "interrupted": True}
        return [observation("run", "", event["id"], extras)]

    def list_files(self, path: str = ".") -> list[dict[str, Any]]:
        if path not in ("", "."):
            raise FileNotFoundError(path)
        return [{"name": n, "type": "file", "size": len(c.encode())} for n, c in sorted(self._files.items())]

    def read_file(self, path: str, limit: int = 1_000_000) -> str:
        if path not in self._files:
            raise FileNotFoundError(path)
        return self._files[path]

    def write_file(self, path: str, data: bytes) -> None:
        if path.startswith("/") or ".." in path.split("/"):
            raise PathEscape(f"path {path!r} is outside the workspace")
        self._files[path] = data.decode("utf-8", errors="replace")

    def zip_workspace(self, dest: Path) -> None:
        with zipfile.ZipFile(dest, "w") as archive:
            for name, content in sorted(self._files.items()):
                archive.writestr(name, content)

    def state(self) -> dict[str, Any]:
        return {"files": dict(self._files)}

    def stop(self) -> None:
        self._pending = None
        delay = float(self.ctx.options.get("stop_delay", 0) or 0)
        if delay and self._started:
            self.ctx.workspace.mkdir(parents=True, exist_ok=True)
            (self.ctx.workspace / ".stopping").touch()
            time.sleep(delay)  # deliberately slow: a test hook, see the module docstring
        self._started = False
