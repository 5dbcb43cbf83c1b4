"""Security end to end (docs/security.md): token revocation, GitHub identity and ownership,
per-user and per-session limits, the action rate limit, Thespian's listeners on loopback,
the exposure warning, secrets kept out of logs and storage, and arbitrary JSON thrown at
``oh_action`` (hypothesis) against one real daemon.

What ``test_protocol_e2e.py`` already covers (the INIT and action error tables, GitHub
401/503, a foreign user's 403, CORS) is not repeated here. Daemons are module-scoped and
each test uses its own sessions (and its own GitHub users where limits count per user).
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionactors import cli
from sessionactors.config import Config, load_config
from sessionactors.errors import ConfigError
from sessionactors.store import open_store

from .daemon_harness import Client, DaemonProcess, running, wait_for
from .github_standin import StandIn, start_standin

# GitHub tokens the stand-in knows: (id, login). CAROL is a real user missing from the allowlist.
ALICE, BOB, CAROL, DAVE, ERIN, FRANK, GRACE, HENRY = (f"gh-token-{n}" for n in "abcdefgh")
USERS = {
    ALICE: (2001, "alice"),
    BOB: (2002, "bob"),
    CAROL: (2003, "carol"),
    DAVE: (2004, "dave"),
    ERIN: (2005, "erin"),
    FRANK: (2006, "frank"),
    GRACE: (2007, "grace"),
    HENRY: (2008, "henry"),
}
ALLOWED = ["alice", "bob", "dave", "erin", "frank", "grace", "henry"]  # not carol

NOT_ATTACHED = {"error": "Not attached to a session; send initialize first", "error_code": 400}
INVALID_TOKEN = {"error": "Invalid token", "error_code": 401}
FORBIDDEN = {"error": "Forbidden", "error_code": 403}
GITHUB_REQUIRED = {"error": "GitHub token required", "error_code": 401}
TOO_MANY_SESSIONS = {"error": "Too many live sessions for this user", "error_code": 429}
TOO_MANY_CONNECTIONS = {"error": "Too many connections to this session", "error_code": 429}
SLOW_DOWN = {"error": "Too many actions; slow down", "error_code": 429}
FAST = {"rate_limit": 1_000_000, "rate_burst": 1_000_000}


def msg(text: str) -> dict[str, Any]:
    return {"action": "message", "args": {"content": text}}


def ver(token: str) -> int:
    """The ``ver`` claim of a session token (no signature check: the daemon did that)."""
    return int(jwt.decode(token, options={"verify_signature": False})["ver"])


def admin_token(d: DaemonProcess) -> str:
    return (d.data_dir / "run" / "admin.token").read_text().strip()


def info(d: DaemonProcess, ok: dict[str, Any], github_token: str | None = None) -> tuple[int, Any]:
    headers = {"X-GitHub-Token": github_token} if github_token else None
    return d.http("GET", f"/api/sessions/{ok['session_id']}", token=ok["token"], headers=headers)


def answer_after(client: Client, before: int, pred: Callable[[dict[str, Any]], bool], what: str) -> Any:
    """The first frame after index ``before`` that satisfies ``pred``."""
    return client.wait(lambda fs: next((f for f in fs[before:] if pred(f)), None), what=what)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    server = start_standin(USERS, delay=1.0)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gh(tmp_path_factory: pytest.TempPathFactory, standin: StandIn) -> Iterator[DaemonProcess]:
    """GitHub identities required, an allowlist, small per-user and per-session limits, debug logs."""
    base = tmp_path_factory.mktemp("gh")
    allowlist = base / "allowlist.txt"
    allowlist.write_text("# who may use this daemon\n" + "\n".join(ALLOWED) + "\n")
    options = {
        "require_github": "true",
        "github_api_url": standin.url,
        "github_allowlist": str(allowlist),
        "max_live_sessions_per_user": 2,
        "max_connections_per_session": 2,
        "close_delay": 30.0,  # sessions stay live: they count against the per-user limit
        "log_level": "debug",  # secrets must stay out of even the most verbose log
    }
    with running(base / "data", **options) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A small action rate limit (5/s, burst 5); plain sessions without GitHub."""
    data = tmp_path_factory.mktemp("limited") / "data"
    with running(data, rate_limit=5, rate_burst=5, close_delay=30.0) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def fuzzd(tmp_path_factory: pytest.TempPathFactory, standin: StandIn) -> Iterator[DaemonProcess]:
    """The daemon the property-based test throws JSON at (GitHub: the stand-in, never the internet)."""
    data = tmp_path_factory.mktemp("fuzz") / "data"
    with running(data, github_api_url=standin.url, close_delay=30.0, fsync="normal", **FAST) as daemon:
        yield daemon


