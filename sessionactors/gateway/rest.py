"""The HTTP API served on the Socket.IO port (WSGI; python-socketio's ``WSGIApp`` routes to it).

Session routes take the session token as ``Authorization: Bearer <token>``; a
session bound to a GitHub user also needs that user's ``X-GitHub-Token``. A token
issued before the session's last ``POST /api/sessions/<id>/revoke`` is refused. The
administrative routes (used by ``sessionactors status`` and ``sessions``) take the
admin token the daemon writes to ``<data_dir>/run/admin.token`` (mode 0600).
"""

from __future__ import annotations

import hmac
import json
import logging
import mimetypes
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs

from ..bridge import INSTANCE_ENV, INSTANCE_HEADER
from ..config import Config
from ..errors import AuthError, Forbidden, InvalidToken
from ..store import Store, open_store
from .openhands_api import ROUTES as OPENHANDS_ROUTES
from .openhands_api import OpenHandsApi
from .webclient import WebClient

if TYPE_CHECKING:
    from ..auth.github import GitHubVerifier
    from ..auth.tokens import TokenSigner
    from ..metrics import GatewayMetrics

__all__ = ["RestApp"]

log = logging.getLogger("sessionactors.rest")

_SESSION = re.compile(r"^/api/sessions/([0-9a-f]{1,64})(/events)?/?$")
_FILES = re.compile(r"^/api/sessions/([0-9a-f]{1,64})/files(?:/(.+))?/?$")
_REVOKE = re.compile(r"^/api/sessions/([0-9a-f]{1,64})/revoke/?$")
_ADMIN_SESSION = re.compile(r"^/api/admin/sessions/([0-9a-f]{1,64})/?$")
_STATUS = {200: "200 OK", 400: "400 Bad Request", 401: "401 Unauthorized", 403: "403 Forbidden",
           404: "404 Not Found", 405: "405 Method Not Allowed", 503: "503 Service Unavailable",
           500: "500 Internal Server Error"}  # fmt: skip

StartResponse = Callable[..., Any]


class GatewayPort(Protocol):
    """What the REST API needs of the Socket.IO gateway it shares a port with.

    A protocol rather than an import of ``server.Gateway``: the server builds this app,
    so importing it back would make the two modules a circle.
    """

    signer: TokenSigner
    verifier: GitHubVerifier | None
    metrics: GatewayMetrics

    def query(
        self, op: str, session_id: str | None = None, timeout: float = 5.0, **extra: Any
    ) -> tuple[int, Any]: ...


