"""A local stand-in for the GitHub REST API's ``GET /user``, for tests.

``start_standin({"tok": (123, "octocat")})`` serves on 127.0.0.1 (a free port) in a
background thread; pass ``standin.url`` as ``GitHubVerifier(api_url=...)`` or as
``--github-api-url``, and call ``standin.stop()`` at the end. Answers mimic GitHub's:
the private-user JSON for a registered token, ``401 Bad credentials`` for another one,
``401 Requires authentication`` without one. Special tokens trigger failures:

- ``TOKEN_500`` / ``TOKEN_502``: a server error (GitHub's JSON / an HTML gateway page);
- ``TOKEN_SLOW``: answers a registered user's JSON only after ``standin.delay`` seconds
  (the wait ends early on ``stop()``);
- ``TOKEN_MALFORMED``: 200 with a body that is not JSON;
- ``TOKEN_RATE_LIMITED``: 403 with ``x-ratelimit-remaining: 0``, as GitHub does;
- ``TOKEN_REDIRECT``: 302 to ``/redirected`` (a client must not follow it with the token).

``standin.requests[token]`` counts the requests per token (the ``Authorization`` value);
``standin.last_headers`` holds the headers of the last request.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "StandIn",
    "start_standin",
    "github_user_json",
    "TOKEN_500",
    "TOKEN_502",
    "TOKEN_SLOW",
    "TOKEN_MALFORMED",
    "TOKEN_RATE_LIMITED",
    "TOKEN_REDIRECT",
]

TOKEN_500 = "standin-error-500"
TOKEN_502 = "standin-error-502"
TOKEN_SLOW = "standin-slow"
TOKEN_MALFORMED = "standin-malformed"
TOKEN_RATE_LIMITED = "standin-rate-limited"
TOKEN_REDIRECT = "standin-redirect"
SLOW_USER = (424242, "slowpoke")

DOCS = "https://docs.github.com/rest"


def github_user_json(user_id: int, login: str, api: str = "https://api.github.com") -> dict[str, Any]:
    """The private-user object GitHub returns from ``GET /user`` (fields as GitHub sends them)."""
    u = f"{api}/users/{login}"
    return {
        "login": login,
        "id": user_id,
        "node_id": f"U_kgDO{user_id:08d}",
        "avatar_url": f"https://avatars.githubusercontent.com/u/{user_id}?v=4",
        "gravatar_id": "",
        "url": u,
        "html_url": f"https://github.com/{login}",
        "followers_url": f"{u}/followers",
        "following_url": f"{u}/following{{/other_user}}",
        "gists_url": f"{u}/gists{{/gist_id}}",
        "starred_url": f"{u}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{u}/subscriptions",
        "organizations_url": f"{u}/orgs",
        "repos_url": f"{u}/repos",
        "events_url": f"{u}/events{{/privacy}}",
        "received_events_url": f"{u}/received_events",
        "type": "User",
        "user_view_type": "private",
        "site_admin": False,
        "name": login.capitalize(),
        "company": None,
        "blog": "",
        "location": None,
        "email": None,
        "hireable": None,
        "bio": None,
        "twitter_username": None,
        "notification_email": None,
        "public_repos": 3,
        "public_gists": 0,
        "followers": 1,
        "following": 0,
        "created_at": "2015-06-01T12:00:00Z",
        "updated_at": "2025-11-01T12:00:00Z",
        "private_gists": 0,
        "total_private_repos": 0,
        "owned_private_repos": 0,
        "disk_usage": 128,
        "collaborators": 0,
        "two_factor_authentication": True,
        "plan": {"name": "free", "space": 976562499, "collaborators": 0, "private_repos": 10000},
    }


class StandIn:
    """A running stand-in: ``url``, ``users``, ``delay``, ``requests``, ``stop()``."""

    def __init__(self, users: dict[str, tuple[int, str]], delay: float = 5.0) -> None:
        self.users = dict(users)
        self.delay = delay
        self.requests: Counter[str] = Counter()
        self.last_headers: dict[str, str] = {}
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.standin = self  # type: ignore[attr-defined]
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), name="github-standin", daemon=True
        )
        self._thread.start()

    def count(self, token: str) -> int:
        """How many ``GET /user`` requests carried ``token``."""
        with self._lock:
            return self.requests[token]

    def stop(self) -> None:
        """Release slow answers, stop serving, close the port (idempotent)."""
        self._released.set()
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()

    def __enter__(self) -> StandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client (a timed-out verifier) hung up before the answer."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def start_standin(users: dict[str, tuple[int, str]], delay: float = 5.0) -> StandIn:
    """Start a stand-in answering ``GET /user`` for ``users`` (``{token: (id, login)}``)."""
    return StandIn(users, delay)


class _Handler(BaseHTTPRequestHandler):
    server_version = "GitHub.com"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("X-GitHub-Media-Type", "github.v3; format=json")
        self.send_header("X-GitHub-Api-Version-Selected", "2022-11-28")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        standin: StandIn = self.server.standin  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        if path == "/redirected":
            with standin._lock:
                standin.requests["/redirected"] += 1
        if path != "/user":
            self._send(404, {"message": "Not Found", "documentation_url": DOCS, "status": "404"})
            return
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        with standin._lock:
            standin.last_headers = dict(self.headers.items())
            if token:
                standin.requests[token] += 1
        if not self.headers.get("User-Agent"):
            msg = (
                b"Request forbidden by administrative rules. "
                b"Please make sure your request has a User-Agent header"
            )
            self._send(403, msg)
            return
        if scheme.lower() not in ("bearer", "token") or not token:
            doc = "https://docs.github.com/rest/users/users#get-the-authenticated-user"
            self._send(401, {"message": "Requires authentication", "documentation_url": doc, "status": "401"})
            return
        limits = {
            "X-RateLimit-Limit": "5000",
            "X-RateLimit-Remaining": "4999",
            "X-RateLimit-Resource": "core",
        }
        if token == TOKEN_500:
            self._send(500, {"message": "Server Error", "documentation_url": DOCS, "status": "500"})
        elif token == TOKEN_502:
            self.send_response(502)
            page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
        elif token == TOKEN_MALFORMED:
            self._send(200, b"<html>not json</html>", limits)
        elif token == TOKEN_RATE_LIMITED:
            self._send(
                403,
                {
                    "message": "API rate limit exceeded for user ID 1.",
                    "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
                    "status": "403",
                },
                {**limits, "X-RateLimit-Remaining": "0"},
            )
        elif token == TOKEN_REDIRECT:
            self._send(302, b"", {"Location": f"{standin.url}/redirected"})
        elif token == TOKEN_SLOW:
            standin._released.wait(standin.delay)
            self._send(200, github_user_json(*SLOW_USER), limits)
        elif token in standin.users:
            self._send(200, github_user_json(*standin.users[token]), limits)
        else:
            self._send(401, {"message": "Bad credentials", "documentation_url": DOCS, "status": "401"})
