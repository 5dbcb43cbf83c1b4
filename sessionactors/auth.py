"""Credentials: session tokens the daemon signs, and GitHub identities it checks.

``TokenSigner`` issues the session token sent in the INIT answer and verifies the one
a client presents to rejoin: an HS256 JWT naming the session, expiring, signed with a
secret persisted under the data directory (``load_or_create_secrets``) so that tokens
stay valid across restarts, with rotation (``rotate_secret``); a signer made with
``follow=data_dir`` re-reads the files within a second of a rotation (``secrets_file``),
so a running daemon needs no restart. ``GitHubVerifier`` turns
a GitHub token into a ``GitHubUser`` by asking ``GET /user`` of the GitHub REST API
(standard library HTTP, cooperative under eventlet) and ``check_owner`` admits only the
owner to a GitHub-bound session. Neither a token nor a secret ever appears in an
exception message or a log line: ``redact`` is for the rare log that must hint at one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from secrets import token_bytes, token_urlsafe
from typing import Any

import jwt

from .errors import ConfigError, Forbidden, GitHubUnavailable, InvalidGitHubToken, InvalidToken
from .secrets_file import FileSecrets

__all__ = ["TokenClaims", "TokenSigner", "load_or_create_secrets", "rotate_secret", "GitHubUser"]
__all__ += ["GitHubVerifier", "HttpGet", "load_allowlist", "check_owner", "redact"]

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 4096
MIN_SECRET_BYTES = 32
SECRET_FILE, PREVIOUS_FILE, LOCK_FILE = "secret.key", "secret.previous", "secret.lock"
_CLOCK_SKEW = 60.0  # seconds an ``iat`` may lie in the future (clock steps between processes)
_HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
_CLAIMS = ["sid", "iat", "exp", "iss", "ver", "jti"]
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_JWT_ERRORS: list[tuple[type[Exception], str]] = [
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.MissingRequiredClaimError, "missing claim"),
    (jwt.DecodeError, "malformed"),
]


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (rejects bools, NaN, infinities, huge ints)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


@dataclass(frozen=True)
class TokenClaims:
    """What a verified session token says: the session, its validity window, its version."""

    session_id: str
    issued_at: float
    expires_at: float
    token_version: int
    """Compare with ``SessionRecord.token_version``: a lower one is revoked (caller's job)."""


class TokenSigner:
    """Issues and verifies session tokens (JWT, HMAC). ``secrets[0]`` signs, all verify.

    ``follow``: a data dir whose ``secret.key`` (then ``secret.previous``) replace the
    secrets when ``secret.key`` changes, checked before ``issue``/``verify`` at most once a
    second (by ``now``; the first check re-reads). For file secrets only: a configured
    ``token_secret`` is never followed. A failed re-read keeps the secrets held (logged).
    """

    def __init__(
        self,
        secrets: list[bytes],
        *,
        ttl: float = 7 * 24 * 3600,
        algorithm: str = "HS256",
        issuer: str = "sessionactors",
        leeway: float = 0,
        now: Callable[[], float] = time.time,
        follow: Path | None = None,
    ) -> None:
        if not secrets or not all(isinstance(s, bytes) for s in secrets):
            raise ConfigError("token_secret", "at least one secret (bytes) is required")
        if any(len(s) < MIN_SECRET_BYTES for s in secrets):
            raise ConfigError("token_secret", f"every secret must be at least {MIN_SECRET_BYTES} bytes")
        if algorithm not in _HMAC_ALGORITHMS:
            raise ConfigError("token_algorithm", f"must be one of {', '.join(_HMAC_ALGORITHMS)}")
        if (_number(ttl) or 0) <= 0:
            raise ConfigError("token_ttl", "must be a positive number of seconds")
        if _number(leeway) is None or leeway < 0:
            raise ConfigError("token_leeway", "must be a non-negative number of seconds")
        self._secrets = list(secrets)
        self.ttl, self.algorithm, self.issuer, self.leeway = float(ttl), algorithm, issuer, float(leeway)
        self._now = now
        self._files: FileSecrets | None = None
        if follow is not None:
            data_dir = Path(follow)
            self._files = FileSecrets(data_dir / SECRET_FILE, lambda: _reread_secrets(data_dir), now=now)

    def _current(self) -> list[bytes]:
        """The secrets to use now; a rotation on disk swaps the whole list in one assignment."""
        fresh = self._files() if self._files is not None else None
        if fresh and all(isinstance(s, bytes) and len(s) >= MIN_SECRET_BYTES for s in fresh):
            self._secrets = fresh
        return self._secrets

    def issue(self, session_id: str, token_version: int = 0) -> str:
        """A new token for ``session_id``, valid ``ttl`` seconds from now."""
        if not isinstance(session_id, str) or not session_id:
            raise ValueError("session_id must be a non-empty string")
        if type(token_version) is not int or token_version < 0:
            raise ValueError("token_version must be a non-negative integer")
        now = self._now()
        claims = {
            "sid": session_id,
            "iat": int(now),
            "exp": math.ceil(now + self.ttl),
            "iss": self.issuer,
            "ver": token_version,
            "jti": token_urlsafe(16),
        }
        return jwt.encode(claims, self._current()[0], algorithm=self.algorithm)

    def verify(self, token: object) -> TokenClaims:
        """The claims of a token this daemon issued, or ``InvalidToken(reason)``."""
        if not isinstance(token, str):
            raise InvalidToken("not a string")
        if not token:
            raise InvalidToken("empty")
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("oversize")
        if not _JWT_SHAPE.fullmatch(token):
            raise InvalidToken("malformed")
        payload = self._decode(token)
        sid, ver = payload["sid"], payload["ver"]
        iat, exp = _number(payload["iat"]), _number(payload["exp"])
        if not isinstance(sid, str) or not sid or len(sid) > 256:
            raise InvalidToken("bad claim sid")
        if type(ver) is not int or ver < 0:  # type() is int: not a bool
            raise InvalidToken("bad claim ver")
        if iat is None or exp is None:
            raise InvalidToken("bad claim iat/exp")
        now = self._now()
        if now >= exp + self.leeway:
            raise InvalidToken("expired")
        if iat > now + self.leeway + _CLOCK_SKEW:
            raise InvalidToken("issued in the future")
        return TokenClaims(session_id=sid, issued_at=iat, expires_at=exp, token_version=ver)

    def _decode(self, token: str) -> dict[str, Any]:
        """Check the signature against every secret, the algorithm, the issuer, required claims.

        Time claims are checked by ``verify`` with the injectable clock, not by PyJWT.
        """
        options: Any = {"verify_exp": False, "verify_iat": False, "verify_nbf": False, "require": _CLAIMS}
        for secret in self._current():
            try:
                return jwt.decode(
                    token, secret, algorithms=[self.algorithm], issuer=self.issuer, options=options
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                reason = next((r for cls, r in _JWT_ERRORS if isinstance(exc, cls)), "invalid")
                raise InvalidToken(reason) from None
            except (ValueError, TypeError, KeyError):  # fail closed on anything PyJWT lets through
                raise InvalidToken("malformed") from None
        raise InvalidToken("bad signature")


# -- secrets on disk ----------------------------------------------------------------------


@contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """Serialise secret creation and rotation between processes sharing ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0o600: temp file (O_EXCL), fsync, ``os.replace``."""
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}.{token_urlsafe(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_secret(path: Path) -> bytes:
    """The secret stored in ``path`` (its stripped text, utf-8), tightening loose permissions."""
    st = path.stat()
    if st.st_mode & 0o077:
        log.warning("%s was readable by group/others (mode %o); setting it to 0600", path, st.st_mode & 0o777)
        os.chmod(path, 0o600)
    secret = path.read_text(encoding="utf-8").strip().encode("utf-8")
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(str(path), f"holds fewer than {MIN_SECRET_BYTES} bytes of secret")
    return secret


def _new_secret_text() -> str:
    return token_bytes(32).hex() + "\n"


def _read_files(data_dir: Path, keep_previous: bool = True) -> list[bytes]:
    """``secret.key``, then ``secret.previous`` if kept and present; the caller holds the lock."""
    found = [_read_secret(data_dir / SECRET_FILE)]
    if keep_previous and (data_dir / PREVIOUS_FILE).exists():
        found.append(_read_secret(data_dir / PREVIOUS_FILE))
    return found


def _reread_secrets(data_dir: Path) -> list[bytes]:
    """The secrets on disk now, for a following ``TokenSigner`` (never creates a file)."""
    with _locked(data_dir):
        return list(dict.fromkeys(_read_files(data_dir)))


def load_or_create_secrets(
    data_dir: Path,
    configured: str | None = None,
    previous: list[str] | None = None,
    *,
    keep_previous: bool = True,
) -> list[bytes]:
    """The secrets for ``TokenSigner``: the signing one first, then those that still verify.

    ``configured`` (from config/env) wins over the file; otherwise ``<data_dir>/secret.key``
    is read, or created once (32 random bytes, hex, 0o600) even when several processes race.
    ``<data_dir>/secret.previous`` follows when ``keep_previous``; ``previous`` (configured
    older secrets) come last.
    """
    data_dir = Path(data_dir)
    if configured is not None:
        if len(configured.encode("utf-8")) < MIN_SECRET_BYTES:
            raise ConfigError("token_secret", f"must be at least {MIN_SECRET_BYTES} bytes")
        found = [configured.encode("utf-8")]
    else:
        current = data_dir / SECRET_FILE
        with _locked(data_dir):
            if not current.exists():
                _write_atomic(current, _new_secret_text())
                log.info("created a new token secret in %s", current)
            found = _read_files(data_dir, keep_previous)
    found += [p.encode("utf-8") for p in previous or []]
    return list(dict.fromkeys(found))  # drop duplicates, keep order


def rotate_secret(data_dir: Path) -> None:
    """Make a new signing secret; the current one becomes ``secret.previous`` (one kept).

    Signers made with ``follow=data_dir`` (the gateway's, unless ``token_secret`` is
    configured) switch within a second; others keep their secrets until restarted. The
    previous file is written first, so a crash in between never loses the secret that
    signed live tokens.
    """
    data_dir = Path(data_dir)
    current, prev = data_dir / SECRET_FILE, data_dir / PREVIOUS_FILE
    with _locked(data_dir):
        if current.exists():
            _write_atomic(prev, _read_secret(current).decode("utf-8") + "\n")
        _write_atomic(current, _new_secret_text())
    log.info("rotated the token secret in %s", data_dir)


# -- GitHub identity --------------------------------------------------------------------------


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