class Bystanders:
    """A client attached to another session and one never attached: neither may get anything.

    ``check()`` is a barrier: each sends an action and waits for its own answer, so a frame
    misdirected to them earlier has arrived by then.
    """

    def __init__(self, make: Callable[..., Client], url: str, **init: Any) -> None:
        self.attached = make(url)
        assert self.attached.init(**init)["status"] == "ok"
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


# -- revocation ---------------------------------------------------------------------------------


def test_revoke_refuses_older_tokens_on_init_and_rest(limited: DaemonProcess, clients: Any) -> None:
    d = limited
    first = clients(d.url)
    ok = first.init()
    sid, old = ok["session_id"], ok["token"]
    first.send(msg("before"))
    first.wait_events(1)
    tab = clients(d.url)
    rejoined = tab.init(token=old)  # the old token works until the revoke
    assert rejoined["session_id"] == sid and ver(old) == ver(rejoined["token"]) == 0
    base = f"/api/sessions/{sid}"
    assert d.http("GET", base, token=old)[0] == 200

    others = Bystanders(clients, d.url)  # another session and an idle connection: untouched
    status, body = d.http("POST", base + "/revoke", token=old)
    assert status == 200 and set(body) == {"token"}, (status, body)
    new = body["token"]
    assert ver(new) == 1
    # The connections that joined with the revoked token are cut off, each told so alone.
    for c in (first, tab):
        c.wait(lambda fs: INVALID_TOKEN in fs, what="the revoked connection's answer")
        assert c.errors() == [INVALID_TOKEN], c.errors()
    others.check()
    record = open_store(d.data_dir).get_session(sid)  # durable: survives a restart
    assert record is not None and record.token_version == 1

    late = clients(d.url)
    for revoked in (old, rejoined["token"]):  # every token issued before the revoke
        assert late.init(token=revoked) == INVALID_TOKEN
        for path in (base, base + "/events?start_id=0", base + "/revoke"):
            method = "POST" if path.endswith("revoke") else "GET"
            assert d.http(method, path, token=revoked) == (401, {"error": "Invalid token"}), path
    assert d.http("GET", base + "/revoke", token=new)[0] == 405

    answer = late.init(token=new, latest=-1)  # the new token keeps the caller's access
    assert answer["session_id"] == sid and ver(answer["token"]) == 1  # a refreshed token keeps ver 1
    assert [e["message"] for e in late.wait_events(1)] == ["before"]
    assert d.http("GET", base, token=answer["token"])[1]["connections"] == 1
    status, events = d.http("GET", base + "/events?start_id=0", token=new)
    assert status == 200 and [e["id"] for e in events] == [0]

    # The cut-off connections get no new event, and their actions are refused until they
    # join again (with the new token).
    late.send(msg("after"))
    late.wait(lambda fs: any(f.get("message") == "after" for f in fs), what="the event after the revoke")
    for c in (first, tab):
        c.send(msg("refused"))
        c.wait(lambda fs: NOT_ATTACHED in fs, what="the refused action's answer")
        assert not any(f.get("message") in ("after", "refused") for f in c.snapshot())
    assert first.init(token=new, latest=0)["session_id"] == sid
    assert [e["message"] for e in first.wait_events(2)] == ["before", "after"]
    others.check()

    status, body = d.http("POST", base + "/revoke", token=new)  # a second revoke: version 2
    assert status == 200 and ver(body["token"]) == 2
    assert d.http("GET", base, token=new)[0] == 401
    assert clients(d.url).init(token=answer["token"]) == INVALID_TOKEN
    assert d.http("GET", base, token=body["token"])[0] == 200


# -- GitHub identity ------------------------------------------------------------------------------


def test_require_github_refuses_init_without_github_token(gh: DaemonProcess, clients: Any) -> None:
    c = clients(gh.url)
    assert c.init() == GITHUB_REQUIRED
    ok = c.init(github_token=ALICE)
    assert ok["status"] == "ok"
    other = clients(gh.url)
    assert other.init(token=ok["token"]) == GITHUB_REQUIRED  # a session token alone is not enough
    assert other.init(token=ok["token"], github_token=ALICE)["session_id"] == ok["session_id"]
    status, body = info(gh, ok, ALICE)
    assert status == 200 and body["connections"] == 2


