"""The wire protocol v1 (``PROTOCOL.md``): validating client frames, building server frames.

Shared by the gateway (which validates every frame before anything reaches an
actor) and the session actor (which builds the events it stores). Nothing here
does I/O.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass
from typing import Any

from .errors import ActionError

__all__ = [
    "ACTIONS",
    "AGENT_STATES",
    "REQUESTABLE_STATES",
    "Arg",
    "split_secrets",
    "InitRequest",
    "parse_init",
    "parse_action",
    "error_frame",
    "status_update",
    "action_event_fields",
    "NOT_ATTACHED",
]

NOT_ATTACHED = "Not attached to a session; send initialize first"

# The agent states of the OpenHands client (``src/types/agent-state.ts``, Dec 2024).
AGENT_STATES = frozenset(
    {
        "loading", "init", "running", "awaiting_user_input", "paused", "stopped", "finished",
        "rejected", "error", "awaiting_user_confirmation", "user_confirmed", "user_rejected",
    }
)  # fmt: skip
# What ``change_agent_state`` may ask for: the states a user sets (the others are reported).
REQUESTABLE_STATES = frozenset({"running", "paused", "stopped", "user_confirmed", "user_rejected"})


@dataclass(frozen=True)
class Arg:
    """One argument of an action: its JSON kind, whether it is required, and its check."""

    kind: str  # "str", "number", "bool", "str_list"
    required: bool = False
    choices: frozenset[str] | None = None


# action name -> {arg name: spec}. Args not named here are accepted and dropped (a later
# client may send more); the ones named keep strict types.
ACTIONS: dict[str, dict[str, Arg]] = {
    "message": {"content": Arg("str", True), "image_urls": Arg("str_list"), "timestamp": Arg("str")},
    "run": {"command": Arg("str", True), "timeout": Arg("number"), "hidden": Arg("bool"),
            "thought": Arg("str")},
    "read": {"path": Arg("str", True)},
    "write": {"path": Arg("str", True), "content": Arg("str", True)},
    "change_agent_state": {"agent_state": Arg("str", True, REQUESTABLE_STATES)},
}  # fmt: skip
_KIND_NAMES = {"str": "a string", "number": "a number", "bool": "a boolean", "str_list": "a list of strings"}


def _check_arg(name: str, key: str, spec: Arg, value: Any) -> None:
    kind = spec.kind
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and isinstance(value, float) and not math.isfinite(value):
            raise ActionError(f"args.{key} must be finite")
    elif kind == "str_list":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ActionError(f"args.{key} must be {_KIND_NAMES[kind]}")
    if spec.choices is not None and value not in spec.choices:
        raise ActionError(f"args.{key} of '{name}' must be one of {', '.join(sorted(spec.choices))}")


_INIT_KEYS = {"action", "args", "token", "github_token", "latest_event_id"}


@dataclass(frozen=True)
class InitRequest:
    """A validated INIT frame."""

    args: dict[str, Any]
    token: str | None
    github_token: str | None
    latest_event_id: int


def error_frame(message: str, code: int) -> dict[str, Any]:
    """The contract's error frame, sent to the requesting connection alone."""
    return {"error": message, "error_code": code}


def status_update(name: str, message: str, type: str = "info") -> dict[str, Any]:
    """A status update (not stored, carries no event id)."""
    return {"status_update": True, "type": type, "id": f"STATUS${name}", "message": message}


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _check_field_sizes(obj: dict[str, Any], max_field: int, where: str) -> None:
    for key, value in obj.items():
        if isinstance(value, str):
            if len(value) > max_field or len(value.encode()) > max_field:
                raise ActionError(f"'{where}{key}' is too large (limit {max_field} bytes)")
        elif isinstance(value, (dict, list)) and _size(value) > max_field:
            raise ActionError(f"'{where}{key}' is too large (limit {max_field} bytes)")


