"""The wire protocol (shared/PROTOCOL.md) end to end against a real daemon.

python-socketio clients (and, where a client must misbehave, a raw Engine.IO websocket
spoken by hand with ``websocket-client``) check every INIT and action error row of the
contract, that every error goes to its sender alone and leaves the connection usable,
the exact replay-to-live hand-off under a continuous stream, moving a connection between
sessions, back-pressure on a stuck client, CORS, status updates, and a gateway restart.
The JavaScript client's view is in ``test_js_client.py``.

Daemons that several tests can share are module-scoped (a daemon takes ~2 s to start);
each test uses fresh sessions, so they stay independent.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import engineio.payload
import jwt
import psutil
import pytest
import websocket

from sessionactors.auth.tokens import TokenSigner, load_or_create_secrets

from .daemon_harness import Client, DaemonProcess, running, wait_for
from .github_standin import SLOW_USER, TOKEN_500, TOKEN_SLOW, StandIn, start_standin

FIELD = 1000  # max_field_bytes of the shared daemon
FRAME = 4000  # max_frame_bytes of the shared daemon
ALICE, BOB = "gh-token-alice", "gh-token-bob"
NOT_ATTACHED = {"error": "Not attached to a session; send initialize first", "error_code": 400}
INVALID_TOKEN = {"error": "Invalid token", "error_code": 401}
FAST = {"rate_limit": 1_000_000, "rate_burst": 1_000_000}  # no 429 for the floods below


def msg(text: str) -> dict[str, Any]:
    return {"action": "message", "args": {"content": text}}


def init(**fields: Any) -> dict[str, Any]:
    return {"action": "initialize", "args": {}, **fields}


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    server = start_standin({ALICE: (1001, "alice"), BOB: (1002, "bob")}, delay=1.0)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, standin: StandIn) -> Iterator[DaemonProcess]:
    """Small size limits, GitHub verification against the stand-in, default CORS."""
    data = tmp_path_factory.mktemp("strict") / "data"
    options = {"close_delay": 1.0, "max_field_bytes": FIELD, "max_frame_bytes": FRAME}
    with running(data, github_api_url=standin.url, **options) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A runtime that cannot start, and one allowed cross origin (unrelated; shared to save time)."""
    data = tmp_path_factory.mktemp("broken") / "data"
    options = {"runtime_options": '{"fail_start": true}', "cors_origins": "http://ok.example"}
    with running(data, **options) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A small ``send_buffer`` (20 frames) and no action rate limit: back-pressure tests."""
    data = tmp_path_factory.mktemp("tight") / "data"
    with running(data, close_delay=5.0, send_buffer=20, fsync="normal", **FAST) as daemon:
        yield daemon


class Bystanders:
    """A client attached to another session and one never attached: neither may get anything.

    ``check()`` is a barrier: each sends an action and waits for its own answer, so any frame
    misdirected to them before (in the same emit as the sender's frame) has arrived by then.
    """

    def __init__(self, make: Callable[..., Client], url: str) -> None:
        self.attached = make(url)
        assert self.attached.init()["status"] == "ok"
        self.base = len(self.attached.snapshot())
        self.idle = make(url)
        self.rounds = 0

    def check(self) -> None:
        self.rounds += 1
        n = self.rounds
        self.attached.send(msg(f"barrier {n}"))
        self.idle.send(msg(f"barrier {n}"))
        self.attached.wait(lambda fs: any(f.get("message") == f"barrier {n}" for f in fs), what="barrier")
        self.idle.wait(lambda fs: len(fs) >= n, what="idle barrier")
        after = self.attached.snapshot()[self.base :]
        assert [f.get("message") for f in after] == [f"barrier {i}" for i in range(1, n + 1)], after
        assert self.idle.snapshot() == [NOT_ATTACHED] * n


def session_info(daemon: DaemonProcess, ok: dict[str, Any]) -> dict[str, Any]:
    status, body = daemon.http("GET", f"/api/sessions/{ok['session_id']}", token=ok["token"])
    assert status == 200, (status, body)
    return dict(body)


def emit_raw(client: Client, data: Any) -> None:
    """Emit ``oh_action`` with exactly ``data`` as its argument (a tuple is sent as the arg list)."""
    client.sio.emit("oh_action", data if isinstance(data, tuple) else (data,))


def next_error(client: Client, before: int) -> dict[str, Any]:
    frame = client.wait(lambda fs: next((f for f in fs[before:] if "error" in f), None), what="error frame")
    return dict(frame)


def check_error_frame(frame: dict[str, Any], code: int) -> None:
    assert set(frame) == {"error", "error_code"}, frame
    assert frame["error_code"] == code and isinstance(frame["error"], str) and frame["error"], frame


# -- INIT errors ----------------------------------------------------------------------------------

MALFORMED_INIT: dict[str, Any] = {
    "string": "initialize",
    "list": [init()],
    "number": 42,
    "null": (None,),
    "no_payload": (),
    "token_number": init(token=12345),
    "token_object": init(token={"sid": "x"}),
    "github_token_number": init(github_token=7),
    "args_list": init(args=["a"]),
    "args_string": init(args="a"),
    "latest_string": init(latest_event_id="3"),
    "latest_float": init(latest_event_id=2.5),
    "latest_bool": init(latest_event_id=True),
    "latest_below_minus_one": init(latest_event_id=-2),
    "latest_list": init(latest_event_id=[1]),
    "unknown_field": init(colour="blue"),
    "oversize_args": init(args={"x": "a" * (FIELD + 1)}),
    "oversize_args_many_keys": init(args={f"k{i}": i for i in range(200)}),
    "oversize_token": init(token="a" * (FIELD + 1)),
    "oversize_unicode_field": init(args={"x": "é" * (FIELD // 2 + 1)}),
}


@pytest.mark.parametrize("payload", MALFORMED_INIT.values(), ids=MALFORMED_INIT.keys())
def test_malformed_init_is_400_to_sender_alone(strict: DaemonProcess, clients: Any, payload: Any) -> None:
    by = Bystanders(clients, strict.url)
    c = clients(strict.url)
    emit_raw(c, payload)
    check_error_frame(next_error(c, 0), 400)
    by.check()
    ok = c.init()  # the connection stays open and usable
    assert ok["status"] == "ok", ok
    before = len(c.snapshot())
    emit_raw(c, payload)  # now attached: it stays attached to its session
    check_error_frame(next_error(c, before), 400)
    c.send(msg("still attached"))
    (event,) = c.wait_events(1)
    assert event["id"] == 0 and event["message"] == "still attached"
    assert [f for f in c.snapshot() if "error" in f and f["error_code"] != 400] == []
    by.check()


def _forged_token(session_id: str) -> str:
    now = int(time.time())
    claims = {"sid": session_id, "iat": now, "exp": now + 3600, "iss": "sessionactors", "ver": 0, "jti": "x"}
    return jwt.encode(claims, "another-key-" + "k" * 40, algorithm="HS256")


def _unknown_session_token(daemon: DaemonProcess) -> str:
    """Signed with the daemon's own secret, naming a session that does not exist."""
    return TokenSigner(load_or_create_secrets(daemon.data_dir)).issue("0" * 32)


@pytest.mark.parametrize("kind", ["garbage", "forged", "tampered", "unknown_session"])
def test_bad_token_is_401_to_sender_alone(strict: DaemonProcess, clients: Any, kind: str) -> None:
    by = Bystanders(clients, strict.url)
    ok_other = clients(strict.url).init()
    if kind == "garbage":
        token = "not a token at all"
    elif kind == "forged":
        token = _forged_token(ok_other["session_id"])
    elif kind == "tampered":  # a real token whose payload is swapped: the signature no longer matches
        header, _, signature = ok_other["token"].split(".")
        payload = _forged_token("f" * 32).split(".")[1]
        token = f"{header}.{payload}.{signature}"
    else:
        token = _unknown_session_token(strict)
    c = clients(strict.url)
    assert c.init(token=token) == INVALID_TOKEN
    by.check()
    ok = c.init()
    assert ok["status"] == "ok" and ok["session_id"] != ok_other["session_id"]
    assert c.init(token=token, latest=-1) == INVALID_TOKEN  # attached: stays on its session
    c.send(msg("mine"))
    assert [(e["id"], e["message"]) for e in c.wait_events(1)] == [(0, "mine")]
    assert session_info(strict, ok)["connections"] == 1
    by.check()


def test_expired_token_is_401(tmp_path: Path, clients: Any) -> None:
    with running(tmp_path / "data", token_ttl=1) as d:
        by = Bystanders(clients, d.url)
        a = clients(d.url)
        ok = a.init()
        a.send(msg("before expiry"))
        a.wait_events(1)
        path = f"/api/sessions/{ok['session_id']}"
        wait_for(lambda: d.http("GET", path, token=ok["token"])[0] == 401, 10, "the token to expire")
        b = clients(d.url)
        assert b.init(token=ok["token"]) == INVALID_TOKEN
        assert a.init(token=ok["token"], latest=0) == INVALID_TOKEN
        by.check()
        a.send(msg("still attached"))  # the expired token does not detach a live connection
        assert [e["id"] for e in a.wait_events(2)] == [0, 1]
        assert b.init()["status"] == "ok"  # and the refused connection stays usable


def test_github_token_rejected_is_401(strict: DaemonProcess, clients: Any, standin: StandIn) -> None:
    by = Bystanders(clients, strict.url)
    c = clients(strict.url)
    assert c.init(github_token="gh-token-nobody") == {"error": "Invalid GitHub token", "error_code": 401}
    assert standin.count("gh-token-nobody") >= 1  # really asked the verifier
    unavailable = c.init(github_token=TOKEN_500)  # GitHub failing is not the token's fault
    assert unavailable["error_code"] == 503, unavailable
    by.check()
    assert c.init(github_token=ALICE)["status"] == "ok"


def test_github_bound_session_admits_only_its_user(strict: DaemonProcess, clients: Any) -> None:
    by = Bystanders(clients, strict.url)
    alice = clients(strict.url)
    ok = alice.init(github_token=ALICE)
    assert ok["status"] == "ok"
    alice.send(msg("private"))
    alice.wait_events(1)
    intruder = clients(strict.url)
    forbidden = {"error": "Forbidden", "error_code": 403}
    assert intruder.init(token=ok["token"], github_token=BOB) == forbidden
    assert intruder.init(token=ok["token"]) == forbidden
    assert intruder.events() == []  # not one event of the session leaked
    by.check()
    second_tab = clients(strict.url)
    assert second_tab.init(token=ok["token"], github_token=ALICE)["session_id"] == ok["session_id"]
    assert [e["message"] for e in second_tab.wait_events(1)] == ["private"]
    assert intruder.init(github_token=BOB)["status"] == "ok"  # still usable for its own session
    path = f"/api/sessions/{ok['session_id']}"
    status, body = strict.http("GET", path, token=ok["token"], headers={"X-GitHub-Token": ALICE})
    assert status == 200 and body["connections"] == 2, body
    assert strict.http("GET", path, token=ok["token"], headers={"X-GitHub-Token": BOB})[0] == 403


def test_disconnect_during_github_verification_attaches_no_ghost(
    strict: DaemonProcess, clients: Any, standin: StandIn
) -> None:
    """A connection that leaves while GitHub is asked about its token is not attached after.

    The second INIT waits behind the first and is verified when the first is answered, i.e.
    not in the connection's own handler: the connection can go away meanwhile.
    """
    early = clients(strict.url)
    early.send(init())
    early.send(init(github_token=TOKEN_SLOW))  # the stand-in answers it after 1 s
    early.wait(lambda fs: any(f.get("status") == "ok" for f in fs), what="the first INIT's answer")
    wait_for(lambda: standin.count(TOKEN_SLOW) >= 1, what="the verification to start")
    early.close()
    assert standin.count(TOKEN_SLOW) == 1  # still being verified
    late = clients(strict.url)
    ok = late.init(github_token=TOKEN_SLOW)  # its own verification ends after the early one
    assert ok["status"] == "ok" and standin.count(TOKEN_SLOW) == 2
    admin = (strict.data_dir / "run" / "admin.token").read_text().strip()
    status, rows = strict.http("GET", "/api/admin/sessions", token=admin)
    assert status == 200
    mine = [(r["session_id"], r["connections"]) for r in rows if r["owner"] == str(SLOW_USER[0])]
    assert mine == [(ok["session_id"], 1)], "a session was created for the departed connection"


def test_runtime_that_cannot_start_is_503(broken: DaemonProcess, clients: Any) -> None:
    idle = clients(broken.url)
    c = clients(broken.url)
    c.send(init())
    error = next_error(c, 0)
    check_error_frame(error, 503)
    frames = c.snapshot()
    statuses = [f for f in frames if f.get("status_update")]
    assert [s["id"] for s in statuses][-1] == "STATUS$ERROR_RUNTIME", frames
    assert statuses[-1]["type"] == "error" and statuses[-1]["message"]
    assert frames.index(statuses[-1]) < frames.index(error)  # the error status update comes first
    assert not any(f.get("status") == "ok" for f in frames)
    assert c.sio.connected
    c.send(msg("not attached"))  # stays open, and unattached
    c.wait(lambda fs: fs[-1] == NOT_ATTACHED, what="not attached")
    before = len(c.snapshot())
    c.send(init())  # usable: another INIT is answered the same way
    check_error_frame(next_error(c, before), 503)
    idle.send(msg("barrier"))
    idle.wait(lambda fs: fs, what="barrier")
    assert idle.snapshot() == [NOT_ATTACHED]


# -- oversize frames ----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_oversize_frame_affects_only_its_connection(
    strict: DaemonProcess, clients: Any, transport: str
) -> None:
    """Over ``max_frame_bytes`` Engine.IO refuses the frame; the daemon and others carry on."""
    by = Bystanders(clients, strict.url)
    c = clients(strict.url, transports=[transport])
    ok = c.init()
    c.send(msg("small"))
    c.wait_events(1)
    c.send(msg("x" * (FRAME + 100)))
    # python-engineio closes a websocket that sends an oversize message, and answers an
    # oversize polling POST with 400 and closes that connection too. Either way: no event.
    wait_for(lambda: not c.sio.connected, 10, "the oversize sender to be disconnected")
    wait_for(lambda: session_info(strict, ok)["connections"] == 0, 10, "its detach")
    assert [e["id"] for e in c.events()] == [0]
    assert strict.http("GET", "/api/health") == (200, {"status": "ok"})
    by.check()
    again = clients(strict.url)
    assert again.init(token=ok["token"], latest=0)["session_id"] == ok["session_id"]
    again.send(msg("after"))
    assert [e["message"] for e in again.wait_events(1)] == ["after"]  # no event was stored for it
    assert session_info(strict, ok)["last_event_id"] == 1