def test_allowlist_refuses_other_logins(gh: DaemonProcess, clients: Any, standin: StandIn) -> None:
    by = Bystanders(clients, gh.url, github_token=BOB)
    c = clients(gh.url)
    before = standin.count(CAROL)
    assert c.init(github_token=CAROL) == FORBIDDEN  # a valid GitHub user, not on the list
    assert standin.count(CAROL) == before + 1  # refused after GitHub vouched for her
    by.check()
    ok = c.init(github_token=BOB)  # the refused connection stays usable
    assert ok["status"] == "ok"
    assert info(gh, ok, CAROL)[0] == 403


def test_rest_on_github_bound_session_needs_the_owners_github_token(gh: DaemonProcess, clients: Any) -> None:
    c = clients(gh.url)
    ok = c.init(github_token=HENRY)
    c.send(msg("private"))
    c.wait_events(1)
    base = f"/api/sessions/{ok['session_id']}"
    for path, method in ((base, "GET"), (base + "/events?start_id=0", "GET"), (base + "/revoke", "POST")):
        assert gh.http(method, path, token=ok["token"]) == (403, {"error": "Forbidden"}), path
        headers = {"X-GitHub-Token": BOB}
        assert gh.http(method, path, token=ok["token"], headers=headers) == (403, {"error": "Forbidden"})
        headers = {"X-GitHub-Token": "gh-token-nobody"}
        assert gh.http(method, path, token=ok["token"], headers=headers)[0] == 401
    assert ver(ok["token"]) == 0 and info(gh, ok, HENRY)[0] == 200  # nothing was revoked
    status, events = gh.http("GET", base + "/events", token=ok["token"], headers={"X-GitHub-Token": HENRY})
    assert status == 200 and [e["message"] for e in events] == ["private"]


def test_live_sessions_per_user_limit(gh: DaemonProcess, clients: Any) -> None:
    first, second, third = clients(gh.url), clients(gh.url), clients(gh.url)
    ok1 = first.init(github_token=DAVE)
    ok2 = second.init(github_token=DAVE)
    assert ok1["status"] == ok2["status"] == "ok"
    assert third.init(github_token=DAVE) == TOO_MANY_SESSIONS
    third.send(msg("not attached"))
    third.wait(lambda fs: fs[-1] == NOT_ATTACHED, what="unattached after the 429")
    assert clients(gh.url).init(github_token=ERIN)["status"] == "ok"  # another user is unaffected
    # Joining one of their sessions is not a new session: allowed.
    assert third.init(token=ok1["token"], github_token=DAVE)["session_id"] == ok1["session_id"]
    admin = admin_token(gh)
    rows = gh.http("GET", "/api/admin/sessions", token=admin)[1]
    assert sorted(r["session_id"] for r in rows if r["owner_login"] == "dave") == sorted(
        [ok1["session_id"], ok2["session_id"]]
    )
    # The limit counts live sessions: once one is gone, dave may start another.
    headers = {"X-GitHub-Token": DAVE}
    path = f"/api/sessions/{ok2['session_id']}"
    assert gh.http("DELETE", path, token=ok2["token"], headers=headers)[0] == 200
    fourth = clients(gh.url)
    created = wait_for(
        lambda: (a := fourth.init(github_token=DAVE)).get("status") == "ok" and a,
        10,
        "room for a new session",
    )
    assert created["session_id"] not in (ok1["session_id"], ok2["session_id"])


AT_CAPACITY = {"error": "The server is at capacity; try again later", "error_code": 503}


