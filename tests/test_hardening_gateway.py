"""Hardening of the gateway against hostile web pages and hostile clients (issue 18).

Each test is the regression test of one finding, against a real daemon: DNS rebinding
(Host and Origin, item 1), reserved event names (3), ghost connections after a malformed
websocket packet (4), the byte budget of queued frames (5), silent TCP connections (6) and
log flooding (7). Raw Engine.IO is spoken with ``websocket-client`` and ``urllib`` because
the real clients cannot send what an attacker sends.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import websocket

from .daemon_harness import DaemonProcess, running, wait_for

FAST = {"rate_limit": 1_000_000, "rate_burst": 1_000_000}


def raw_http(
    daemon: DaemonProcess, path: str, headers: dict[str, str] | None = None, data: bytes | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(daemon.url + path, headers=dict(headers or {}), data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class RawWS:
    """Socket.IO by hand over one Engine.IO websocket; records every ``oh_event`` payload."""

    def __init__(self, daemon: DaemonProcess, read: bool = True, **options: Any) -> None:
        url = daemon.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        self.ws = websocket.create_connection(url, timeout=10, **options)
        assert self.ws.recv().startswith("0{")
        self.ws.send("40")
        assert self.ws.recv().startswith("40")
        self.frames: list[dict[str, Any]] = []
        self.closed = threading.Event()
        if read:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                data = self.ws.recv()
                if data == "2":
                    self.ws.send("3")
                elif data.startswith("42"):
                    self.frames.append(json.loads(data[2:])[1])
                elif not data or data == "1" or data.startswith("41"):
                    break
        except Exception:
            pass
        self.closed.set()

    def emit(self, payload: Any, event: str = "oh_action") -> None:
        self.ws.send("42" + json.dumps([event, payload]))

    def wait(self, pred: Any, what: str, timeout: float = 15.0) -> Any:
        return wait_for(lambda: next((f for f in list(self.frames) if pred(f)), None), timeout, what)

    def init(self, **payload: Any) -> dict[str, Any]:
        self.emit({"action": "initialize", "args": {}, **payload})
        return dict(self.wait(lambda f: f.get("status") == "ok" or "error" in f, "INIT answer"))

    def close(self) -> None:
        self.ws.close()


def run(command: str) -> dict[str, Any]:
    return {"action": "run", "args": {"command": command}}


def gauge(daemon: DaemonProcess) -> float:
    status, body = raw_http(daemon, "/metrics")
    assert status == 200
    line = next(ln for ln in body.decode().splitlines() if ln.startswith("sessionactors_connections "))
    return float(line.split()[1])


def session_connections(daemon: DaemonProcess, ok: dict[str, Any]) -> int:
    status, body = daemon.http("GET", f"/api/sessions/{ok['session_id']}", token=ok["token"])
    assert status == 200, (status, body)
    return int(body["connections"])


def gateway_process(daemon: DaemonProcess) -> psutil.Process:
    assert daemon.proc is not None
    for child in psutil.Process(daemon.proc.pid).children(recursive=True):
        if "sessionactors.gateway" in " ".join(child.cmdline()):
            return child
    raise AssertionError("no gateway process")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon with a reverse proxy's name allowed (the env var) and one CORS origin."""
    data = tmp_path_factory.mktemp("gw") / "data"
    options = {
        "allowed_hosts": "agents.example.com,*.proxy.example",
        "cors_origins": "https://console.example",
    }
    with running(data, **options, **FAST) as daemon:
        yield daemon


# -- 1. DNS rebinding: Host and Origin ---------------------------------------------------------------------------------

ROUTES = [
    "/socket.io/?EIO=4&transport=polling",  # the Engine.IO handshake (polling)
    "/api/health",
    "/api/sessions/abc",
    "/metrics",
    "/",  # the console
    "/static/console.js",
]


@pytest.mark.parametrize("path", ROUTES)
def test_rebinding_host_is_refused_on_every_route(gw: DaemonProcess, path: str) -> None:
    evil = f"evil.example:{gw.port}"
    status, body = raw_http(gw, path, {"Host": evil, "Origin": f"http://{evil}"})
    assert status == 403, (status, body[:200])
    assert "not one of this server's names" in json.loads(body)["error"]
    assert raw_http(gw, path, {"Host": evil})[0] == 403  # no Origin (a same-origin GET) either
    own = f"127.0.0.1:{gw.port}"
    assert raw_http(gw, path, {"Host": own, "Origin": f"http://{own}"})[0] != 403
    assert raw_http(gw, path, {"Host": f"localhost:{gw.port}"})[0] != 403


def test_rebinding_is_refused_on_the_websocket_and_after_the_handshake(gw: DaemonProcess) -> None:
    evil = f"evil.example:{gw.port}"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        RawWS(gw, host=evil, origin=f"http://{evil}")
    assert refused.value.status_code == 403
    # A handshake made under a good Host cannot be continued under a rebound one.
    status, body = raw_http(gw, "/socket.io/?EIO=4&transport=polling")
    assert status == 200
    sid = json.loads(body.decode()[1:])["sid"]
    post = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    assert raw_http(gw, post, {"Host": evil}, data=b"40")[0] == 403
    assert raw_http(gw, post, data=b"40")[0] == 200


