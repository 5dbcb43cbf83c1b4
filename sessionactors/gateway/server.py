"""The Socket.IO gateway: socket events in, actor frames out, and back.

It runs in its own eventlet-patched process (``python -m sessionactors.gateway``,
started and restarted by the daemon) because a patched process cannot host a
multiprocess Thespian system. It holds no session state: only what delivering
frames needs (which connection is routed to which session, the last event id
each connection was sent, per-connection rate limits and pending INITs). The
actors reach it over the bridge (``bridge.py``); it never speaks Thespian.
"""

from __future__ import annotations

import warnings

# eventlet 0.41 warns at import that it is in bug-fix mode (7 lines in every daemon log).
# It is this project's chosen gateway runtime, confined to this process (docs/architecture.md,
# "Choices and their reasons"); the warning says nothing an operator can act on, so it is filtered by its
# text alone: any other warning eventlet gives still shows.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated", category=Warning)

import eventlet  # noqa: E402

eventlet.monkey_patch()

import itertools  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import socketio  # noqa: E402
from engineio import payload as eio_payload  # noqa: E402
from eventlet.event import Event as GreenEvent  # noqa: E402

from ..auth.github import GitHubVerifier, load_allowlist  # noqa: E402
from ..auth.tokens import TokenSigner, gateway_secrets  # noqa: E402
from ..config import Config  # noqa: E402
from ..errors import GATEWAY_BIND_FAILED, ActionError, AuthError, InvalidToken  # noqa: E402
from ..logs import setup_logging  # noqa: E402
from ..metrics import GatewayMetrics  # noqa: E402
from ..protocol import NOT_ATTACHED, error_frame, parse_action, parse_init, split_secrets  # noqa: E402
from .fanout import Fanout, limit_poll_batches  # noqa: E402
from .guards import LogLimiter, close_on_malformed, guard_events, wire_logger  # noqa: E402
from .hosts import HostGuard  # noqa: E402
from .initguard import InitGuard  # noqa: E402
from .links import ActorLink, LinkServer  # noqa: E402
from .ratelimit import Bucket  # noqa: E402

__all__ = ["Gateway", "ActorLink", "main"]

log = logging.getLogger("sessionactors.gateway")