class RestApp:
    """WSGI application for everything that is not Socket.IO."""

    def __init__(self, gateway: GatewayPort, cfg: Config) -> None:
        self.gateway = gateway
        self.cfg = cfg
        self._store: Store | None = None
        # Which daemon this is (daemon.INSTANCE_ENV): `start` waits for its own, not any.
        self.instance = os.environ.get(INSTANCE_ENV, "")
        self.openhands = OpenHandsApi(gateway, cfg, self._authorize)
        self.web = WebClient(cfg.web_client) if cfg.web_client is not None else None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.cfg.data_dir, **self.cfg.store_options)
        return self._store

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "GET" and path == "/metrics":
            data = self.gateway.metrics.render()
            start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                                      ("Content-Length", str(len(data)))])  # fmt: skip
            return [data]
        if path.rstrip("/") in OPENHANDS_ROUTES:
            return self.openhands(environ, start_response)
        console = "/" if self.web is None else "/console/"  # a web client takes "/" (docs/configuration.md)
        if method == "GET" and path in (console, "/console/", "/console"):
            return self._static("index.html", start_response)
        if method == "GET" and path.startswith("/static/"):
            return self._static(path[len("/static/") :], start_response)
        if self.web is not None and not path.startswith("/api/") and path != "/api":
            return self.web(environ, start_response)
        try:
            status, body = self.route(method, path, environ)
        except Exception:
            log.exception("REST %s %s failed", method, path)
            status, body = 500, {"error": "internal error"}
        data = json.dumps(body).encode()
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
        ]
        if path == "/api/health" and self.instance:
            headers.append((INSTANCE_HEADER, self.instance))
        start_response(_STATUS.get(status, f"{status} Error"), headers)
        return [data]

    def _static(self, name: str, start_response: StartResponse) -> Iterable[bytes]:
        """The web console's files, shipped in the package (never fetched from the internet)."""
        base = (Path(__file__).parent / "static").resolve()
        target = (base / name).resolve()
        if base not in target.parents or not target.is_file():
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        data = target.read_bytes()
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind.endswith("javascript"):
            kind += "; charset=utf-8"
        start_response(
            "200 OK",
            [
                ("Content-Type", kind),
                ("Content-Length", str(len(data))),
                ("Cache-Control", "no-cache"),
                ("X-Content-Type-Options", "nosniff"),
                (
                    "Content-Security-Policy",
                    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:",
                ),
            ],
        )
        return [data]

    def route(self, method: str, path: str, environ: dict[str, Any]) -> tuple[int, Any]:
        if path == "/api/ready":
            return self._ready()
        if path == "/api/health":
            status, _ = self.gateway.query("ping", timeout=2.0)
            if status != 200:
                return 503, {"status": "unavailable"}
            if self.cfg.runtime == "local-unsandboxed":  # the opt-out shows (issue 14)
                return 200, {"status": "ok", "runtime": self.cfg.runtime, "sandboxed": False}
            return 200, {"status": "ok"}
        if path.startswith("/api/admin/"):
            if not self._is_admin(environ):
                return 401, {"error": "admin token required"}
            if path == "/api/admin/sessions" and method == "GET":
                return self.gateway.query("list")
            admin = _ADMIN_SESSION.match(path)
            if admin is not None and method == "DELETE":
                return self.gateway.query("delete", admin.group(1))
            return 404, {"error": "not found"}
        files = _FILES.match(path)
        if files is not None:
            return self._files(method, files.group(1), files.group(2), environ)
        revoke = _REVOKE.match(path)
        if revoke is not None:
            return self._revoke(method, revoke.group(1), environ)
        match = _SESSION.match(path)
        if match is None:
            return 404, {"error": "not found"}
        session_id, events = match.group(1), match.group(2)
        if (events and method != "GET") or (not events and method not in ("GET", "DELETE")):
            return 405, {"error": "method not allowed"}
        status, info = self._authorize(session_id, environ)
        if status != 200:
            return status, info
        if events:
            return self._events(session_id, environ)
        if method == "DELETE":
            return self.gateway.query("delete", session_id)
        keys = ("session_id", "state", "connections", "last_event_id", "node")
        return 200, {k: info[k] for k in keys}

    def _ready(self) -> tuple[int, Any]:
        """Ready when the supervisor answers and the store can be read."""
        status, _ = self.gateway.query("ping", timeout=2.0)
        checks = {"supervisor": status == 200}
        try:
            self.store.count_sessions()
            checks["store"] = True
        except Exception:
            log.exception("readiness: store check failed")
            checks["store"] = False
        ready = all(checks.values())
        return (200 if ready else 503), {"status": "ready" if ready else "not ready", "checks": checks}

    def _files(
        self, method: str, session_id: str, rel: str | None, environ: dict[str, Any]
    ) -> tuple[int, Any]:
        """List a workspace directory or read a file, through the session actor (rehydrated if needed)."""
        if method != "GET":
            return 405, {"error": "method not allowed"}
        status, info = self._authorize(session_id, environ)
        if status != 200:
            return status, info
        if rel is None:
            where = parse_qs(environ.get("QUERY_STRING", "")).get("path", ["."])[0]
            return self.gateway.query("list_files", session_id, timeout=30.0, path=where)
        return self.gateway.query("read_file", session_id, timeout=30.0, path=rel)

    def _revoke(self, method: str, session_id: str, environ: dict[str, Any]) -> tuple[int, Any]:
        """Revoke every token of the session; answer a new one (the caller keeps access)."""
        if method != "POST":
            return 405, {"error": "method not allowed"}
        status, info = self._authorize(session_id, environ)
        if status != 200:
            return status, info
        status, body = self.gateway.query("revoke", session_id)
        if status != 200:
            return status, body
        return 200, {"token": self.gateway.signer.issue(session_id, int(body["token_version"]))}

    def _authorize(self, session_id: str, environ: dict[str, Any]) -> tuple[int, Any]:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if not auth.startswith("Bearer "):
            return 401, {"error": "Invalid token"}
        try:
            claims = self.gateway.signer.verify(auth[len("Bearer ") :].strip())
        except InvalidToken:
            return 401, {"error": "Invalid token"}
        if claims.session_id != session_id:
            return 401, {"error": "Invalid token"}
        status, info = self.gateway.query("info", session_id)
        if status != 200:
            return status, info
        if claims.token_version < int(info.get("token_version") or 0):  # issued before a revoke
            return 401, {"error": "Invalid token"}
        if info.get("owner") is not None:
            github_token = environ.get("HTTP_X_GITHUB_TOKEN")
            try:
                if not github_token or self.gateway.verifier is None:
                    raise Forbidden("no GitHub identity")
                user = self.gateway.verifier.verify(github_token)
                if user.id != info["owner"]:
                    raise Forbidden("another user")
            except AuthError as exc:
                return exc.error_code, {"error": str(exc)}
        return 200, info

    def _events(self, session_id: str, environ: dict[str, Any]) -> tuple[int, Any]:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        try:
            start_id = int(query.get("start_id", ["0"])[0])
            limit = int(query.get("limit", ["1000"])[0])
        except ValueError:
            return 400, {"error": "start_id and limit must be integers"}
        if start_id < 0 or not 1 <= limit <= 10000:
            return 400, {"error": "start_id must be >= 0 and limit between 1 and 10000"}
        return 200, self.store.read(session_id, start_id, limit)

    def _is_admin(self, environ: dict[str, Any]) -> bool:
        try:
            expected = (self.cfg.run_dir / "admin.token").read_text().strip()
        except OSError:
            return False
        auth = environ.get("HTTP_AUTHORIZATION", "")
        return bool(expected) and hmac.compare_digest(auth, f"Bearer {expected}")