def parse_init(payload: Any, max_field: int = 256_000) -> InitRequest:
    """Validate an INIT frame; raise ActionError (-> 400) naming what is wrong."""
    if not isinstance(payload, dict):
        raise ActionError("initialize must be a JSON object")
    unknown = set(payload) - _INIT_KEYS
    if unknown:
        raise ActionError(f"unknown field(s) in initialize: {', '.join(sorted(map(str, unknown)))}")
    _check_field_sizes(payload, max_field, "")
    args = payload.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ActionError("'args' must be an object")
    token = payload.get("token")
    if token is not None and not isinstance(token, str):
        raise ActionError("'token' must be a string")
    github_token = payload.get("github_token")
    if github_token is not None and not isinstance(github_token, str):
        raise ActionError("'github_token' must be a string")
    latest = payload.get("latest_event_id", -1)
    if latest is None:
        latest = -1
    if isinstance(latest, bool) or not isinstance(latest, int):
        raise ActionError("'latest_event_id' must be an integer")
    if latest < -1:
        raise ActionError("'latest_event_id' must be >= -1")
    # Secrets never travel inside the stored settings.
    args = {k: v for k, v in args.items() if k not in ("token", "github_token")}
    # An empty token is an unparsable one (401), not a request for a new session.
    return InitRequest(args=args, token=token, github_token=github_token, latest_event_id=latest)


def parse_action(payload: Any, max_field: int = 256_000) -> dict[str, Any]:
    """Validate a non-INIT action; return ``{"action": name, "args": {...}}`` or raise ActionError."""
    if not isinstance(payload, dict):
        raise ActionError("action must be a JSON object")
    name = payload.get("action")
    if not isinstance(name, str):
        raise ActionError("'action' must be a string")
    spec = ACTIONS.get(name)
    if spec is None:
        raise ActionError(f"unknown action {name[:64]!r}")
    extra = set(payload) - {"action", "args"}
    if extra:
        raise ActionError(f"unknown field(s) in action: {', '.join(sorted(map(str, extra)))[:200]}")
    args = payload.get("args", {})
    if not isinstance(args, dict):
        raise ActionError("'args' must be an object")
    clean: dict[str, Any] = {}
    for key, arg in spec.items():
        if key not in args:
            if arg.required:
                raise ActionError(f"'{name}' needs args.{key}")
            continue
        _check_arg(name, key, arg, args[key])
        clean[key] = args[key]
    if "timeout" in clean and not 0 < clean["timeout"] <= 24 * 3600:
        raise ActionError("args.timeout must be between 0 and 86400 seconds")
    _check_field_sizes(clean, max_field, "args.")
    return {"action": name, "args": clean}


def action_event_fields(action: dict[str, Any]) -> dict[str, Any]:
    """The stored event (without id/timestamp) for an accepted user action."""
    name, args = action["action"], action["args"]
    if name == "message":
        message = args["content"]
    elif name == "run":
        message = f"Running command: {args['command']}"
    elif name == "read":
        message = f"Reading file: {args['path']}"
    elif name == "write":
        message = f"Writing file: {args['path']}"
    else:
        message = f"Changing agent state to {args['agent_state']}"
    return {"source": "user", "message": message, "action": name, "args": dict(args)}


def split_secrets(args: dict[str, Any], patterns: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """INIT ``args`` split into (settings to store, secrets to hold in memory only).

    A key is a secret when it matches one of ``patterns`` (shell-style, case-insensitive)
    or is ``LLM_API_KEY``; secrets never reach the store, a log line or another tab.
    """
    kept: dict[str, Any] = {}
    secrets: dict[str, Any] = {}
    for key, value in args.items():
        upper = str(key).upper()
        if upper == "LLM_API_KEY" or any(fnmatch.fnmatchcase(upper, p.upper()) for p in patterns):
            secrets[key] = value
        else:
            kept[key] = value
    return kept, secrets