# -- action errors ------------------------------------------------------------------------------------------

ACTION_ERRORS: dict[str, Any] = {
    "unknown_action": {"action": "dance", "args": {}},
    "action_not_string": {"action": 5, "args": {}},
    "no_action": {"args": {"content": "x"}},
    "args_not_object": {"action": "message", "args": "hi"},
    "content_number": {"action": "message", "args": {"content": 5}},
    "command_bool": {"action": "run", "args": {"command": True}},
    "timeout_string": {"action": "run", "args": {"command": "ls", "timeout": "5"}},
    "timeout_negative": {"action": "run", "args": {"command": "ls", "timeout": -1}},
    "missing_content": {"action": "message", "args": {}},
    "missing_args": {"action": "write"},
    "write_missing_content": {"action": "write", "args": {"path": "a.txt"}},
    # An unknown arg is accepted and dropped (the OpenHands client wins); a known one keeps its type.
    "image_urls_not_a_list": {"action": "message", "args": {"content": "x", "image_urls": "a.png"}},
    "hidden_not_a_bool": {"action": "run", "args": {"command": "ls", "hidden": 1}},
    "unknown_field": {"action": "message", "args": {"content": "x"}, "colour": 1},
    "empty_command": {"action": "run", "args": {"command": "  "}},
    "path_outside_workspace": {"action": "read", "args": {"path": "../../etc/passwd"}},
    "absolute_path": {"action": "write", "args": {"path": "/tmp/sessionactors-x", "content": ""}},
    "oversize_field": msg("y" * (FIELD + 1)),
    "not_an_object": "message",
    "list": [msg("x")],
    "null": (None,),
    "no_payload": (),
}


