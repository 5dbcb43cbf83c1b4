"""GitHub identities: who a ``github_token`` belongs to, and who may join a bound session.

``GitHubVerifier`` turns a GitHub token into a ``GitHubUser`` by asking ``GET /user`` of the
GitHub REST API (standard library HTTP, cooperative under eventlet; a GitHub Enterprise or a
local stand-in base URL works the same), with a cache and an optional allowlist;
``check_owner`` admits only the owner to a GitHub-bound session. A token never appears in an
exception message or a log line: ``redact`` is for the rare log that must hint at one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, Forbidden, GitHubUnavailable, InvalidGitHubToken

__all__ = ["GitHubUser", "GitHubVerifier", "HttpGet", "load_allowlist", "check_owner", "redact"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GitHubUser:
    """A GitHub account: ``id`` (stable, as a string) binds sessions; ``login`` is for people."""

    id: str
    login: str


HttpGet = Callable[[str, Mapping[str, str], float], tuple[int, Mapping[str, str], bytes]]
"""``http_get(url, headers, timeout) -> (status, lower-cased headers, body)``; raises OSError."""

_MAX_BODY = 1 << 20
_GITHUB_TOKEN = re.compile(r"[\x21-\x7e]{1,1024}")
_LOGIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would forward the Authorization header to the new host."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _urllib_get(url: str, headers: Mapping[str, str], timeout: float) -> tuple[int, dict[str, str], bytes]:
    """The default ``HttpGet``: urllib (honours ``*_proxy`` env vars; eventlet-cooperative)."""
    request = urllib.request.Request(url, headers=dict(headers), method="GET")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(_MAX_BODY),
            )
    except urllib.error.HTTPError as err:
        with err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read(_MAX_BODY)


class GitHubVerifier:
    """Asks GitHub who owns a token; caches successes ``cache_ttl`` s by the token's SHA-256.

    Failures are not cached: a revoked-then-fixed token works at once, and a bad token
    costs one GitHub request per attempt (rate-limiting INIT belongs to the gateway).
    """

    MAX_CACHE = 4096

    def __init__(
        self,
        api_url: str = "https://api.github.com",
        *,
        timeout: float = 5.0,
        cache_ttl: float = 60.0,
        allowlist: set[str] | None = None,
        http_get: HttpGet | None = None,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(api_url, str) or not re.match(r"https?://[^/\s]+", api_url):
            raise ConfigError("github_api_url", "must be an http(s) URL")
        self.url = api_url.rstrip("/") + "/user"
        self.timeout, self.cache_ttl = timeout, cache_ttl
        self.allowlist = None if allowlist is None else {login.lower() for login in allowlist}
        self._http_get: HttpGet = http_get or _urllib_get
        self._now = now
        self._cache: dict[str, tuple[float, GitHubUser]] = {}
        self._lock = threading.Lock()

    def verify(self, github_token: object) -> GitHubUser:
        """The owner of ``github_token``; raises InvalidGitHubToken, GitHubUnavailable, Forbidden."""
        if not isinstance(github_token, str) or not _GITHUB_TOKEN.fullmatch(github_token):
            raise InvalidGitHubToken("malformed")
        key = hashlib.sha256(github_token.encode("ascii")).hexdigest()
        now = self._now()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            user = cached[1]
        else:
            user = self._ask(github_token)
            self._remember(key, now + self.cache_ttl, user)
        if self.allowlist is not None and user.login.lower() not in self.allowlist:
            log.info("GitHub user %s refused: not in the allowlist", user.login)
            raise Forbidden("GitHub user not allowed")
        return user

    def _remember(self, key: str, expires: float, user: GitHubUser) -> None:
        if self.cache_ttl <= 0:
            return
        with self._lock:
            if len(self._cache) >= self.MAX_CACHE:  # drop expired entries, or all when none expired
                now = self._now()
                live = {k: v for k, v in self._cache.items() if v[0] > now}
                self._cache = live if len(live) < self.MAX_CACHE else {}
            self._cache[key] = (expires, user)

    def _ask(self, github_token: str) -> GitHubUser:
        headers = {
            "Authorization": f"Bearer {github_token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "sessionactors",
        }
        try:
            status, resp_headers, body = self._http_get(self.url, headers, self.timeout)
        except Exception as exc:  # URLError, timeout, refused, HTTPException...: never admit silently
            raise self._unavailable(type(exc).__name__) from None
        resp_headers = {k.lower(): v for k, v in resp_headers.items()}
        limited = "retry-after" in resp_headers or resp_headers.get("x-ratelimit-remaining") == "0"
        if status == 429 or (status == 403 and limited):  # GitHub's rate limits: not the token's fault
            raise self._unavailable("rate limited")
        if status in (401, 403):
            log.info("GitHub refused a token (HTTP %d)", status)
            raise InvalidGitHubToken(f"HTTP {status}")
        if status != 200:
            raise self._unavailable(f"HTTP {status}")
        try:
            data = json.loads(body)
            login, user_id = data["login"], data["id"]
        except (ValueError, TypeError, KeyError):
            raise self._unavailable("malformed response") from None
        if not (isinstance(login, str) and login and type(user_id) is int and user_id > 0):
            raise self._unavailable("malformed response")
        return GitHubUser(id=str(user_id), login=login)

    @staticmethod
    def _unavailable(reason: str) -> GitHubUnavailable:
        log.warning("GitHub could not verify a token: %s", reason)
        return GitHubUnavailable(f"GitHub could not verify the token: {reason}")


def load_allowlist(path: Path) -> set[str]:
    """GitHub logins allowed to use the daemon: one per line, ``#`` comments, lower-cased."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("allowlist", f"cannot read {path}: {exc.__class__.__name__}") from None
    logins = set()
    for number, line in enumerate(lines, 1):
        login = line.split("#", 1)[0].strip()
        if not login:
            continue
        if not _LOGIN.fullmatch(login):
            raise ConfigError("allowlist", f"{path} line {number} is not a GitHub login")
        logins.add(login.lower())
    if not logins:
        log.warning("allowlist %s is empty: every GitHub user will be refused", path)
    return logins


def check_owner(record_owner: str | None, user: GitHubUser | None) -> None:
    """Admit ``user`` to a session owned by ``record_owner`` (a GitHub id) or raise Forbidden."""
    if record_owner is None:
        return
    if user is None:
        raise Forbidden("session is bound to a GitHub user; no GitHub token given")
    if user.id != record_owner:
        raise Forbidden("session is bound to another GitHub user")


def redact(value: str) -> str:
    """A loggable hint of a secret: a 4-char prefix (long values only) and the length."""
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    prefix = value[:4] if len(value) >= 16 else ""
    out = f"{prefix}…({len(value)} chars)"
    return out if out != value else "<redacted>"
