"""Configuration: embedded defaults < TOML file < ``SESSIONACTORS_*`` environment < CLI flags.

Every key of ``Config`` can be set in the TOML file (top level, plus the
``[runtime]`` table for runtime-specific options), in the environment as
``SESSIONACTORS_<KEY>`` (upper case) and, for the common ones, as a flag.
Invalid values raise ``ConfigError`` naming the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Config", "default_data_dir", "load_config", "ENV_PREFIX"]

ENV_PREFIX = "SESSIONACTORS_"


def default_data_dir() -> Path:
    """The per-user data directory (XDG), where everything the daemon stores lives."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
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
    pool_size: int = 2
    restart_intensity: int = 3
    restart_period: float = 60.0
    # Runtime
    runtime: str = "local"
    runtime_options: dict[str, Any] = field(default_factory=dict)
    # Store
    fsync: str = "full"
    retention_days: float = 0.0
    # Security
    token_ttl: float = 7 * 24 * 3600.0
    token_secret: str | None = None
    github_api_url: str = "https://api.github.com"
    github_timeout: float = 5.0
    github_cache_ttl: float = 60.0
    github_allowlist: Path | None = None
    require_github: bool = False
    max_live_sessions_per_user: int = 20
    # Gateway
    cors_origins: tuple[str, ...] = ()
    max_frame_bytes: int = 1_000_000
    max_field_bytes: int = 256_000
    max_connections_per_session: int = 32
    rate_limit: float = 50.0
    rate_burst: int = 100
    send_buffer: int = 5000
    log_json: bool = False
    log_level: str = "info"

    def validate(self) -> Config:
        """Raise ConfigError for the first invalid value; return self."""
        if not 0 <= self.port <= 65535:
            raise ConfigError("port", "must be between 0 and 65535")
        if not 1 <= self.admin_port <= 65535:
            raise ConfigError("admin_port", "must be between 1 and 65535")
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
        if self.pool_size < 0 or self.pool_size > 64:
            raise ConfigError("pool_size", "must be between 0 and 64")
        if self.restart_intensity < 0 or self.restart_period <= 0:
            raise ConfigError("restart_intensity", "needs intensity >= 0 and restart_period > 0")
        if self.token_ttl <= 0:
            raise ConfigError("token_ttl", "must be > 0 seconds")
        if not self.github_api_url.startswith(("http://", "https://")):
            raise ConfigError("github_api_url", "must be an http(s) URL")
        for key in ("max_frame_bytes", "max_field_bytes", "max_connections_per_session", "send_buffer"):
            if getattr(self, key) <= 0:
                raise ConfigError(key, "must be > 0")
        if self.max_field_bytes > self.max_frame_bytes:
            raise ConfigError("max_field_bytes", "must not exceed max_frame_bytes")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level", "must be debug, info, warning or error")
        return self

    def to_json(self) -> str:
        """Serialise for a child process (the gateway) that must see the same settings."""
        raw = dataclasses.asdict(self)
        raw["data_dir"] = str(self.data_dir)
        raw["github_allowlist"] = str(self.github_allowlist) if self.github_allowlist else None
        raw["cors_origins"] = list(self.cors_origins)
        return json.dumps(raw)

    @classmethod
    def from_json(cls, text: str) -> Config:
        """The inverse of ``to_json``."""
        return _build(json.loads(text), source="json")

    @property
    def run_dir(self) -> Path:
        """Where the pid file, the log and the bridge socket live."""
        return self.data_dir / "run"

    @property
    def workspaces_dir(self) -> Path:
        """Parent of every session's workspace."""
        return self.data_dir / "workspaces"


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(key: str, value: Any, source: str) -> Any:
    """Convert a file/env/flag value to the field's type, or raise ConfigError naming the key."""
    kind = str(_FIELDS[key].type)
    try:
        if value is None:
            if "None" in kind:
                return None
            raise ValueError("must not be empty")
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("must be true or false")
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("must be an integer")
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError("must be a number")
            return float(value)
        if kind.startswith("Path"):
            return Path(os.path.expanduser(str(value))) if value != "" else None
        if kind.startswith("tuple"):
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError("must be a list of strings")
            return tuple(value)
        if kind.startswith("dict"):
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, dict):
                raise ValueError("must be a table")
            return dict(value)
        if not isinstance(value, (str, int, float)):
            raise ValueError("must be a string")
        return str(value)
    except (TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ConfigError(key, f"{exc} (from {source})") from None


def _build(raw: Mapping[str, Any], source: str) -> Config:
    values = {}
    for key, value in raw.items():
        if key not in _FIELDS:
            raise ConfigError(key, f"unknown key (from {source})")
        values[key] = _coerce(key, value, source)
    return Config(**values).validate()


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("config", f"file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path}: {exc}") from None
    if "runtime" in raw and isinstance(raw["runtime"], dict):
        raw["runtime_options"] = raw.pop("runtime")
        raw["runtime"] = raw["runtime_options"].pop("name", Config.runtime)
    return raw


def load_config(
    config_file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Merge defaults, the TOML file, the environment and CLI flags (later wins)."""
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG")
    if config_file:
        for key, value in _read_file(Path(config_file)).items():
            merged[key], sources[key] = value, f"file {config_file}"
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX) and name != ENV_PREFIX + "CONFIG":
            key = name[len(ENV_PREFIX) :].lower()
            if key not in _FIELDS:
                raise ConfigError(key, f"unknown key (from environment {name})")
            merged[key], sources[key] = value, f"environment {name}"
    for key, value in (flags or {}).items():
        if value is not None:
            merged[key], sources[key] = value, "command line"
    values = {key: _coerce(key, value, sources[key]) for key, value in merged.items()}
    for key in values:
        if key not in _FIELDS:
            raise ConfigError(key, f"unknown key (from {sources[key]})")
    return Config(**values).validate()