@pytest.mark.parametrize("payload", ACTION_ERRORS.values(), ids=ACTION_ERRORS.keys())
def test_action_error_is_400_to_sender_alone(strict: DaemonProcess, clients: Any, payload: Any) -> None:
    by = Bystanders(clients, strict.url)
    sender = clients(strict.url)
    ok = sender.init()
    peer = clients(strict.url)  # a second tab of the same session
    assert peer.init(token=ok["token"])["session_id"] == ok["session_id"]
    before = len(sender.snapshot())
    emit_raw(sender, payload)
    error = next_error(sender, before)
    check_error_frame(error, 400)
    sender.send(msg("after"))
    for tab in (sender, peer):
        assert [(e["id"], e["message"]) for e in tab.wait_events(1)] == [(0, "after")]
    frames = sender.snapshot()
    assert frames.index(error) < frames.index(sender.events()[0])  # answered in order
    assert [f for f in sender.snapshot() if "error" in f] == [error]
    assert [f for f in peer.snapshot() if "error" in f] == []
    by.check()


def test_action_before_init_is_400_and_init_still_works(strict: DaemonProcess, clients: Any) -> None:
    by = Bystanders(clients, strict.url)
    c = clients(strict.url)
    for action in (msg("early"), {"action": "run", "args": {"command": "ls"}}):
        c.send(action)
    c.wait(lambda fs: len(fs) >= 2, what="two errors")
    assert c.snapshot() == [NOT_ATTACHED, NOT_ATTACHED]
    by.check()
    ok = c.init()
    c.send(msg("now"))
    assert [e["id"] for e in c.wait_events(1)] == [0]
    assert session_info(strict, ok)["last_event_id"] == 0  # the early actions were not stored