def test_live_sessions_server_wide_limit(tmp_path: Path, clients: Any) -> None:
    # Anonymous INITs (no GitHub user, so no per-user cap) must not exhaust the machine.
    with running(tmp_path / "data", max_live_sessions=2, close_delay=0.5, pool_size=1) as d:
        one, two, three = clients(d.url), clients(d.url), clients(d.url)
        ok1, ok2 = one.init(), two.init()
        assert ok1["status"] == ok2["status"] == "ok"
        assert three.init() == AT_CAPACITY
        assert one.errors() == two.errors() == []  # answered to the sender alone
        three.send(msg("not attached"))
        three.wait(lambda fs: fs[-1] == NOT_ATTACHED, what="unattached after the 503")
        # Joining a live session adds no live session: allowed at capacity.
        assert three.init(token=ok1["token"])["session_id"] == ok1["session_id"]
        one.send(msg("still served"))
        for c in (one, three):
            c.wait(lambda fs: any(f.get("message") == "still served" for f in fs), what="the event")
        # Once a session passivates there is room again; rehydrating one counts like creating.
        two.close()
        info2 = f"/api/sessions/{ok2['session_id']}"
        wait_for(
            lambda: d.http("GET", info2, token=ok2["token"])[1].get("state") == "passivated",
            15,
            "passivation",
        )
        four = clients(d.url)
        assert four.init()["status"] == "ok"
        assert clients(d.url).init(token=ok2["token"]) == AT_CAPACITY
        four.close()
        again = clients(d.url)
        rehydrated = wait_for(
            lambda: (a := again.init(token=ok2["token"])).get("status") == "ok" and a, 15, "room to rehydrate"
        )
        assert rehydrated["session_id"] == ok2["session_id"]


def test_connections_per_session_limit(gh: DaemonProcess, clients: Any) -> None:
    one, two, three = clients(gh.url), clients(gh.url), clients(gh.url)
    ok = one.init(github_token=FRANK)
    assert two.init(token=ok["token"], github_token=FRANK)["status"] == "ok"
    assert three.init(token=ok["token"], github_token=FRANK) == TOO_MANY_CONNECTIONS
    three.send(msg("not attached"))
    three.wait(lambda fs: fs[-1] == NOT_ATTACHED, what="unattached after the 429")
    # A connection already attached may INIT again (it is not a new connection).
    assert one.init(token=ok["token"], github_token=FRANK, latest=-1)["status"] == "ok"
    assert info(gh, ok, FRANK)[1]["connections"] == 2
    two.close()
    wait_for(lambda: info(gh, ok, FRANK)[1]["connections"] == 1, 10, "the second tab to detach")
    assert three.init(token=ok["token"], github_token=FRANK)["session_id"] == ok["session_id"]


# -- the action rate limit -------------------------------------------------------------------------


def test_action_rate_limit_answers_429_to_the_sender_only(limited: DaemonProcess, clients: Any) -> None:
    d = limited
    by = Bystanders(clients, d.url)
    peer_owner = clients(d.url)
    ok = peer_owner.init()
    sender = clients(d.url)
    started = time.monotonic()  # its bucket is full (5) from its connect, just before this
    assert sender.init(token=ok["token"])["status"] == "ok"  # an INIT takes a token too
    burst = 20
    for i in range(burst):
        sender.send(msg(f"burst {i}"))

    def answers() -> tuple[list[str], list[dict[str, Any]]] | None:
        accepted = [e["message"] for e in sender.events() if e["message"].startswith("burst")]
        refused = sender.errors()
        return (accepted, refused) if len(accepted) + len(refused) >= burst else None

    accepted, refused = wait_for(answers, what="an answer to every action of the burst")
    elapsed = time.monotonic() - started
    assert refused and all(f == SLOW_DOWN for f in refused), refused
    assert len(accepted) + len(refused) == burst
    assert 4 <= len(accepted) <= 5 + 5 * elapsed + 1, (len(accepted), elapsed)
    assert accepted == sorted(accepted, key=lambda m: int(m.split()[1]))  # in the order sent
    peer_owner.wait(
        lambda fs: len([f for f in fs if str(f.get("message")).startswith("burst")]) == len(accepted)
    )
    assert peer_owner.errors() == []  # the other tab of the session sees no 429
    by.check()

    # Tokens refill at rate_limit per second: probe until one action is accepted again.
    probes = iter(range(1_000_000))

    def probe() -> bool:
        text, before = f"probe {next(probes)}", len(sender.snapshot())
        sender.send(msg(text))
        frame = answer_after(
            sender, before, lambda f: "error" in f or f.get("message") == text, "probe answer"
        )
        assert "error" not in frame or frame == SLOW_DOWN, frame
        return "error" not in frame

    wait_for(probe, 5, "the bucket to refill")
    peer_owner.wait(lambda fs: any(str(f.get("message")).startswith("probe") for f in fs), what="probe event")
    ids = [e["id"] for e in sender.events()]
    assert ids == list(range(len(ids)))  # refused actions were not stored
    by.check()


# -- Thespian's ports, the actor address, the exposure warning ---------------------------------------


