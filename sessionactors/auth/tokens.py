"""Session tokens: the credentials the daemon signs (GitHub identities: ``github.py``).

``TokenSigner`` issues the session token sent in the INIT answer and verifies the one
a client presents to rejoin: an HS256 JWT naming the session, expiring, signed with a
secret persisted under the data directory (``load_or_create_secrets``) so that tokens
stay valid across restarts, with rotation (``rotate_secret``); a signer made with
``follow=data_dir`` re-reads the files within a second of a rotation (``secrets_file``),
so a running daemon needs no restart. Neither a token nor a secret ever appears in an
exception message or a log line.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from secrets import token_bytes, token_urlsafe
from typing import TYPE_CHECKING, Any

import jwt

from ..errors import ConfigError, InvalidToken
from .secrets import FileSecrets

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["TokenClaims", "TokenSigner", "gateway_secrets", "load_or_create_secrets", "rotate_secret"]

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

    def signed_by_current(self, token: str) -> bool:
        """True when ``token`` is signed with the secret that signs now (not a previous one
        kept after a rotation): a rejoin with an older one is answered with a new token."""
        options: Any = {"verify_exp": False, "verify_iat": False, "verify_nbf": False}
        try:
            jwt.decode(token, self._current()[0], algorithms=[self.algorithm], options=options)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            return False
        return True

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


def gateway_secrets(cfg: Config) -> tuple[list[bytes], Path | None]:
    """A gateway's token secrets, and the data dir its signer follows (None: fixed).

    A configured ``token_secret`` wins. With a shared store (``store_url``) the secret
    lives in the store, created once by whichever gateway starts first, so that every
    gateway of the cluster verifies every token; otherwise ``<data_dir>/secret.key``."""
    if cfg.token_secret is None and cfg.store_url:
        from ..store import open_store  # only here: the file-secret path needs no store

        store = open_store(cfg.data_dir, **cfg.store_options)
        try:
            found = store.token_secrets(_new_secret_text().strip())  # type: ignore[attr-defined]
        finally:
            store.close()
        return [s.encode("utf-8") for s in found], None
    follow = None if cfg.token_secret else cfg.data_dir
    return load_or_create_secrets(cfg.data_dir, cfg.token_secret), follow