# -- the replay-to-live hand-off -----------------------------------------------------------------------------


def test_replay_to_live_hand_off_is_exact(tmp_path: Path, clients: Any, monkeypatch: Any) -> None:
    """Tabs join a session that emits continuously; each gets latest+1..last once, in order."""
    # python-engineio's *client* refuses a polling payload of more than 16 packets (its own
    # DoS guard, miguelgrinberg/python-engineio#142), and the server batches all it has queued:
    # lift the client-side guard for the polling tabs of this test.
    monkeypatch.setattr(engineio.payload.Payload, "max_decode_packets", 1_000_000)
    total, window = 500, 10
    with running(tmp_path / "data", close_delay=5.0, fsync="normal", **FAST) as d:
        driver = clients(d.url)
        ok = driver.init()
        all_joined = threading.Event()

        def flood() -> None:  # at most `window` messages in flight: a stream, not one burst
            for i in range(total):
                if i >= window:
                    wait_for(lambda i=i: len(driver.events()) >= i - window, 20, "the driver's events")
                if i == total - 50:  # the last 50 only once every tab has joined
                    all_joined.wait(30)
                driver.send(msg(f"m{i}"))

        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        # (threshold on the driver's received count, transports, latest_event_id or None = absent)
        plan = [
            (20, ["websocket"], None),
            (60, ["websocket"], 30),
            (120, ["polling"], 100),
            (200, ["websocket"], -1),
            (280, ["websocket"], "last"),
            (350, ["polling"], 5),
        ]
        tabs: list[tuple[Client, int]] = []
        produced_during_init = []
        for threshold, transports, latest in plan:
            seen = wait_for(lambda t=threshold: len(driver.events()) >= t and driver.events(), 20, "stream")
            latest_id = seen[-1]["id"] if latest == "last" else latest
            tab = clients(d.url, transports=transports)
            before = len(driver.events())
            answer = tab.init(token=ok["token"], latest=latest_id)
            assert answer["status"] == "ok", answer
            produced_during_init.append(len(driver.events()) - before)
            tabs.append((tab, -1 if latest_id is None else latest_id))
        all_joined.set()
        thread.join(30)
        expected = list(range(total))
        assert [e["id"] for e in driver.wait_events(total, 30)] == expected
        assert [e["message"] for e in driver.events()] == [f"m{i}" for i in range(total)]
        assert sum(n > 0 for n in produced_during_init) >= 3, f"a still stream: {produced_during_init}"
        for tab, latest_id in tabs:
            wait_for(lambda t=tab: caught_up(t.events(), total - 1), 30, "the tab to catch up")
            ids = [e["id"] for e in tab.events()]
            assert ids == list(range(latest_id + 1, total)), (latest_id, _gaps_and_dups(ids))
            ok_index = next(i for i, f in enumerate(tab.snapshot()) if f.get("status") == "ok")
            first_event = next(i for i, f in enumerate(tab.snapshot()) if isinstance(f.get("id"), int))
            assert ok_index < first_event  # the ok comes before the replay
        assert not any("error" in f for c in [driver] + [t for t, _ in tabs] for f in c.snapshot())