def test_origin_must_be_an_allowed_host_or_a_cors_origin(gw: DaemonProcess) -> None:
    own = f"127.0.0.1:{gw.port}"
    for origin, ok in [
        ("http://evil.example", False),
        (f"http://evil.example:{gw.port}", False),
        ("null", False),  # a sandboxed frame, a file:// page
        (f"http://{own}.evil.example", False),
        (f"http://localhost:{gw.port}", True),
        ("https://console.example", True),  # cors_origins
        ("https://agents.example.com", True),  # allowed_hosts, any port
        ("https://a.proxy.example", True),  # allowed_hosts, a wildcard
    ]:
        status, _ = raw_http(gw, "/socket.io/?EIO=4&transport=polling", {"Host": own, "Origin": origin})
        assert (status == 200) is ok and (status == 403) is not ok, (origin, status)
        if not ok:
            with pytest.raises(websocket.WebSocketBadStatusException):
                RawWS(gw, origin=origin)
    RawWS(gw, origin="https://console.example").close()


def test_reverse_proxy_names_are_accepted(gw: DaemonProcess) -> None:
    for host in ("agents.example.com", "agents.example.com:443", "x.proxy.example:8080"):
        status, body = raw_http(gw, "/api/health", {"Host": host, "Origin": f"https://{host}"})
        assert status == 200, (host, status, body)
    ws = RawWS(gw, host="agents.example.com", origin="https://agents.example.com")
    assert ws.init()["status"] == "ok"
    ws.close()
    assert raw_http(gw, "/api/health", {"Host": "proxy.example"})[0] == 403  # *.x is not x itself


# -- 3. reserved event names -------------------------------------------------------------------------------------------


def test_reserved_event_names_are_never_dispatched(tmp_path: Path) -> None:
    with running(tmp_path / "data", rate_limit=0.5, rate_burst=10) as d:
        ws = RawWS(d)
        ok = ws.init()
        assert ok["status"] == "ok"
        for name in ("connect", "disconnect", "connect_error", "*"):
            ws.emit({}, event=name)
            ws.wait(lambda f, n=name: f.get("error_code") == 400 and repr(n) in f["error"], f"400 for {name}")
        ws.ws.send("42[]")  # no event name at all
        wait_for(lambda: len([f for f in ws.frames if f.get("error_code") == 400]) >= 5, 15, "400 for []")
        # Still attached (42["disconnect"] detached it), the gauge counts it once, not -1.
        ws.emit(run("still here"))
        ws.wait(lambda f: f.get("observation") == "run" and "still here" in f["content"], "the run answer")
        assert gauge(d) == 1
        # 42["connect",{}] between actions no longer resets the rate limit.
        for i in range(30):
            ws.emit({}, event="connect")
            ws.emit(run(f"n{i}"))
        ws.wait(lambda f: f.get("error_code") == 429, "a 429")
        ws.close()
        wait_for(lambda: gauge(d) == 0, 15, "the gauge back to 0")
        assert session_connections(d, ok) == 0


# -- 4. ghost connections ----------------------------------------------------------------------------------------------


def test_malformed_websocket_packet_detaches_the_connection(gw: DaemonProcess) -> None:
    owner = RawWS(gw)
    ok = owner.init()
    ghosts = []
    for _ in range(5):
        ghost = RawWS(gw)
        assert ghost.init(token=ok["token"])["status"] == "ok"
        ghosts.append(ghost)
    assert session_connections(gw, ok) == 6
    for ghost in ghosts:
        ghost.ws.send("xyz")  # not an Engine.IO packet: python-engineio closes the websocket
    # Within seconds, not the ping timeout (45 s): the gateway's disconnect path ran.
    wait_for(lambda: session_connections(gw, ok) == 1, 10, "the malformed connections detached")
    for ghost in ghosts:
        assert ghost.closed.wait(10)
    owner.emit(run("owner still works"))
    owner.wait(lambda f: "owner still works" in str(f.get("content")), "the owner's answer")
    owner.close()


# -- 7. log flooding ---------------------------------------------------------------------------------------------------


def test_malformed_packets_do_not_flood_the_log(gw: DaemonProcess) -> None:
    before = gw.log_path.stat().st_size
    ws = RawWS(gw)
    assert ws.init()["status"] == "ok"
    for _ in range(2000):
        ws.ws.send("4x")  # an Engine.IO message that is no Socket.IO packet: a traceback each
    for _ in range(300):
        ws.ws.send("42[]")
    _, body = raw_http(gw, "/socket.io/?EIO=4&transport=polling")
    post = "/socket.io/?EIO=4&transport=polling&sid=" + json.loads(body.decode()[1:])["sid"]
    for _ in range(200):
        raw_http(gw, post, data=b"xyz")
    for _ in range(30):  # and a fresh connection for each malformed packet
        RawWS(gw, read=False).ws.send("xyz")
    ws.emit(run("after the flood"))
    ws.wait(lambda f: "after the flood" in str(f.get("content")), "an answer after the flood", 30)
    grown = gw.log_path.stat().st_size - before
    # Before: 2,000 x 3.2 KB x 2 (engineio's own handler and the root logger) = 12 MB.
    assert grown < 100_000, f"the log grew by {grown} bytes"
    ws.close()