def test_every_listening_socket_of_the_daemon_is_on_loopback(limited: DaemonProcess, clients: Any) -> None:
    d = limited
    oks = [clients(d.url).init() for _ in range(3)]  # several session actor processes
    rows = wait_for(
        lambda: (
            (r := d.http("GET", "/api/admin/sessions", token=admin_token(d))[1])
            and all(x["pid"] for x in r if x["session_id"] in {o["session_id"] for o in oks})
            and r
        ),
        what="the sessions' pids",
    )
    session_pids = {x["pid"] for x in rows if x["session_id"] in {o["session_id"] for o in oks}}
    d.remember_pids()
    assert session_pids <= d.known_pids
    listeners: list[tuple[int, str, int]] = []
    for pid in sorted(d.known_pids):
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        # TCP listeners, and UDP sockets bound with no peer (they receive from anyone who can reach them)
        listeners += [
            (pid, c.laddr.ip, c.laddr.port)
            for c in conns
            if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and c.laddr and not c.raddr)
        ]
    exposed = [x for x in listeners if x[1] not in ("127.0.0.1", "::1")]
    assert not exposed, f"listening beyond loopback: {exposed}"
    ports = {port for _, _, port in listeners}
    assert d.port in ports and d.admin_port in ports, listeners  # HTTP (gateway) and Thespian's admin
    assert session_pids <= {pid for pid, _, _ in listeners}, "each session actor has its own listener"
    assert len(listeners) >= 2 + len(session_pids), listeners


def test_actor_ip_beyond_loopback_needs_multi_host() -> None:
    with pytest.raises(ConfigError) as err:
        Config(actor_ip="192.0.2.10").validate()
    assert err.value.key == "actor_ip" and "actor_ip" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(environ={"SESSIONACTORS_ACTOR_IP": "192.0.2.10", "HOME": "/nonexistent"})
    assert err.value.key == "actor_ip"
    assert Config(actor_ip="192.0.2.10", multi_host=True).validate().actor_ip == "192.0.2.10"
    assert Config(actor_ip="::1").validate().actor_ip == "::1"
    with pytest.raises(ConfigError) as err:
        Config(token_secret="too short").validate()  # refused at start-up, not at the first INIT
    assert err.value.key == "token_secret"


@pytest.mark.parametrize(
    ("host", "require_github", "warns"),
    [
        ("127.0.0.1", False, False),
        ("127.0.0.2", False, False),
        ("localhost", False, False),
        ("::1", False, False),
        ("0.0.0.0", False, True),
        ("::", False, True),
        ("192.0.2.7", False, True),
        ("sessions.example.org", False, True),
        ("0.0.0.0", True, False),
    ],
)
def test_exposure_warning(host: str, require_github: bool, warns: bool) -> None:
    warning = cli.exposure_warning(Config(host=host, require_github=require_github))
    if warns:
        assert warning is not None and host in warning and "require_github" in warning
    else:
        assert warning is None


def test_serve_logs_the_exposure_warning(monkeypatch: Any, caplog: pytest.LogCaptureFixture) -> None:
    """``_serve`` really emits it (the daemon itself is replaced: nothing listens)."""

    class NoDaemon:
        def __init__(self, cfg: Config) -> None:
            self.cfg = cfg

        def run(self) -> int:
            return 0

    monkeypatch.setattr(cli, "Daemon", NoDaemon)
    monkeypatch.setattr(cli, "setup_logging", lambda *args: None)
    with caplog.at_level(logging.WARNING, logger="sessionactors"):
        assert cli._serve(Config(host="0.0.0.0")) == 0
        assert cli._serve(Config(host="127.0.0.1")) == 0
        assert cli._serve(Config(host="0.0.0.0", require_github=True)) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [cli.exposure_warning(Config(host="0.0.0.0"))]


# -- secrets ---------------------------------------------------------------------------------------------