def init_answers(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if "status" in f or "error" in f]


def caught_up(events: list[dict[str, Any]], last: int) -> list[dict[str, Any]] | None:
    """``events`` once they reach id ``last``, else None."""
    return events if events and events[-1]["id"] >= last else None


def _gaps_and_dups(ids: list[int]) -> dict[str, Any]:
    dups = sorted({i for i in ids if ids.count(i) > 1})
    gaps = [(a, b) for a, b in itertools.pairwise(ids) if b != a + 1]
    return {"first": ids[:1], "last": ids[-1:], "dups": dups[:10], "jumps": gaps[:10]}


# -- multi-tab: a second INIT moves the connection --------------------------------------------------------------


def test_second_init_moves_the_connection(strict: DaemonProcess, clients: Any) -> None:
    a, b, tab = clients(strict.url), clients(strict.url), clients(strict.url)
    ok_a, ok_b = a.init(), b.init()
    a.send(msg("a0"))
    b.send(msg("b0"))
    a.wait_events(1)
    b.wait_events(1)
    assert tab.init(token=ok_a["token"])["session_id"] == ok_a["session_id"]
    assert [e["message"] for e in tab.wait_events(1)] == ["a0"]
    mark = len(tab.snapshot())
    # INIT to B and, without waiting for its answer, an action: it must land in B
    tab.send(init(token=ok_b["token"]))
    tab.send(msg("t0"))
    answer = tab.wait(lambda fs: next((f for f in fs[mark:] if "status" in f or "error" in f), None))
    assert answer["status"] == "ok" and answer["session_id"] == ok_b["session_id"], answer
    b.wait(lambda fs: any(f.get("message") == "t0" for f in fs), what="t0 in B")
    a.send(msg("a1"))  # A goes on without the tab
    a.wait(lambda fs: any(f.get("message") == "a1" for f in fs), what="a1")
    b.send(msg("b2"))
    tab.wait(lambda fs: any(f.get("message") == "b2" for f in fs), what="b2 in the tab")
    after = [f for f in tab.snapshot()[mark:] if isinstance(f.get("id"), int)]
    assert [(e["id"], e["message"]) for e in after] == [(0, "b0"), (1, "t0"), (2, "b2")]
    assert [e["message"] for e in a.events()] == ["a0", "a1"]  # t0 never reached A
    assert session_info(strict, ok_a)["connections"] == 1
    assert session_info(strict, ok_b)["connections"] == 2


