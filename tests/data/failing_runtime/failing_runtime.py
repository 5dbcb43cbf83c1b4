"""A plugin runtime that raises where it is told to: the tests of every hook's failure.

INIT args choose the constructor or ``start`` (``{"fail_at": "init"}`` / ``"start"``);
a ``run`` action whose command is ``raise-in-validate``, ``raise-in-begin`` or
``raise-in-poll`` makes that hook
raise; any other command is answered at once. The constructor's failure is the one a
plugin author met: assigning the read-only ``busy`` property.
"""

from __future__ import annotations

import time
from typing import Any

from sessionactors.runtime import Output, Runtime, RuntimeContext, Status, observation

__all__ = ["FailingRuntime"]


class FailingRuntime(Runtime):
    """Raises in the hook its session asks for."""

    name = "failing"
    actions = frozenset({"run"})

    def __init__(self, ctx: RuntimeContext) -> None:
        super().__init__(ctx)
        if ctx.args.get("fail_at") == "init":
            self.busy = False  # type: ignore[misc]  # read-only on Runtime: AttributeError
        self.deadline: float | None = None

    @property
    def busy(self) -> bool:
        return self.deadline is not None

    def start(self) -> list[Output]:
        if self.ctx.args.get("fail_at") == "start":
            raise ValueError("start failed on purpose")
        return [Status("STATUS$RUNTIME_STARTED", "ready")]

    def validate(self, action: dict[str, Any]) -> None:
        super().validate(action)
        if action["args"].get("command") == "raise-in-validate":
            raise KeyError("validate failed on purpose")

    def begin(self, action_event: dict[str, Any]) -> list[Output]:
        command = action_event["args"].get("command")
        if command == "raise-in-begin":
            raise RuntimeError("begin failed on purpose")
        if command == "raise-in-poll":
            self.deadline = time.monotonic()  # poll() runs at once, and raises
            return []
        return [observation("run", f"{command}\n", action_event["id"], {"exit_code": 0})]

    def next_deadline(self) -> float | None:
        return self.deadline

    def poll(self, ready: list[int]) -> list[Output]:
        raise RuntimeError("poll failed on purpose")

    def stop(self) -> None:
        self.deadline = None