# -- 5. the byte budget of queued frames -------------------------------------------------------------------------------


def test_a_client_that_never_reads_is_dropped_by_bytes(tmp_path: Path) -> None:
    options = {"max_frame_bytes": 2_000_000, "max_field_bytes": 1_000_000, "fsync": "normal"}
    with running(tmp_path / "data", send_buffer_bytes=4_000_000, **options, **FAST) as d:
        owner = RawWS(d)
        ok = owner.init()
        # A small receive buffer: the kernel holds little, the gateway's queue the rest.
        sleeper = RawWS(d, read=False, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 8192),))
        sleeper.emit({"action": "initialize", "args": {}, "token": ok["token"]})
        wait_for(lambda: session_connections(d, ok) == 2, 15, "the sleeper attached")
        gateway = gateway_process(d)
        rss_before = gateway.memory_info().rss
        big = "x" * 900_000
        peak = rss_before
        for i in range(40):  # 80 events of ~0.9 MB: 72 MB
            owner.emit(run(f"{i} {big}"))
            owner.wait(
                lambda f, i=i: f.get("observation") == "run" and f["content"].startswith(f"{i} "), "run"
            )
            peak = max(peak, gateway.memory_info().rss)
        wait_for(lambda: session_connections(d, ok) == 1, 15, "the sleeper dropped")
        grown = (peak - rss_before) / 1e6
        print(
            f"gateway RSS {rss_before / 1e6:.0f} MB -> peak {peak / 1e6:.0f} MB (+{grown:.0f} MB) for 72 MB sent"
        )
        assert grown < 60, f"the gateway grew by {grown:.0f} MB"
        assert len([f for f in owner.frames if f.get("observation") == "run"]) == 40  # nothing lost for it
        sleeper.close()
        owner.close()


# -- 6. silent TCP connections ---------------------------------------------------------------------------------------


def test_silent_connections_are_closed_after_the_idle_timeout(tmp_path: Path) -> None:
    with running(tmp_path / "data", http_idle_timeout=1.5) as d:
        silent = socket.create_connection(("127.0.0.1", d.port))
        silent.settimeout(15)
        started = time.monotonic()
        assert silent.recv(1) == b""  # the server closed it
        assert time.monotonic() - started < 10
        silent.close()


def test_a_flood_of_silent_connections_does_not_block_new_clients(tmp_path: Path) -> None:
    # The default idle timeout (45 s) is far beyond the deadline: the oldest silent
    # connections are closed to keep a tenth of the pool free.
    with running(tmp_path / "data", max_http_connections=50) as d:
        silent = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(300)]
        try:
            started = time.monotonic()
            for _ in range(5):
                wait_for(
                    lambda: d.http("GET", "/api/health")[0] == 200, 15, "/api/health past the silent ones"
                )
            took = time.monotonic() - started
            print(f"5 x /api/health answered in {took:.1f} s with 300 silent connections, a pool of 50")
            assert took < 15
            ws = RawWS(d)  # a Socket.IO client too
            assert ws.init()["status"] == "ok"
            ws.close()
        finally:
            for sock in silent:
                sock.close()


# -- the allow-list itself (no daemon) ---------------------------------------------------------------------------------


def test_host_allow_list_rules() -> None:
    from sessionactors.config import Config
    from sessionactors.errors import ConfigError
    from sessionactors.gateway.hosts import HostGuard

    guard = HostGuard(Config(data_dir=Path("/unused"), port=3000, allowed_hosts=("agents.example.com:8443",)))
    for host, ok in [
        ("127.0.0.1:3000", True),
        ("LOCALHOST:3000", True),
        ("localhost.:3000", True),
        ("[::1]:3000", True),
        ("localhost", False),  # port 80
        ("127.0.0.1:3001", False),
        ("10.0.0.5:3000", False),  # an address the daemon is not bound to
        ("agents.example.com:8443", True),
        ("agents.example.com", False),
        ("evil.example:3000", False),
        ("localhost:3000@evil.example", False),
        ("localhost:abc", False),
        ("", False),
        (None, False),
    ]:
        assert guard.host_allowed(host) is ok, host
    assert guard.host_allowed("agents.example.com", "https") is False  # 443, not 8443
    wildcard = HostGuard(Config(data_dir=Path("/unused"), host="0.0.0.0", port=80))
    assert wildcard.host_allowed("10.0.0.5") and wildcard.host_allowed("localhost")
    assert not wildcard.host_allowed("evil.example")  # an IP literal cannot be rebound; a name can
    with pytest.raises(ConfigError, match="allowed_hosts"):
        Config(data_dir=Path("/unused"), allowed_hosts=("http://agents.example.com",)).validate()