def test_pending_init_is_not_failed_by_an_earlier_action_error(strict: DaemonProcess, clients: Any) -> None:
    """An error answering an action sent *before* a second INIT is not that INIT's answer."""
    a, b, tab = clients(strict.url), clients(strict.url), clients(strict.url)
    ok_a, ok_b = a.init(), b.init()
    assert tab.init(token=ok_a["token"])["session_id"] == ok_a["session_id"]
    tab.send({"action": "read", "args": {"path": "../outside"}})  # refused by session A itself
    tab.send(init(token=ok_b["token"], latest_event_id=-1))
    tab.send(msg("for B"))  # held by the gateway until the INIT is answered
    tab.wait(lambda fs: any(f.get("status") == "ok" for f in fs[1:]), what="the second ok")
    b.wait(lambda fs: any(f.get("message") == "for B" for f in fs), what="the action in B")
    a.send(msg("a barrier"))
    a.wait(lambda fs: any(f.get("message") == "a barrier" for f in fs), what="A barrier")
    assert [e["message"] for e in a.events()] == ["a barrier"], "the held action went to A"
    assert [e["message"] for e in b.events()] == ["for B"]
    tab.wait(lambda fs: any("error" in f for f in fs), what="the read's error")  # (from A's link)
    assert [f["error_code"] for f in tab.errors()] == [400]


def test_back_to_back_inits_end_on_the_last_one(strict: DaemonProcess, clients: Any) -> None:
    """INIT A, INIT B and an action, sent without waiting: answered in order, the action in B."""
    a, b = clients(strict.url), clients(strict.url)
    ok_a, ok_b = a.init(), b.init()
    a.send(msg("a0"))
    b.send(msg("b0"))
    a.wait_events(1)
    b.wait_events(1)
    for round_ in range(4):
        tab = clients(strict.url)
        tab.send(init(token=ok_a["token"]))
        tab.send(init(token=ok_b["token"], latest_event_id=-1))
        tab.send(msg(f"t{round_}"))
        answers = tab.wait(lambda fs: len(init_answers(fs)) >= 2 and init_answers(fs), what="2 answers")
        assert [f.get("session_id") for f in answers] == [ok_a["session_id"], ok_b["session_id"]], answers
        b.wait(lambda fs, r=round_: any(f.get("message") == f"t{r}" for f in fs), what="the action in B")
        a.send(msg(f"a barrier {round_}"))
        a.wait(lambda fs, r=round_: any(f.get("message") == f"a barrier {r}" for f in fs), what="A barrier")
        tab.wait(lambda fs, r=round_: any(f.get("message") == f"t{r}" for f in fs), what="t in the tab")
        after_b = tab.snapshot()[tab.snapshot().index(answers[1]) :]
        got = [e["message"] for e in after_b if isinstance(e.get("id"), int)]
        assert got == [e["message"] for e in b.events()], "after the second ok: exactly B's events"
        assert not any(e["message"].startswith("t") for e in a.events()), "an action went to A"
        assert session_info(strict, ok_a)["connections"] == 1
        assert session_info(strict, ok_b)["connections"] == 2
        tab.close()


# -- back-pressure -----------------------------------------------------------------------------------------------


class RawSocketIO:
    """Socket.IO spoken by hand over one Engine.IO websocket (``websocket-client``)."""

    def __init__(self, url: str, origin: str | None = None) -> None:
        ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        self.ws = websocket.create_connection(ws_url, timeout=10, origin=origin)
        opening = self.ws.recv()
        assert opening.startswith("0{"), opening
        self.ws.send("40")
        connected = self.recv_packet()
        assert connected.startswith("0{"), f"no namespace connect: {connected!r}"
        self.sid = json.loads(connected[1:])["sid"]  # the connection id in the daemon's logs

    def emit(self, payload: Any) -> None:
        self.ws.send("42" + json.dumps(["oh_action", payload]))

    def recv_packet(self) -> str:
        """The next Socket.IO packet (answering Engine.IO pings); '' when the socket closed."""
        while True:
            try:
                data = self.ws.recv()
            except websocket.WebSocketConnectionClosedException:
                return ""
            if data == "2":
                self.ws.send("3")
                continue
            if not data or data == "1":  # nothing, or an Engine.IO close
                return ""
            assert data[0] == "4", data
            return str(data[1:])

    def close(self) -> None:
        self.ws.close()


