"""The supervisor and session actors' logic, driven by messages (no gateway).

Every test runs on Thespian's simpleSystemBase (fast, in-process) and on
multiprocTCPBase (each actor its own process, a private admin port on loopback),
as Thespian's own test fixture does.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from thespian.actors import ActorSystem

from sessionactors.actors.session import SessionActor
from sessionactors.actors.supervisor import SupervisorActor
from sessionactors.actorsystem import restrict_to_loopback, shutdown_system, system_capabilities
from sessionactors.config import Config
from sessionactors.daemon import group_members, listening_pid
from sessionactors.messages import (
    Action,
    Activate,
    Attach,
    Bounced,
    Configure,
    Configured,
    Detach,
    Disconnect,
    Init,
    Query,
    QueryReply,
)
from sessionactors.protocol import NOT_ATTACHED
from sessionactors.store import SessionRecord, open_store

from .actor_helpers import Collector, Recorder, frames_for, wait_until
from .daemon_harness import free_port


class Harness:
    """A supervisor on simpleSystemBase whose frames land in a Collector."""

    def __init__(self, tmp_path: Any, base: str, **overrides: Any) -> None:
        self.cfg = Config(data_dir=tmp_path, runtime="echo", pool_size=0, actor_base=base, **overrides)
        self.base = base
        self.admin_port = free_port()
        if base == "simpleSystemBase":
            self.asys = ActorSystem(base, transientUnique=True)
        else:
            restrict_to_loopback()
            self.asys = ActorSystem(base, system_capabilities(self.admin_port), transientUnique=True)
        self.collector = self.asys.createActor(Collector)
        self.sup = self.asys.createActor(SupervisorActor)
        reply = self.asys.ask(self.sup, Configure(self.cfg.to_json(), None, self.collector), 5)
        assert isinstance(reply, Configured)

    def tell(self, msg: Any) -> None:
        self.asys.tell(self.sup, msg)

    def frames(self) -> list[dict[str, Any]]:
        return self.asys.ask(self.collector, "frames", 5)

    def to(self, conn: str) -> list[dict[str, Any]]:
        return frames_for(self.frames(), conn)

    def pump(self, seconds: float = 0.02) -> None:
        self.asys.listen(seconds)  # runs due wakeups on simpleSystemBase

    def query(self, op: str, session_id: str | None = None) -> QueryReply:
        return self.asys.ask(self.sup, Query(op, session_id), 5)

    def init(self, conn: str, session_id: str | None = None, latest: int = -1, **kw: Any) -> str:
        self.tell(Init(conn, session_id, latest_event_id=latest, **kw))
        ok = wait_until(lambda: [f for f in self.to(conn) if f.get("status") == "ok"])
        return ok[-1]["session_id"]

    def events(self, conn: str) -> list[dict[str, Any]]:
        return [f for f in self.to(conn) if isinstance(f.get("id"), int)]


@pytest.fixture(params=["simpleSystemBase", "multiprocTCPBase"])
def h(request: Any, tmp_path: Any) -> Any:
    harness = Harness(tmp_path, request.param, close_delay=0.3)
    admin = listening_pid(harness.admin_port) if harness.base != "simpleSystemBase" else None
    pgid = os.getpgid(admin) if admin else None
    yield harness
    shutdown_system(harness.asys, None if harness.base == "simpleSystemBase" else harness.admin_port)
    if pgid is not None:  # the actor system's processes (its admin setsid()s) must all be gone
        wait_until(lambda: not group_members(pgid), 10)


def message(conn: str, sid: str, text: str) -> Action:
    return Action(conn, sid, {"action": "message", "args": {"content": text}})


def test_new_session_answers_ok_then_events(h: Harness) -> None:
    sid = h.init("c1")
    h.tell(message("c1", sid, "hello"))
    events = wait_until(lambda: h.events("c1"))
    assert events[0]["id"] == 0 and events[0]["source"] == "user" and events[0]["message"] == "hello"
    statuses = [f["id"] for f in h.to("c1") if f.get("status_update")]
    assert statuses[:2] == ["STATUS$STARTING_RUNTIME", "STATUS$RUNTIME_STARTED"]
    assert h.query("info", sid).body["state"] == "live"


def test_join_replays_from_latest_and_fans_out(h: Harness) -> None:
    sid = h.init("c1")
    for i in range(5):
        h.tell(message("c1", sid, f"m{i}"))
    wait_until(lambda: len(h.events("c1")) == 5)
    h.init("c2", sid, latest=2)
    assert [e["id"] for e in h.events("c2")] == [3, 4]
    h.tell(message("c2", sid, "from two"))
    wait_until(lambda: len(h.events("c1")) == 6 and len(h.events("c2")) == 3)
    assert h.events("c1")[-1]["message"] == "from two"
    assert h.query("info", sid).body["connections"] == 2


def test_unknown_session_and_action_before_init(h: Harness) -> None:
    h.tell(Init("c1", "no-such-session"))
    wait_until(lambda: h.to("c1"))
    assert h.to("c1") == [{"error": "Invalid token", "error_code": 401}]
    h.tell(message("c9", "whatever", "x"))
    wait_until(lambda: h.to("c9"))
    assert h.to("c9")[0]["error_code"] == 400


def test_passivation_after_close_delay_and_rehydration(h: Harness) -> None:
    sid = h.init("c1")
    h.tell(Action("c1", sid, {"action": "write", "args": {"path": "a.txt", "content": "kept"}}))
    wait_until(lambda: len(h.events("c1")) == 2)
    h.tell(Disconnect("c1"))
    wait_until(lambda: h.query("info", sid).body["state"] == "passivated", pump=h.pump)
    h.init("c2", sid, latest=1)
    h.tell(Action("c2", sid, {"action": "read", "args": {"path": "a.txt"}}))
    wait_until(lambda: any(e.get("observation") == "read" for e in h.events("c2")))
    read = next(e for e in h.events("c2") if e.get("observation") == "read")
    assert read["content"] == "kept" and read["id"] == 3  # ids continue across passivation
    statuses = [f["id"] for f in h.to("c2") if f.get("status_update")]
    assert "STATUS$REHYDRATING" in statuses


def test_reattach_cancels_passivation_timer(h: Harness) -> None:
    """Disconnect, reattach, disconnect again just before the first delay ends."""
    sid = h.init("c1")
    h.tell(Disconnect("c1"))
    t0 = time.monotonic()
    h.init("c2", sid)
    deadline = t0 + 0.25  # just before the first timer (0.3 s) fires
    while time.monotonic() < deadline:
        h.pump(0.01)
    h.tell(Disconnect("c2"))
    t1 = time.monotonic()
    while time.monotonic() < t0 + 0.45:  # the first timer's time has passed
        h.pump(0.01)
    assert h.query("info", sid).body["state"] == "live", "stale timer passivated the session"
    wait_until(lambda: h.query("info", sid).body["state"] == "passivated", pump=h.pump)
    assert time.monotonic() - t1 >= 0.29


def test_busy_runtime_delays_passivation(h: Harness) -> None:
    sid = h.init("c1")
    h.tell(Action("c1", sid, {"action": "run", "args": {"command": "sleep 0.8"}}))
    wait_until(lambda: h.events("c1"))
    h.tell(Disconnect("c1"))
    t0 = time.monotonic()
    wait_until(lambda: h.query("info", sid).body["state"] == "passivated", pump=h.pump)
    assert time.monotonic() - t0 >= 0.7
    h.init("c2", sid)
    ids = [e["id"] for e in h.events("c2")]
    assert ids == [0, 1]  # the action and its observation, stored before passivating


def test_second_init_moves_connection(h: Harness) -> None:
    a = h.init("c1")
    b = h.init("c2")
    h.init("c1", b)
    wait_until(lambda: h.query("info", a).body["connections"] == 0, pump=h.pump)  # once b attached it
    assert h.query("info", b).body["connections"] == 2


def test_moving_on_before_the_last_move_is_confirmed_leaves_no_ghost(h: Harness) -> None:
    # c1 moves a -> b, then b -> c before the supervisor hears that b attached it (the
    # gateway sends the next INIT as soon as b answers; b's Attached comes by another way).
    # It must leave b as well as a: a connection left behind kept b from ever passivating.
    a, b, c = h.init("c1"), h.init("c2"), h.init("c3")
    h.tell(Init("c1", b))
    h.tell(Init("c1", c))
    wait_until(lambda: h.query("info", c).body["connections"] == 2, pump=h.pump)
    wait_until(lambda: h.query("info", a).body["connections"] == 0, pump=h.pump)
    wait_until(lambda: h.query("info", b).body["connections"] == 1, pump=h.pump)  # c2 alone
    h.tell(message("c2", b, "only c2"))
    wait_until(lambda: any(f.get("args", {}).get("content") == "only c2" for f in h.to("c2")))
    h.tell(Disconnect("c2"))  # b's last connection: it passivates
    wait_until(lambda: h.query("info", b).body["state"] == "passivated", 10, pump=h.pump)


def test_delete_session(h: Harness) -> None:
    sid = h.init("c1")
    assert h.query("delete", sid).status == 200
    wait_until(lambda: h.query("info", sid).status == 404, pump=h.pump)
    h.tell(Init("c3", sid))
    wait_until(lambda: h.to("c3"))
    assert h.to("c3")[-1]["error_code"] == 401


def test_session_applies_attach_and_detach_in_the_supervisors_order(tmp_path: Any) -> None:
    # Thespian keeps one sender's messages in order except when a transmit is retried under
    # load; the full-size soak saw a Detach overtake the Attach decided after it, leaving a
    # tab routed to a session that no longer had it ("Not attached" to all its actions).
    cfg = Config(data_dir=tmp_path, runtime="echo", pool_size=0, close_delay=30.0)
    open_store(tmp_path).create_sessions([SessionRecord("s1"), SessionRecord("s2")])
    asys = ActorSystem("simpleSystemBase", transientUnique=True)
    try:
        collector = asys.createActor(Collector)
        supervisor = asys.createActor(Recorder)  # what the session answers lands here
        session = asys.createActor(SessionActor)

        def send(msg: Any) -> None:
            asys.tell(supervisor, ("send", session, msg))

        def to_c1() -> list[dict[str, Any]]:
            return frames_for(asys.ask(collector, "frames", 5), "c1")

        send(Configure(cfg.to_json(), None, collector))
        send(Activate("s1", 1, True, (), False, ()))
        send(Attach("c1", session_id="s1", seq=2))
        send(Detach("c1", seq=1))  # decided before the Attach: stale
        send(message("c1", "s1", "kept"))
        wait_until(lambda: any(f.get("args", {}).get("content") == "kept" for f in to_c1()))
        send(Detach("c1", seq=3))
        send(Attach("c1", session_id="s1", seq=2, latest_event_id=0))  # overtaken: stale
        send(message("c1", "s1", "refused"))
        wait_until(lambda: NOT_ATTACHED in [f.get("error") for f in to_c1()])
        assert [f.get("status") for f in to_c1()].count("ok") == 1  # the stale Attach got no answer
        # An Attach for the session this actor had before being recycled goes back, unapplied.
        stray = Attach("c2", session_id="s2", seq=4)
        send(stray)
        wait_until(lambda: Bounced("s2", stray) in asys.ask(supervisor, "messages", 5))
        assert frames_for(asys.ask(collector, "frames", 5), "c2") == []
    finally:
        asys.shutdown()
