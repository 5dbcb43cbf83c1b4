"""The daemon's settings (``Config``): every key, its default and its validation.

Every key of ``Config`` can be set in the TOML file (top level, plus the
``[runtime]`` table for runtime-specific options), in the environment as
``SESSIONACTORS_<KEY>`` (upper case) and, for the common ones, as a flag.
Invalid values raise ``ConfigError`` naming the key.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .cluster import validate_cluster
from .coerce import build

__all__ = ["Config", "default_data_dir"]


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The per-user data directory (XDG), where everything the daemon stores lives.

    ``$XDG_DATA_HOME/sessionactors`` when that is set (and not empty), else
    ``$HOME/.local/share/sessionactors``; read from ``environ`` (default ``os.environ``).
    """
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_DATA_HOME")
    if not base:
        home = environ.get("HOME") or os.path.expanduser("~")
        base = os.path.join(home, ".local", "share")
    return Path(base) / "sessionactors"


@dataclass(frozen=True)
class Config:
    """The daemon's settings; see docs/configuration.md for each key."""

    host: str = "127.0.0.1"
    port: int = 3000
    data_dir: Path = field(default_factory=default_data_dir)
    close_delay: float = 15.0
    # Actor system
    actor_base: str = "multiprocTCPBase"
    admin_port: int = 19500
    actor_ip: str = "127.0.0.1"
    multi_host: bool = False
    pool_size: int = 8
    restart_intensity: int = 3
    restart_period: float = 60.0
    supervisor_timeout: float = 30.0
    session_ping_timeout: float = 10.0
    # Runtime
    runtime: str = "local"
    runtime_options: dict[str, Any] = field(default_factory=dict)
    # Store
    fsync: str = "full"
    retention_days: float = 0.0
    # Cluster (docs/architecture.md, "The shared store"): store_url selects PostgreSQL
    store_url: str | None = None
    redis_url: str | None = None
    cluster_leader: str | None = None
    node_name: str = field(default_factory=socket.gethostname)
    lease_ttl: float = 45.0
    lease_renew: float = 15.0
    session_quota_bytes: int = 1 << 30
    node_address: str | None = None  # host:port other nodes and clients are sent to (default host:port)
    heartbeat_interval: float = 1.0
    node_timeout: float = 10.0
    workspace_snapshot_interval: float = 300.0  # 0: no periodic snapshots (passivation still archives)
    workspace_archive_max_bytes: int = 256 << 20
    # Security
    token_ttl: float = 7 * 24 * 3600.0
    token_secret: str | None = None
    github_api_url: str = "https://api.github.com"
    github_timeout: float = 5.0
    github_cache_ttl: float = 60.0
    github_allowlist: Path | None = None
    require_github: bool = False
    max_live_sessions_per_user: int = 20
    max_live_sessions: int = 1000
    # Gateway
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    max_frame_bytes: int = 1_000_000
    max_field_bytes: int = 256_000
    max_connections_per_session: int = 32
    rate_limit: float = 50.0
    rate_burst: int = 100
    send_buffer: int = 5000
    send_buffer_bytes: int = 8_000_000
    http_idle_timeout: float = 45.0
    max_http_connections: int = 10000
    link_wait: float = 10.0
    log_json: bool = False
    log_level: str = "info"
    # The OpenHands frontend (docs/protocol.md, "The OpenHands frontend (Dec 2024)")
    web_client: Path | None = None
    openhands_compat: str = "auto"
    secret_arg_patterns: tuple[str, ...] = ("*KEY*", "*TOKEN*", "*SECRET*", "*PASSWORD*")
    max_inits_per_connection: int = 60
    upload_max_file_bytes: int = 10_000_000
    upload_max_files: int = 100
    options_models: tuple[str, ...] = ()
    options_agents: tuple[str, ...] = ()
    options_security_analyzers: tuple[str, ...] = ()
    log_max_bytes: int = 10_000_000
    log_keep: int = 5

    def validate(self) -> Config:
        """Raise ConfigError for the first invalid value; return self."""
        for key, value in dataclasses.asdict(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(key, "must be a finite number")
        if not self.host:
            raise ConfigError("host", "must not be empty")
        # Port 0 (any free port) cannot work: the daemon and `start` wait for /api/health on `port`.
        if not 1 <= self.port <= 65535:
            raise ConfigError("port", "must be between 1 and 65535")
        if not 1 <= self.admin_port <= 65535:
            raise ConfigError("admin_port", "must be between 1 and 65535")
        if self.admin_port == self.port:
            raise ConfigError("admin_port", f"must differ from port (both are {self.port})")
        if self.close_delay < 0:
            raise ConfigError("close_delay", "must be >= 0")
        if self.actor_base not in ("multiprocTCPBase", "simpleSystemBase"):
            raise ConfigError("actor_base", "must be multiprocTCPBase (daemon) or simpleSystemBase (tests)")
        try:
            ip = ipaddress.ip_address(self.actor_ip)
        except ValueError:
            raise ConfigError("actor_ip", "must be an IP address") from None
        if not ip.is_loopback and not self.multi_host:
            raise ConfigError(
                "actor_ip",
                "a non-loopback actor address exposes unauthenticated actor ports; "
                "set multi_host = true only on a private network (docs/security.md)",
            )
        if self.fsync not in ("full", "normal"):
            raise ConfigError("fsync", "must be 'full' or 'normal'")
        if self.pool_size < 0 or self.pool_size > 1024:
            raise ConfigError("pool_size", "must be between 0 and 1024")
        if self.link_wait < 0:
            raise ConfigError("link_wait", "must be >= 0 seconds")
        if self.restart_intensity < 0:
            raise ConfigError("restart_intensity", "must be >= 0")
        if self.restart_period <= 0:
            raise ConfigError("restart_period", "must be > 0 seconds")
        validate_cluster(self)
        for key in ("supervisor_timeout", "session_ping_timeout"):
            if getattr(self, key) <= 0:
                raise ConfigError(key, "must be > 0 seconds")
        if self.session_quota_bytes < 0:
            raise ConfigError("session_quota_bytes", "must be >= 0 bytes (0: no quota)")
        if self.retention_days < 0:
            raise ConfigError("retention_days", "must be >= 0 (0: keep forever)")
        if self.token_ttl <= 0:
            raise ConfigError("token_ttl", "must be > 0 seconds")
        if self.token_secret is not None and len(self.token_secret.encode()) < 32:
            raise ConfigError("token_secret", "must be at least 32 bytes")
        if not re.match(r"https?://[^/\s]+", self.github_api_url):
            raise ConfigError("github_api_url", "must be an http(s) URL")
        if self.github_timeout <= 0:
            raise ConfigError("github_timeout", "must be > 0 seconds")
        if self.github_cache_ttl < 0:
            raise ConfigError("github_cache_ttl", "must be >= 0 seconds (0: no cache)")
        if self.rate_limit <= 0:
            raise ConfigError("rate_limit", "must be > 0 actions per second")
        for key in (
            "max_frame_bytes",
            "max_field_bytes",
            "max_connections_per_session",
            "max_live_sessions_per_user",
            "max_live_sessions",
            "rate_burst",
            "send_buffer",
            "send_buffer_bytes",
            "max_http_connections",
            "log_max_bytes",
        ):
            if getattr(self, key) <= 0:
                raise ConfigError(key, "must be > 0")
        if self.max_field_bytes > self.max_frame_bytes:
            raise ConfigError(
                "max_field_bytes",
                f"must not exceed max_frame_bytes ({self.max_frame_bytes}); it is {self.max_field_bytes}",
            )
        if self.http_idle_timeout <= 0:
            raise ConfigError("http_idle_timeout", "must be > 0 seconds")
        for entry in self.allowed_hosts:
            if entry != "*" and not re.fullmatch(
                r"(\*\.)?[A-Za-z0-9_.-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?", entry
            ):
                raise ConfigError("allowed_hosts", f"{entry!r} is not a host name, name:port or *")
        if self.openhands_compat not in ("auto", "on", "off"):
            raise ConfigError("openhands_compat", "must be auto, on or off")
        if self.web_client is not None and not (self.web_client / "index.html").is_file():
            raise ConfigError(
                "web_client", f"{str(self.web_client)!r} has no index.html (a built single-page app)"
            )
        for key in ("max_inits_per_connection", "upload_max_file_bytes", "upload_max_files"):
            if getattr(self, key) <= 0:
                raise ConfigError(key, "must be > 0")
        if self.log_keep < 0:
            raise ConfigError("log_keep", "must be >= 0 (0: keep no rotated file)")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level", "must be debug, info, warning or error")
        return self

    @property
    def store_options(self) -> dict[str, Any]:
        """The keywords of ``store.open_store`` (after ``data_dir``)."""
        options: dict[str, Any] = {
            "fsync": self.fsync,
            "url": self.store_url,
            "quota_bytes": self.session_quota_bytes or None,
        }
        if self.store_url:
            options.update(node=self.node_name, lease_ttl=self.lease_ttl, lease_renew=self.lease_renew)
        return options

    def to_json(self) -> str:
        """Serialise for a child process (the gateway) that must see the same settings."""
        raw = dataclasses.asdict(self)
        raw["data_dir"] = str(self.data_dir)
        raw["github_allowlist"] = str(self.github_allowlist) if self.github_allowlist else None
        raw["web_client"] = str(self.web_client) if self.web_client else None
        for key, value in raw.items():
            if isinstance(value, tuple):
                raw[key] = list(value)
        return json.dumps(raw)

    @classmethod
    def from_json(cls, text: str) -> Config:
        """The inverse of ``to_json``."""
        return _from_json(text)

    @property
    def openhands_mode(self) -> bool:
        """Agent-state events and xterm-ready terminal output (``openhands_compat``; auto: on
        when a ``web_client`` is served)."""
        return self.openhands_compat == "on" or (
            self.openhands_compat == "auto" and self.web_client is not None
        )

    @property
    def run_dir(self) -> Path:
        """Where the pid file, the log and the bridge socket live."""
        return self.data_dir / "run"

    @property
    def workspaces_dir(self) -> Path:
        """Parent of every session's workspace."""
        return self.data_dir / "workspaces"


@functools.lru_cache(maxsize=8)
def _from_json(text: str) -> Config:
    """Cached: the supervisor parses the configuration once and every session actor it
    forks inherits the result (parsing and validating cost ~2 ms of each cold activation).
    ``Config`` is frozen, so sharing one instance is safe."""
    return build(Config, json.loads(text), "json")