def test_secrets_never_in_logs_events_or_stored_args(
    gh: DaemonProcess, clients: Any, standin: StandIn
) -> None:
    wrong_github = "gh-token-refused-by-github-0123456789"
    in_args = "secret-in-init-args-0123456789"
    c = clients(gh.url)
    ok = c.init(github_token=GRACE, args={"token": in_args, "github_token": GRACE, "model": "m1"})
    assert ok["status"] == "ok"
    c.send(msg("hello"))
    c.send({"action": "run", "args": {"command": "ls"}})
    c.wait_events(3)
    tab = clients(gh.url)
    rejoined = tab.init(token=ok["token"], github_token=GRACE, args={"token": ok["token"]})
    assert rejoined["session_id"] == ok["session_id"]
    refused = clients(gh.url)
    assert refused.init(github_token=wrong_github)["error_code"] == 401
    forged = jwt.encode({"sid": ok["session_id"], "ver": 0}, "f" * 40, algorithm="HS256")
    assert refused.init(token=forged, github_token=GRACE) == INVALID_TOKEN
    assert refused.init(token=ok["token"], github_token=BOB) == FORBIDDEN
    headers = {"X-GitHub-Token": GRACE}
    assert info(gh, ok, GRACE)[0] == 200
    assert gh.http("GET", f"/api/sessions/{ok['session_id']}", token=forged, headers=headers)[0] == 401
    assert standin.count(wrong_github) == 1  # the refused token really went through the verifier

    secrets = {"session token": ok["token"], "refreshed token": rejoined["token"], "forged token": forged}
    secrets |= {"github token": GRACE, "refused github token": wrong_github, "args secret": in_args}
    for name in ("session token", "refreshed token", "forged token"):  # a signature alone is a leak too
        secrets[name + " signature"] = secrets[name].rsplit(".", 1)[1]

    status, events = gh.http(
        "GET", f"/api/sessions/{ok['session_id']}/events", token=ok["token"], headers=headers
    )
    assert status == 200 and len(events) == 3
    store = open_store(gh.data_dir)
    try:
        record = store.get_session(ok["session_id"])
        assert record is not None and record.args == {"model": "m1"}  # secrets stripped from the settings
        assert record.owner_login == "grace"
        stored = json.dumps([events, record.args, record.runtime_state, store.read(ok["session_id"])])
    finally:
        store.close()
    log_text = gh.log_path.read_bytes()
    assert b"DEBUG" in log_text, "the daemon should log at debug level here"
    on_disk = {p: p.read_bytes() for p in gh.data_dir.rglob("*") if p.is_file()}  # db, wal, run/...
    leaks = [f"{name} in the stored events or session record" for name, v in secrets.items() if v in stored]
    leaks += [f"{name} in the daemon log" for name, v in secrets.items() if v.encode() in log_text]
    leaks += [
        f"{name} in {p}" for name, v in secrets.items() for p, data in on_disk.items() if v.encode() in data
    ]
    assert not leaks, f"{leaks} (log: {gh.log_path})"


# -- arbitrary JSON at oh_action (hypothesis) -----------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20)
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_names = st.sampled_from(["message", "run", "read", "write", "initialize", "dance", ""]) | _json
_arg_keys = st.sampled_from(["content", "command", "timeout", "path", "token", "latest_event_id"])
_action_like = st.fixed_dictionaries(
    {"action": _names},
    optional={
        "args": st.dictionaries(_arg_keys | st.text(max_size=6), _json, max_size=4) | _json,
        "token": _json,
        "github_token": _json,
        "latest_event_id": _json,
        "extra": _json,
    },
)
_paths = st.sampled_from(["a.txt", "dir/b.txt", "", ".", "../x", "/etc/passwd", "a/../../b"]) | st.text(
    max_size=12
)
_commands = st.sampled_from(
    ["ls", "fail", "sleep 0", "sleep x", "sleep -1", "sleep 0.01", " ", "sleep nan"]
) | st.text(max_size=12)
_valid = st.one_of(
    st.builds(lambda c: msg(c), st.text(max_size=40)),
    st.builds(lambda c: {"action": "run", "args": {"command": c}}, _commands),
    st.builds(
        lambda c, t: {"action": "run", "args": {"command": c, "timeout": t}},
        _commands,
        st.floats(min_value=0.001, max_value=60) | st.integers(1, 60),
    ),
    st.builds(lambda p: {"action": "read", "args": {"path": p}}, _paths),
    st.builds(
        lambda p, c: {"action": "write", "args": {"path": p, "content": c}}, _paths, st.text(max_size=30)
    ),
)
# What one emit carries: usually one payload, sometimes none or two (extra arguments are ignored).
_emits = st.one_of(
    st.tuples(_json | _action_like | _valid),
    st.tuples(_valid),
    st.tuples(_action_like),
    st.just(()),
    st.tuples(_action_like | _valid, _json),
)


