"""Which ``Host`` and ``Origin`` the gateway answers: the guard against DNS rebinding.

A web page from any site can make the browser send requests to 127.0.0.1 once the
site's DNS name resolves there (DNS rebinding); the browser then sends ``Host:
evil.example:3000`` and, being same-origin as far as it knows, ``Origin:
http://evil.example:3000``. python-engineio accepts an Origin equal to the request's own
Host, so nothing refused it. ``HostGuard`` is a WSGI middleware in front of everything
the port serves (Socket.IO on both transports, the REST API, the console and the web
client): a request whose Host is not one of the daemon's own names, or whose Origin is
neither such a name nor one of ``cors_origins``, gets a 403 before any handler runs (for a
websocket: a refused handshake). See docs/security.md, "Threat model: a hostile web page".
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from ..config import Config
from .guards import tag_connection

__all__ = ["HostGuard", "allowed_host_names", "split_host"]

log = logging.getLogger("sessionactors.gateway")

_WILDCARD_BINDS = ("0.0.0.0", "::", "")


def split_host(value: str, default_port: int | None) -> tuple[str, int | None] | None:
    """``name[:port]`` (``[v6]:port`` too) as (lower-case name, port); None when malformed."""
    value = value.strip().lower()
    if not value or any(c.isspace() or c in "/@?#\\" for c in value):
        return None
    try:
        parts = urlsplit("//" + value)
        name, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number, or beyond 65535
        return None
    if not name:
        return None
    return name.rstrip("."), default_port if port is None else port


def allowed_host_names(cfg: Config) -> list[tuple[str, int | None]]:
    """The allow-list: (name, port or None for any port); ``*`` as a name allows any Host."""
    names: list[tuple[str, int | None]] = [
        (name, cfg.port) for name in (cfg.host.strip("[]").lower(), "localhost", "127.0.0.1", "::1")
    ]
    for entry in cfg.allowed_hosts:
        if entry.strip() == "*":
            names.append(("*", None))
            continue
        parsed = split_host(entry, None)
        if parsed is not None:
            names.append(parsed)
    return names


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostGuard:
    """WSGI middleware: 403 for a request whose Host or Origin is not the daemon's own."""

    def __init__(self, cfg: Config, app: Callable[..., Iterable[bytes]] | None = None) -> None:
        self.app = app  # set by ``build`` (the Socket.IO server's origin check comes first)
        self.cfg = cfg
        self.names = allowed_host_names(cfg)
        self.any_host = ("*", None) in self.names
        self.any_origin = "*" in cfg.cors_origins
        # Bound to every interface: a request for any of the machine's addresses reached us
        # through that address, and an IP literal cannot be rebound to another site.
        self.any_ip = cfg.host in _WILDCARD_BINDS
        self.refused = 0

    def host_allowed(self, host: str | None, scheme: str = "http") -> bool:
        """Is ``host`` (a Host header, or an Origin's ``host[:port]``) one of ours?"""
        if self.any_host:
            return True
        if not host:
            return False
        parsed = split_host(host, 443 if scheme in ("https", "wss") else 80)
        if parsed is None:
            return False
        name, port = parsed
        if self.any_ip and port == self.cfg.port and _is_ip(name):
            return True
        for allowed, allowed_port in self.names:
            if allowed_port is not None and allowed_port != port:
                continue
            if name == allowed or (allowed.startswith("*.") and name.endswith(allowed[1:])):
                return True
        return False

    def origin_allowed(self, origin: str | None, environ: dict[str, Any] | None = None) -> bool:
        """No Origin (not a browser, or a same-origin GET), one of ``cors_origins``, or one of
        our own names under http(s). ``environ`` is unused: python-engineio's callable form."""
        if origin is None or self.any_origin or origin in self.cfg.cors_origins:
            return True
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or parts.path not in ("", "/"):
            return False
        return self.host_allowed(parts.netloc, parts.scheme)

    def check(self, environ: dict[str, Any]) -> str | None:
        """Why the request is refused, or None."""
        host = environ.get("HTTP_HOST")
        if not self.host_allowed(host, environ.get("wsgi.url_scheme", "http")):
            return f"Host {host!r} is not one of this server's names (allowed_hosts)"
        origin = environ.get("HTTP_ORIGIN")
        if not self.origin_allowed(origin):
            return f"Origin {origin!r} is not allowed (allowed_hosts, cors_origins)"
        return None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        tag_connection(environ)
        reason = self.check(environ)
        if reason is None and self.app is not None:
            return self.app(environ, start_response)
        reason = reason or "not serving yet"
        self.refused += 1
        if self.refused & (self.refused - 1) == 0:  # the 1st, 2nd, 4th, 8th...: never a flood
            log.warning("refused %s %s: %s (%d refused so far)", environ.get("REQUEST_METHOD"),
                        environ.get("PATH_INFO"), reason, self.refused)  # fmt: skip
        body = json.dumps({"error": reason, "error_code": 403}).encode()
        start_response(
            "403 Forbidden",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
            ],
        )
        return [body]