class RawTab(RawSocketIO):
    """A raw connection whose thread reads (fast) and records every ``oh_event`` payload."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.frames: list[dict[str, Any]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                pkt = self.recv_packet()
            except Exception:
                return
            if not pkt.startswith("2"):
                return  # closed, or a Socket.IO DISCONNECT
            self.frames.append(json.loads(pkt[1:])[1])

    def events(self) -> list[dict[str, Any]]:
        return [f for f in list(self.frames) if isinstance(f.get("id"), int) and "status_update" not in f]

    def wait(
        self, predicate: Callable[[list[dict[str, Any]]], Any], timeout: float = 15, what: str = ""
    ) -> Any:
        return wait_for(lambda: predicate(list(self.frames)), timeout, what or "frames")


def test_stuck_client_is_dropped_and_others_keep_receiving(tight: DaemonProcess) -> None:
    """A client that stops reading is dropped once ``send_buffer`` frames pile up for it.

    Its kernel buffers absorb a few MB first, so the session produces big events: ``read``
    of a 100 kB file. The producing tab keeps at most a few actions in flight (flow control,
    so that it is never behind itself), and must get every event while the other is stuck.
    """
    size, window, extra = 100_000, 4, 5
    d = tight
    tab = RawTab(d.url)
    stuck = RawSocketIO(d.url)
    try:
        tab.emit(init())
        ok = tab.wait(lambda fs: next((f for f in fs if f.get("status") == "ok"), None), what="ok")
        tab.emit({"action": "write", "args": {"path": "big.txt", "content": "z" * size}})
        wait_for(lambda: len(tab.events()) == 2, what="the write")
        stuck.emit(init(token=ok["token"], latest_event_id=1))  # and never read (until the end)
        wait_for(lambda: session_info(d, ok)["connections"] == 2, what="the stuck tab to attach")
        reads, dropped_at = 0, None
        while dropped_at is None or reads < dropped_at + extra:
            assert reads < 200, "the stuck connection was never dropped"
            tab.emit({"action": "read", "args": {"path": "big.txt"}})
            reads += 1
            want = 2 + 2 * max(0, reads - window)
            wait_for(lambda w=want: len(tab.events()) >= w, 10, "the producing tab to keep up")
            if dropped_at is None and session_info(d, ok)["connections"] == 1:
                dropped_at = reads
        total = 2 + 2 * reads
        events = wait_for(lambda: len(tab.events()) >= total and tab.events(), 10, "all events")
        assert [e["id"] for e in events] == list(range(total))
        assert [e.get("observation") or e["action"] for e in events[2:4]] == ["read", "read"]
        assert all(len(e["content"]) == size for e in events if e.get("observation") == "read")
        assert f"connection {stuck.sid} fell 20 frames behind; disconnecting it" in d.log_path.read_text()
        # What the stuck client was sent, read now: ok, events 2..last in order, DISCONNECT
        got: list[Any] = []
        while True:
            pkt = stuck.recv_packet()
            if not pkt.startswith("2"):  # closed, or Socket.IO DISCONNECT ("1")
                break
            got.append(json.loads(pkt[1:])[1])
        assert pkt == "1", f"expected a Socket.IO DISCONNECT, got {pkt[:50]!r}"
    finally:
        tab.close()
        stuck.close()
    assert got[0]["status"] == "ok"
    ids = [f["id"] for f in got if isinstance(f.get("id"), int)]
    assert ids == list(range(2, 2 + len(ids))), _gaps_and_dups(ids)
    assert ids[-1] < total - 1
    fresh = RawTab(d.url)
    try:
        fresh.emit(init(token=ok["token"], latest_event_id=ids[-1]))
        rest = wait_for(lambda: caught_up(fresh.events(), total - 1), 10, "the rest")
        assert [e["id"] for e in rest] == list(range(ids[-1] + 1, total))
    finally:
        fresh.close()


def test_bursts_and_replays_longer_than_send_buffer_are_not_a_slow_client(
    tight: DaemonProcess, clients: Any
) -> None:
    """Frames reach the gateway in bursts (a replay page is one bridge frame): a client that
    reads is not dropped for a backlog the gateway itself has not given it a chance to take."""
    n = 300
    producer = clients(tight.url)
    ok = producer.init()
    for i in range(n):  # one burst, no flow control
        producer.send(msg(f"p{i}"))
    assert [e["id"] for e in producer.wait_events(n)] == list(range(n))
    tabs = [clients(tight.url) for _ in range(3)]
    for tab in tabs:
        tab.send(init(token=ok["token"], latest_event_id=-1))  # three replays of 300 at once
    for tab in tabs:
        assert [e["id"] for e in tab.wait_events(n)] == list(range(n))
        assert tab.sio.connected
    assert session_info(tight, ok)["connections"] == 4


# -- CORS --------------------------------------------------------------------------------------------------------------


def handshake(daemon: DaemonProcess, origin: str | None) -> tuple[int, dict[str, str], str]:
    headers = {"Origin": origin} if origin else {}
    req = urllib.request.Request(daemon.url + "/socket.io/?EIO=4&transport=polling", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def test_cors_default_is_same_origin_only(strict: DaemonProcess) -> None:
    status, headers, body = handshake(strict, "http://evil.example")
    assert status == 403, (status, body)  # refused by the Host/Origin guard (issue 18)
    assert "Access-Control-Allow-Origin" not in headers
    with pytest.raises(websocket.WebSocketBadStatusException):
        RawSocketIO(strict.url, origin="http://evil.example")
    same = f"http://127.0.0.1:{strict.port}"
    status, headers, body = handshake(strict, same)
    assert status == 200 and body.startswith("0{"), (status, body)
    assert headers.get("Access-Control-Allow-Origin") == same
    status, headers, body = handshake(strict, None)  # no Origin: not a browser, accepted
    assert status == 200 and body.startswith("0{")
    RawSocketIO(strict.url, origin=same).close()


def test_cors_configured_origin_is_accepted(broken: DaemonProcess) -> None:
    status, headers, body = handshake(broken, "http://ok.example")
    assert status == 200 and body.startswith("0{"), (status, body)
    assert headers.get("Access-Control-Allow-Origin") == "http://ok.example"
    RawSocketIO(broken.url, origin="http://ok.example").close()
    assert handshake(broken, "http://evil.example")[0] == 403
    same = f"http://127.0.0.1:{broken.port}"  # the server's own origin stays allowed
    status, headers, _ = handshake(broken, same)
    assert status == 200 and headers.get("Access-Control-Allow-Origin") == same


# -- status updates ------------------------------------------------------------------------------------------------------


def _statuses(frames: list[dict[str, Any]]) -> list[str]:
    return [f["id"] for f in frames if f.get("status_update")]


def test_status_updates_for_new_and_rehydrated_sessions(strict: DaemonProcess, clients: Any) -> None:
    c = clients(strict.url)
    ok = c.init()
    frames = c.snapshot()
    for f in frames:
        if f.get("status_update"):
            assert set(f) == {"status_update", "type", "id", "message"} and f["type"] == "info", f
    assert _statuses(frames) == ["STATUS$STARTING_RUNTIME", "STATUS$RUNTIME_STARTED"], frames
    c.send(msg("one"))
    c.wait_events(1)
    joiner = clients(strict.url)  # the runtime is running: no start-up statuses for a second tab
    joiner.init(token=ok["token"])
    joiner.wait_events(1)
    assert _statuses(joiner.snapshot()) == []
    c.close()
    joiner.close()
    wait_for(lambda: session_info(strict, ok)["state"] == "passivated", 10, "passivation")
    back = clients(strict.url)
    assert back.init(token=ok["token"], latest=-1)["status"] == "ok"
    back.send(msg("two"))
    assert [e["id"] for e in back.wait_events(2)] == [0, 1]
    frames = back.snapshot()
    assert _statuses(frames) == ["STATUS$REHYDRATING", "STATUS$STARTING_RUNTIME", "STATUS$RUNTIME_STARTED"]
    # statuses are not stored and not replayed
    status, stored = strict.http("GET", f"/api/sessions/{ok['session_id']}/events", token=ok["token"])
    assert status == 200 and [e["id"] for e in stored] == [0, 1]
    assert not any("status_update" in e for e in stored)


# -- gateway restart ------------------------------------------------------------------------------------------------------


def gateway_pid(daemon: DaemonProcess) -> int | None:
    assert daemon.proc is not None
    for child in psutil.Process(daemon.proc.pid).children(recursive=True):
        try:
            if any("sessionactors.gateway" in part for part in child.cmdline()):
                return int(child.pid)
        except psutil.Error:
            continue
    return None


def test_gateway_kill9_is_restarted_and_clients_resume(tmp_path: Path, clients: Any) -> None:
    with running(tmp_path / "data", close_delay=30.0) as d:
        first = clients(d.url)
        ok = first.init()
        for i in range(3):
            first.send(msg(f"before {i}"))
        assert [e["id"] for e in first.wait_events(3)] == [0, 1, 2]
        victim = gateway_pid(d)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not first.sio.connected, 10, "the client to see the gateway die")
        wait_for(lambda: gateway_pid(d) not in (None, victim), 30, "a new gateway process")
        wait_for(lambda: d.http("GET", "/api/health")[0] == 200, 30, "health after the restart")
        d.remember_pids()
        wait_for(lambda: session_info(d, ok)["connections"] == 0, 10, "the old connection detached")
        other = clients(d.url)  # produce more while the first client is away
        assert other.init(token=ok["token"], latest=2)["status"] == "ok"
        other.send(msg("during 3"))
        other.send(msg("during 4"))
        assert [e["id"] for e in other.wait_events(2)] == [3, 4]
        back = clients(d.url)
        answer = back.init(token=ok["token"], latest=2)
        assert answer["status"] == "ok" and answer["session_id"] == ok["session_id"]
        assert [e["message"] for e in back.wait_events(2)] == ["during 3", "during 4"]
        other.send(msg("live 5"))
        for tab in (back, other):
            tab.wait(lambda fs: any(f.get("id") == 5 for f in fs), what="live event 5")
        assert [e["id"] for e in back.events()] == [3, 4, 5]
        assert [e["id"] for e in other.events()] == [3, 4, 5]
        assert not back.errors() and not other.errors()
