"""Helpers for driving the actors directly (no gateway): a frame collector and waits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from thespian.actors import Actor

from sessionactors.messages import Frame

from .daemon_harness import wait_for


class Collector(Actor):
    """Test actor standing in for the gateway: keeps every bridge frame it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[dict[str, Any]] = []

    def receiveMessage(self, msg: Any, sender: Any) -> None:
        if isinstance(msg, Frame):
            self.frames.append(msg.frame)
        elif msg == "frames":
            self.send(sender, list(self.frames))


class Recorder(Actor):  # type: ignore[misc]
    """Stands in for the supervisor: ``("send", target, msg)`` sends ``msg`` as itself (so
    answers come back here), ``"messages"`` answers every other message it received."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[Any] = []

    def receiveMessage(self, msg: Any, sender: Any) -> None:
        if isinstance(msg, tuple) and len(msg) == 3 and msg[0] == "send":
            self.send(msg[1], msg[2])
        elif msg == "messages":
            self.send(sender, list(self.got))
        else:
            self.got.append(msg)


def frames_for(frames: list[dict[str, Any]], conn: str) -> list[dict[str, Any]]:
    """Every payload the gateway would have emitted to ``conn``, in order."""
    out: list[dict[str, Any]] = []
    for frame in frames:
        if frame["t"] == "emit" and conn in frame["to"]:
            out.extend(frame["events"])
        elif frame["t"] == "init_ok" and frame["conn"] == conn:
            out.append({"status": "ok", "session_id": frame["session_id"]})
    return out


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, pump: Callable[[], None] | None = None
) -> Any:
    """``wait_for`` with the actor tests' defaults."""
    return wait_for(predicate, timeout, "actor condition", pump)