def _defuse(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """An INIT the fuzz sends must not succeed (it would create a session): give it a bad token."""
    if args and isinstance(args[0], dict) and args[0].get("action") == "initialize":
        if args[0].get("token") in (None, ""):
            return ({**args[0], "token": "not-a-token"}, *args[1:])
    return args


def _is_error(frame: dict[str, Any]) -> bool:
    return "error" in frame


def _check_error(frame: dict[str, Any]) -> None:
    assert set(frame) == {"error", "error_code"}, frame
    assert isinstance(frame["error"], str) and frame["error"] and frame["error_code"] in (400, 401), frame


class FuzzState:
    """The clients of one fuzz run: never attached, attached to the fuzzed session, a bystander."""

    def __init__(self, d: DaemonProcess) -> None:
        self.d = d
        self.before = Client(d.url)  # never attached
        self.after = Client(d.url)
        self.ok = self.after.init()
        self.observer = Client(d.url)  # attached to another session: must receive nothing
        self.other = self.observer.init()
        self.observer_base = len(self.observer.snapshot())
        self.barriers = 0

    def marker(self) -> str:
        self.barriers += 1
        return f"barrier-{self.barriers}-2f0c1e"

    def close(self) -> None:
        for c in (self.before, self.after, self.observer):
            c.close()

    def throw(self, emits: list[tuple[Any, ...]]) -> None:
        """One example: every emit from the unattached client, then one by one from the attached one."""
        # Before INIT: every emit gets exactly one error frame, in order; then the barrier's own error.
        start = len(self.before.snapshot())
        for args in emits:
            self.before.sio.emit("oh_action", args)
        self.before.send(msg("barrier"))
        frames = self.before.wait(lambda fs: len(fs) >= start + len(emits) + 1 and fs[start:], 5, "answers")
        assert len(frames) == len(emits) + 1 and frames[-1] == NOT_ATTACHED, (emits, frames)
        for frame in frames:
            _check_error(frame)
        # After INIT: each emit gets one error frame, or events starting with its own action's event.
        for args in emits:
            start = len(self.after.snapshot())
            self.after.sio.emit("oh_action", args)
            marker = self.marker()
            self.after.send(msg(marker))
            frames = self.after.wait(
                lambda fs, m=marker, s0=start: next(
                    (fs[s0:i] for i, f in enumerate(fs) if f.get("message") == m), None
                ),
                timeout=5,
                what="the barrier event",
            )
            errors = [f for f in frames if _is_error(f)]
            user_events = [f for f in frames if isinstance(f.get("id"), int) and f.get("source") == "user"]
            if errors:
                assert len(errors) == 1 and not user_events, (args, frames)
                _check_error(errors[0])
            else:
                assert len(user_events) == 1, (args, frames)
                assert isinstance(args[0], dict) and user_events[0]["action"] == args[0]["action"], (
                    args,
                    frames,
                )
        assert self.d.http("GET", "/api/health") == (200, {"status": "ok"})

    def check_whole_run(self) -> None:
        """The fuzzed session's stored log is contiguous from 0; the bystander got nothing."""
        status, stored = self.d.http(
            "GET",
            f"/api/sessions/{self.ok['session_id']}/events?start_id=0&limit=10000",
            token=self.ok["token"],
        )
        assert status == 200
        assert [e["id"] for e in stored] == list(range(len(stored)))
        markers = [e["message"] for e in stored if str(e.get("message")).startswith("barrier-")]
        assert len(markers) == self.barriers > 0
        wait_for(lambda: len(self.after.events()) >= len(stored), what="every stored event at the fuzzed tab")
        assert [e["id"] for e in self.after.events()] == [e["id"] for e in stored]
        self.observer.send(msg("observer barrier"))
        self.observer.wait(lambda fs: any(f.get("message") == "observer barrier" for f in fs), what="barrier")
        got = self.observer.snapshot()[self.observer_base :]
        assert [f.get("message") for f in got] == ["observer barrier"], got[:5]
        assert self.d.http("GET", "/api/health") == (200, {"status": "ok"})


def test_arbitrary_json_at_oh_action_before_and_after_init(fuzzd: DaemonProcess) -> None:
    """Hypothesis drives one daemon (module fixture) and one set of clients for the whole run."""
    state = FuzzState(fuzzd)
    try:

        @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(emits=st.lists(_emits.map(_defuse), min_size=1, max_size=4))
        def throw(emits: list[tuple[Any, ...]]) -> None:
            state.throw(emits)

        throw()
        state.check_whole_run()
    finally:
        state.close()