class Gateway(Fanout, LinkServer):
    """python-socketio server plus the routes between connections and actor links."""

    def __init__(self, cfg: Config, signer: TokenSigner, verifier: GitHubVerifier | None) -> None:
        self.cfg = cfg
        self.signer = signer
        self.verifier = verifier
        # Host and Origin are checked by ``hosts`` in front of every route; python-engineio is
        # given the same origin check for its CORS headers ([] would disable both).
        self.hosts = HostGuard(cfg)
        cors: Any = "*" if "*" in cfg.cors_origins else self.hosts.origin_allowed
        limiter = LogLimiter()
        wire_logger("sessionactors.gateway.wire", limiter, logging.INFO)
        # Engine.IO payloads (polling) are refused whole, silently, beyond this many packets
        # (python-engineio's default is 16, and socket.io-client batches every buffered packet
        # into one POST): let the size limit, max_frame_bytes, be the only limit.
        eio_payload.Payload.max_decode_packets = max(16, cfg.max_frame_bytes // 2)
        limit_poll_batches()
        close_on_malformed()
        self.sio = socketio.Server(
            async_mode="eventlet",
            async_handlers=False,  # one connection's actions stay in the order they were sent
            cors_allowed_origins=cors,
            max_http_buffer_size=cfg.max_frame_bytes,
            logger=wire_logger("sessionactors.gateway.socketio", limiter),
            engineio_logger=wire_logger("sessionactors.gateway.engineio", limiter),
        )
        guard_events(self.sio, self._on_reserved)
        self.sio.on("connect", self.on_connect)
        self.sio.on("oh_action", self.on_oh_action)
        self.sio.on("disconnect", self.on_disconnect)
        self.supervisor: ActorLink | None = None
        self.session_links: dict[str, ActorLink] = {}
        self.conn_session: dict[str, str] = {}
        self.conn_last: dict[str, int] = {}
        # conn -> (latest_event_id of its INIT in flight, or None while answering it; the frames
        # that came after it, held in order: one INIT at a time per connection)
        self.pending_init: dict[str, tuple[int | None, list[dict[str, Any]]]] = {}
        self.buckets: dict[str, Bucket] = {}
        self.live: set[str] = set()  # connected sids: a disconnect is counted once
        self.inits = InitGuard(signer, cfg.max_inits_per_connection)
        self.replies: dict[int, GreenEvent] = {}
        self._req = itertools.count(1)
        self.counters: dict[str, int] = {"events_sent": 0, "slow_disconnects": 0}
        self.metrics = GatewayMetrics(self.query)
        self.last_error_code = 0
        # INITs waiting for a supervisor link: (deadline, frame), oldest first
        self.parked: list[tuple[float, dict[str, Any]]] = []

    # -- Socket.IO handlers ----------------------------------------------------------
    def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        self.buckets[sid] = Bucket(self.cfg.rate_limit, self.cfg.rate_burst)
        self.live.add(sid)
        self.metrics.connections.inc()
        return True

    def _on_reserved(self, sid: str | None, name: Any) -> None:
        """An event named ``connect``, ``disconnect``... from a client: never dispatched."""
        bucket = self.buckets.get(sid) if sid is not None else None
        if sid is None or bucket is None or not bucket.take():
            return  # not connected, or flooding: ignored
        self._error(sid, f"Event name {str(name)[:40]!r} is reserved; send actions as oh_action", 400)

    def on_disconnect(self, sid: str, *args: Any) -> None:
        if sid not in self.live:
            return
        self.live.discard(sid)
        self.metrics.connections.dec()
        self.buckets.pop(sid, None)
        self.conn_session.pop(sid, None)
        self.conn_last.pop(sid, None)
        self.pending_init.pop(sid, None)
        self.inits.forget(sid)
        if self.supervisor is not None:
            self.supervisor.send({"t": "disconnect", "conn": sid})

    def on_oh_action(self, sid: str, data: Any = None, *extra: Any) -> None:
        bucket = self.buckets.get(sid)
        if bucket is not None and not bucket.take():
            self._error(sid, "Too many actions; slow down", 429)
            return
        if isinstance(data, dict) and data.get("action") == "initialize":
            pending = self.pending_init.get(sid)
            if pending is not None:  # after the INIT in flight: answers must not cross
                pending[1].append(data)
            elif not self._on_init(sid, data):
                self.metrics.inits.labels(f"error_{self.last_error_code}").inc()
            return
        try:
            action = parse_action(data, self.cfg.max_field_bytes)
        except ActionError as exc:
            self._error(sid, str(exc), 400)
            return
        pending = self.pending_init.get(sid)
        if pending is not None:  # keep order: hold actions until the INIT is answered
            pending[1].append(action)
            return
        started = time.monotonic()
        self._route_action(sid, action)
        if bucket is not None:  # a send that blocked held this connection's reads up
            bucket.stalled(time.monotonic() - started)

    def _route_action(self, sid: str, action: dict[str, Any]) -> None:
        session_id = self.conn_session.get(sid)
        if session_id is None:
            self._error(sid, NOT_ATTACHED, 400)
            return
        frame = {"t": "action", "conn": sid, "session_id": session_id, "action": action}
        self.metrics.actions.labels(action["action"]).inc()
        link = self.session_links.get(session_id)
        if link is not None and link.send(frame):
            return
        if self.supervisor is None or not self.supervisor.send(frame):  # the supervisor buffers it
            self._error(sid, "Server not ready", 503)

    def _on_init(self, sid: str, data: dict[str, Any]) -> bool:
        """Validate an INIT and pass it to the supervisor (True), or answer its error (False)."""
        try:
            req = parse_init(data, self.cfg.max_field_bytes)
        except ActionError as exc:
            self._error(sid, str(exc), 400)
            return False
        if not self.inits.allow(sid):
            self._error(sid, "Too many initialize requests on this connection", 429)
            return False
        session_id = user_id = login = None
        token_version = 0
        claims = None
        try:
            if req.token is not None:
                claims = self.signer.verify(req.token)
                session_id, token_version = claims.session_id, claims.token_version
            if req.github_token is not None:
                if self.verifier is None:
                    raise AuthError("GitHub verification is not configured")
                user = self.verifier.verify(req.github_token)
                user_id, login = user.id, user.login
            elif self.cfg.require_github:
                self._error(sid, "GitHub token required", 401)
                return False
        except InvalidToken as exc:
            log.info("INIT from %s refused: invalid token (%s)", sid, exc.reason)
            self._error(sid, "Invalid token", 401)
            return False
        except AuthError as exc:
            log.info("INIT from %s refused: %s", sid, exc)
            self._error(sid, str(exc), exc.error_code)
            return False
        if sid not in self.buckets:  # it disconnected while GitHub was asked: attach no ghost
            return False
        held = self.pending_init.get(sid, (None, []))[1]
        self.pending_init[sid] = (req.latest_event_id, held)
        self.inits.present(sid, req.token, claims)
        args, secrets = split_secrets(req.args, self.cfg.secret_arg_patterns)
        frame = {
            "t": "init",
            "conn": sid,
            "session_id": session_id,
            "user_id": user_id,
            "user_login": login,
            "args": args,
            "secrets": secrets,  # memory only: the supervisor stores ``args`` alone
            "latest_event_id": req.latest_event_id,
            "token_version": token_version,  # the supervisor refuses a revoked one
        }
        if self.supervisor is None or not self.supervisor.send(frame):
            # Just after a restart of either side: hold it until the supervisor links up.
            self.parked.append((time.monotonic() + self.cfg.link_wait, frame))
            if len(self.parked) == 1:
                eventlet.spawn_n(self._expire_parked)
        return True

    def _expire_parked(self) -> None:
        """Answer 503 the INITs held longer than ``link_wait`` for a supervisor link."""
        while self.parked:
            eventlet.sleep(max(0.01, self.parked[0][0] - time.monotonic()))
            now = time.monotonic()
            while self.parked and self.parked[0][0] <= now:
                _, frame = self.parked.pop(0)
                conn = frame["conn"]
                if conn in self.buckets and self._init_in_flight(conn):
                    self._error(conn, "Server not ready", 503)
                    self.metrics.inits.labels("error_503").inc()
                    self._flush_held(conn)

    def _send_parked(self) -> None:
        parked, self.parked = self.parked, []
        for deadline, frame in parked:
            if frame["conn"] not in self.buckets:
                continue
            if self.supervisor is None or not self.supervisor.send(frame):
                self.parked.append((deadline, frame))

    # -- frames from the actors ----------------------------------------------------------
    def on_actor_frame(self, link: ActorLink, frame: dict[str, Any]) -> None:
        kind = frame.get("t")
        if kind == "emit":
            self._deliver(link, frame["to"], frame["events"])
        elif kind == "init_ok":
            self._init_ok(
                frame["conn"], frame["session_id"], frame.get("token_version", 0), frame.get("latest")
            )
        elif kind == "init_done":  # openhands mode: the token again, as the last frame of the answer
            conn, token = frame["conn"], self.inits.answered.get(frame["conn"])
            if token is not None and self.conn_session.get(conn) == frame.get("session_id"):
                self._emit_one(conn, {"status": "ok", "token": token, "session_id": frame["session_id"]})
        elif kind == "detach":
            self.conn_session.pop(frame["conn"], None)
        elif kind == "metrics":
            self.metrics.observe_session_report(frame)
        elif kind == "reply":
            waiter = self.replies.pop(frame["req"], None)
            if waiter is not None:
                waiter.send((frame["status"], frame["body"]))
        elif kind == "hello":
            link.role = frame.get("role", "?")
            if link.role == "supervisor":
                self.supervisor = link
                self._send_parked()
            elif link.role == "session":
                link.session_id = frame["session_id"]
                self.session_links[frame["session_id"]] = link
                resume = frame.get("resume") or []
                if resume:
                    positions = {c: self.conn_last.get(c, -1) for c in resume if c in self.buckets}
                    link.send({"t": "positions", "conns": positions})

    def on_link_closed(self, link: ActorLink) -> None:
        if link.role == "supervisor" and self.supervisor is link:
            self.supervisor = None
        elif link.session_id is not None and self.session_links.get(link.session_id) is link:
            del self.session_links[link.session_id]

    def _init_ok(self, conn: str, session_id: str, token_version: int, effective: int | None = None) -> None:
        if not self._init_in_flight(conn):
            # Answered already: a session restarted before the supervisor heard that it had
            # attached conn sends it again (its replay is deduplicated by conn_last), or the
            # supervisor refused the INIT meanwhile (its tokens were revoked): no new token.
            return
        latest = self.pending_init.get(conn, (None, []))[0]
        if effective is not None:  # the session clamps a latest_event_id beyond its last id
            latest = effective if latest is None else min(latest, effective)
        if conn not in self.buckets:
            self.pending_init.pop(conn, None)
            return
        self.conn_session[conn] = session_id
        self.conn_last[conn] = -1 if latest is None else latest
        token = self.inits.answer(conn, session_id, token_version)
        self._emit_one(conn, {"status": "ok", "token": token, "session_id": session_id})
        self.metrics.inits.labels("ok").inc()
        self._flush_held(conn)

    def _deliver(self, link: ActorLink, conns: list[str], payloads: list[dict[str, Any]]) -> None:
        for payload in payloads:
            self._let_writers_run(conns)
            event_id = payload.get("id")
            if not isinstance(event_id, int) or isinstance(event_id, bool):
                event_id = None  # not a stored event (a status update's id is a string)
            targets, failed = [], []
            for conn in conns:
                if conn not in self.buckets:
                    continue
                current = link.role == "session" and self.conn_session.get(conn) == link.session_id
                if event_id is not None:
                    if link.role == "session" and not current:
                        continue  # the connection moved to another session
                    if event_id <= self.conn_last.get(conn, -1):
                        continue  # already sent: never twice
                    self.conn_last[conn] = event_id
                elif "error" in payload and not current and self._init_in_flight(conn):
                    failed.append(conn)  # its INIT failed (an error from its session answers an action)
                targets.append(conn)
            if targets:
                self._emit_many(targets, payload)
            for conn in failed:  # after the error: what came after the failed INIT
                self.metrics.inits.labels(f"error_{payload.get('error_code')}").inc()
                self._flush_held(conn)

    def _init_in_flight(self, conn: str) -> bool:
        pending = self.pending_init.get(conn)
        return pending is not None and pending[0] is not None

    def _flush_held(self, conn: str) -> None:
        """The INIT in flight is answered: handle what came after it, in order, up to the next INIT."""
        pending = self.pending_init.get(conn)
        if pending is None:
            return
        held = pending[1]
        self.pending_init[conn] = (None, held)  # frames arriving meanwhile still queue behind
        while held and conn in self.buckets:
            item = held.pop(0)
            if item.get("action") == "initialize":
                if self._on_init(conn, item):
                    return  # in flight now, the rest still held behind it
            else:
                self._route_action(conn, item)
        if self.pending_init.get(conn, (None, None))[1] is held:
            del self.pending_init[conn]

    def _error(self, conn: str, message: str, code: int) -> None:
        self.last_error_code = code
        self._emit_one(conn, error_frame(message, code))

    # -- queries (REST) ------------------------------------------------------------------
    def query(
        self, op: str, session_id: str | None = None, timeout: float = 5.0, **extra: Any
    ) -> tuple[int, Any]:
        """Ask the supervisor over the bridge; (503, ...) when it does not answer."""
        if self.supervisor is None:
            return 503, {"error": "supervisor unreachable"}
        req = next(self._req)
        waiter = GreenEvent()
        self.replies[req] = waiter
        if not self.supervisor.send({"t": "query", "op": op, "session_id": session_id, "req": req, **extra}):
            self.replies.pop(req, None)
            return 503, {"error": "supervisor unreachable"}
        result = waiter.wait(timeout)
        if result is None:
            self.replies.pop(req, None)
            return 503, {"error": "supervisor did not answer"}
        status, body = result
        return status, body


def _exit_with_parent(parent: int) -> None:
    """The daemon restarts us; if it died (SIGKILL), do not linger holding its port."""
    while os.getppid() == parent:
        eventlet.sleep(0.5)
    log.warning("daemon (pid %d) is gone; gateway exiting", parent)
    os._exit(0)


def build(cfg: Config) -> tuple[Gateway, Any]:
    """The gateway and its WSGI application (Socket.IO plus the REST API)."""
    from .rest import RestApp

    secrets, follow = gateway_secrets(cfg)  # the shared store's secret with a store_url
    signer = TokenSigner(secrets, ttl=cfg.token_ttl, follow=follow)
    allowlist = load_allowlist(cfg.github_allowlist) if cfg.github_allowlist else None
    verifier = GitHubVerifier(
        cfg.github_api_url, timeout=cfg.github_timeout, cache_ttl=cfg.github_cache_ttl, allowlist=allowlist
    )
    gateway = Gateway(cfg, signer, verifier)
    gateway.hosts.app = socketio.WSGIApp(gateway.sio, RestApp(gateway, cfg))
    return gateway, gateway.hosts


def main() -> None:
    """Entry point of the gateway process (started by the daemon, never by hand)."""
    from .httpserver import serve_http

    cfg = Config.from_json(os.environ["_SA_GATEWAY_CONFIG"])
    bridge_path = os.environ["_SA_BRIDGE"]
    setup_logging(cfg.log_level, cfg.log_json)
    gateway, app = build(cfg)
    gateway.serve_bridge(bridge_path)
    eventlet.spawn_n(_exit_with_parent, os.getppid())
    try:
        # reuse_port=False: eventlet sets SO_REUSEPORT by default, which let a second daemon
        # bind the same port and the kernel split the connections between the two.
        listener = eventlet.listen((cfg.host, cfg.port), reuse_addr=True, reuse_port=False, backlog=1024)
    except OSError as exc:
        log.error("gateway: cannot listen on %s:%d: %s", cfg.host, cfg.port, exc.strerror or exc)
        raise SystemExit(GATEWAY_BIND_FAILED) from None
    log.info("gateway listening on http://%s:%d", cfg.host, listener.getsockname()[1])
    serve_http(listener, app, cfg)  # bounded against silent connections (httpserver.py)


if __name__ == "__main__":
    main()
