"""The wire protocol v1 (``PROTOCOL.md``): validating client frames, building server frames.

Shared by the gateway (which validates every frame before anything reaches an
actor) and the session actor (which builds the events it stores). Nothing here
does I/O.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .errors import ActionError

__all__ = [
    "ACTIONS",
    "InitRequest",
    "parse_init",
    "parse_action",
    "error_frame",
    "status_update",
    "action_event_fields",
    "NOT_ATTACHED",
]

NOT_ATTACHED = "Not attached to a session; send initialize first"

# action name -> {arg name: (types, required)}
ACTIONS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "message": {"content": ((str,), True)},
    "run": {"command": ((str,), True), "timeout": ((int, float), False)},
    "read": {"path": ((str,), True)},
    "write": {"path": ((str,), True), "content": ((str,), True)},
}

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
    for key, (types, required) in spec.items():
        if key not in args:
            if required:
                raise ActionError(f"'{name}' needs args.{key}")
            continue
        value = args[key]
        if isinstance(value, bool) or not isinstance(value, types):
            kind = "a string" if types == (str,) else "a number"
            raise ActionError(f"args.{key} must be {kind}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ActionError(f"args.{key} must be finite")
        clean[key] = value
    unknown = set(args) - set(spec)
    if unknown:
        raise ActionError(f"unknown arg(s) for '{name}': {', '.join(sorted(map(str, unknown)))[:200]}")
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
    else:
        message = f"Writing file: {args['path']}"
    return {"source": "user", "message": message, "action": name, "args": dict(args)}
