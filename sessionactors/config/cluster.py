"""Validation of the cluster's settings (``store_url``, ``redis_url``, ``cluster_leader``,
leases and heartbeats): one function, called by ``Config.validate``."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError

__all__ = ["validate_cluster"]


def validate_cluster(cfg: Any) -> None:
    """Raise ConfigError for the first invalid cluster setting of ``cfg`` (a ``Config``:
    typed ``Any`` because ``settings`` imports this module, not the reverse)."""
    if cfg.store_url is not None:
        try:
            parts = urlsplit(cfg.store_url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as exc:
            raise ConfigError("store_url", f"is not a valid URL: {exc}") from None
        if parts.scheme not in ("postgresql", "postgres") or not (parts.hostname and parts.path[1:]):
            raise ConfigError("store_url", "must be postgresql://user@host:port/database")
    # Refused rather than ignored: a cluster that silently runs as single nodes would
    # split its fan-out and placement without anyone noticing.
    for key in ("redis_url", "cluster_leader"):
        if getattr(cfg, key) is not None:
            raise ConfigError(key, "is not supported yet (the cluster is being built); unset it")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", cfg.node_name):
        raise ConfigError("node_name", "must be 1-64 letters, digits, '.', '_' or '-' (a host name)")
    if cfg.lease_ttl <= 0:
        raise ConfigError("lease_ttl", "must be > 0 seconds")
    if not 0 < cfg.lease_renew < cfg.lease_ttl:
        raise ConfigError("lease_renew", f"must be > 0 and < lease_ttl ({cfg.lease_ttl} s)")
    if not 0 < cfg.heartbeat_interval < cfg.node_timeout:
        raise ConfigError("heartbeat_interval", f"must be > 0 and < node_timeout ({cfg.node_timeout} s)")
    if not (cfg.workspace_snapshot_interval == 0 or cfg.workspace_snapshot_interval >= 1):
        raise ConfigError("workspace_snapshot_interval", "must be 0 (no periodic snapshots) or >= 1 second")
    if cfg.workspace_archive_max_bytes < 1 << 16:
        raise ConfigError("workspace_archive_max_bytes", "must be >= 65536 bytes")
