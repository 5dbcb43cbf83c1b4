"""The session's agent state as stored events, ``change_agent_state``, and terminal shaping.

The OpenHands web client (Dec 2024) drives its status bar, its file explorer and the
sending of its first task from ``observation: "agent_state_changed"`` events (it becomes
"active" on ``extras.agent_state == "init"``). With ``openhands_mode`` on, the session emits
them as ordinary events, numbered, stored and replayed, so a reload restores the status bar:
``loading`` while the runtime starts, ``init`` once it is up, ``running`` while an action
executes, ``awaiting_user_input`` after it, ``paused``/``stopped`` on request, ``error`` when
the runtime cannot start. A runtime (or a future agent plug-in) may emit the same
observation itself; the session then follows its value (docs/runtimes.md).

The same mode shapes ``run`` observations for the client's xterm, which writes each one with
``writeln`` and then a new prompt: newlines become CRLF, one trailing newline is dropped, and
partial (streamed) observations are held and folded into the final one, so that a command
gets exactly one prompt.

``change_agent_state`` is handled in every mode: the action is stored like any other, and
``stopped``/``paused`` interrupt the running command through ``Runtime.interrupt`` (the local
runtime's Ctrl-C, then SIGKILL, path).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ..errors import StoreError
from ..protocol import action_event_fields, error_frame

if TYPE_CHECKING:
    from collections import deque

    from ..config import Config
    from ..runtimes.base import Output, Runtime

__all__ = ["AgentStates", "agent_state_fields"]

log = logging.getLogger("sessionactors.session")

_INTERRUPTING = ("stopped", "paused")
# ``init`` is recorded at least this long after the runtime started to start. The client
# stores its token only when the token frame is the last of a render batch, and it calls the
# REST API (with that token) as soon as it sees ``init``: a new session's ``init`` arriving
# together with its token frame would leave the client without a token (seen in Chromium:
# 401 on /api/list-files). A pause lets the token frames be handled on their own first.
INIT_STATE_DELAY = 0.3


def agent_state_fields(state: str) -> dict[str, Any]:
    """The stored ``agent_state_changed`` observation (without id/timestamp)."""
    return {
        "source": "environment",
        "message": f"Agent state changed to {state}",
        "observation": "agent_state_changed",
        "content": "",
        "extras": {"agent_state": state},
    }


def _crlf(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\n", "\r\n")
    return text[:-2] if text.endswith("\r\n") else text


class AgentStates:
    """Mixin of ``SessionActor``: the agent state it reports and the shaping of its events."""

    if TYPE_CHECKING:
        cfg: Config | None
        runtime: Runtime | None
        queue: deque[dict[str, Any]]

        def _emit(self, fields_list: list[dict[str, Any]]) -> list[dict[str, Any]]: ...
        def _handle_outputs(self, outputs: list[Output], extra: list[str] | None = None) -> None: ...
        def _runtime_crashed(self, where: str, exc: Exception) -> None: ...
        def wakeupAfter(self, delay: float, payload: Any = None) -> None: ...
        def _send_to(self, conns: list[str], payloads: list[dict[str, Any]]) -> None: ...

    agent_state: str | None = None
    hidden_causes: set[int]
    held_output: dict[int, str]
    init_not_before = 0.0

    def _reset_agent_state(self) -> None:
        """A new incarnation: its runtime is not started, nothing is held."""
        self.agent_state = None
        self.hidden_causes = set()
        self.held_output = {}

    def _agent_loading(self) -> None:
        """The runtime is about to start."""
        if self._openhands:
            self.init_not_before = time.monotonic() + INIT_STATE_DELAY
            self.wakeupAfter(INIT_STATE_DELAY, payload="agent_init")
        self._agent_state("loading")

    @property
    def _openhands(self) -> bool:
        return self.cfg is not None and self.cfg.openhands_mode

    def _agent_state(self, state: str) -> None:
        """Record a new agent state (openhands mode only; a repeat is not recorded)."""
        if self._openhands and state != self.agent_state:
            self._emit([agent_state_fields(state)])

    def _note_action(self, event: dict[str, Any]) -> None:
        """A stored user action: remember a hidden command, so its observations say so."""
        if event.get("action") == "run" and event.get("args", {}).get("hidden") is True:
            self.hidden_causes.add(event["id"])

    def _agent_busy(self) -> None:
        if self.agent_state == "loading" and self.runtime is not None and self.runtime.ready:
            self._agent_state("init")  # an action came before the delay ended: in order anyway
        self._agent_state("running")

    def _agent_progress(self, due: bool = False) -> None:
        """After runtime progress (or the ``agent_init`` wakeup): the runtime came up, or the
        last action ended."""
        runtime = self.runtime
        if runtime is None:
            return
        if self.agent_state == "loading" and runtime.ready:
            if due or time.monotonic() >= self.init_not_before:
                self._agent_state("init")
        elif self.agent_state == "running" and not runtime.busy and not self.queue:
            self._agent_state("awaiting_user_input")

    def _change_agent_state(self, conn: str, action: dict[str, Any]) -> None:
        """``change_agent_state``: stored; ``stopped``/``paused`` interrupt like a Ctrl-C."""
        assert self.runtime is not None
        try:
            self._emit([action_event_fields(action)])
        except StoreError:  # nothing was stored or done: the sender must know
            self._send_to([conn], [error_frame("The action could not be stored; try again", 503)])
            return
        wanted = action["args"]["agent_state"]
        outputs: list[Output] = []
        if wanted in _INTERRUPTING:
            if self.runtime.busy:
                try:
                    outputs = self.runtime.interrupt()
                except Exception as exc:  # a plugin's bug: answered like one in begin/poll
                    log.exception("the runtime's interrupt() raised")
                    self._runtime_crashed("interrupt", exc)
                    return
            self._agent_state(wanted)
        elif wanted == "running":  # resume: nothing is paused at this layer but the state
            self._agent_state("running" if self.runtime.busy or self.queue else "awaiting_user_input")
        self._handle_outputs(outputs)

    def _shape(self, fields_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Events about to be stored, as the client needs them (see the module docstring)."""
        shaped = []
        for fields in fields_list:
            cause = fields.get("cause")
            extras = fields.get("extras")
            if fields.get("observation") == "agent_state_changed" and isinstance(extras, dict):
                self.agent_state = str(extras.get("agent_state"))
            if isinstance(cause, int) and isinstance(extras, dict):
                partial = extras.get("partial") is True
                if cause in self.hidden_causes:
                    fields = {**fields, "extras": {**extras, "hidden": True}}
                    if not partial:
                        self.hidden_causes.discard(cause)
                if self._openhands and fields.get("observation") == "run":
                    content = str(fields.get("content", ""))
                    if partial:
                        self.held_output[cause] = self.held_output.get(cause, "") + content
                        continue
                    content = self.held_output.pop(cause, "") + content
                    fields = {**fields, "content": _crlf(content)}
                elif not partial:
                    self.held_output.pop(cause, None)
            shaped.append(fields)
        return shaped
