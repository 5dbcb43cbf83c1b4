"""The supervisor's registry entry: what it knows of one session, keyed by session id.

Keyed by id and never by ``ActorAddress`` (unhashable, and its text form can change).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Entry"]


@dataclass
class Entry:
    """What the supervisor knows of one session."""

    session_id: str
    owner: str | None
    token_version: int = 0
    state: str = "passivated"
    address: Any = None
    incarnation: int = 0
    conns: dict[str, None] = field(default_factory=dict)
    # conn -> its Attach, from the INIT until the session answers (Attached/AttachFailed):
    # a restart re-sends these, since what reached a dying actor is lost with it.
    attaching: dict[str, Any] = field(default_factory=dict)
    buffered: list[Any] = field(default_factory=list)
    restarts: deque[float] = field(default_factory=deque)
    deleting: bool = False
    pid: int | None = None
