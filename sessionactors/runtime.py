"""The runtime plugin API: the stable import path for runtime authors.

``from sessionactors.runtime import Runtime, RuntimeContext, Output, Status, ...``
keeps working across releases; the implementation lives in
``sessionactors.runtimes.base`` (see docs/runtimes.md). ``RuntimeStartError`` and
``ActionError`` are re-exported here too, so that a plugin needs one import.
"""

from __future__ import annotations

from .errors import ActionError, PathEscape, RuntimeStartError
from .runtimes.base import (
    ENTRY_POINT_GROUP,
    Event,
    Output,
    Runtime,
    RuntimeContext,
    Status,
    agent_message,
    error_observation,
    load_runtime,
    observation,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "ActionError",
    "Event",
    "Output",
    "PathEscape",
    "Runtime",
    "RuntimeContext",
    "RuntimeStartError",
    "Status",
    "agent_message",
    "error_observation",
    "load_runtime",
    "observation",
]
