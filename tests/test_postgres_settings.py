"""The cluster settings: store_url selects PostgreSQL, node_name, lease timing, and the
settings that are not active yet (redis_url, cluster_leader) refused in one line at start;
the token secret shared through the store; a clear start failure for an unreachable store.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sessionactors.auth.tokens import TokenSigner, gateway_secrets
from sessionactors.config import Config, load_config
from sessionactors.errors import ConfigError, StoreError
from sessionactors.store import open_store
from sessionactors.store.postgres import PostgresStore, redact_url
from sessionactors.store.sqlite import SQLiteStore

from .daemon_harness import free_port


def env_config(tmp_path: Path, **env: str) -> Config:
    environ = {"HOME": str(tmp_path), **{f"SESSIONACTORS_{k.upper()}": v for k, v in env.items()}}
    return load_config(None, {"data_dir": str(tmp_path / "data")}, environ)


def test_defaults_are_the_embedded_single_node(tmp_path: Path) -> None:
    cfg = env_config(tmp_path)
    assert (cfg.store_url, cfg.redis_url, cfg.cluster_leader) == (None, None, None)
    assert cfg.node_name == socket.gethostname()
    assert (cfg.lease_ttl, cfg.lease_renew) == (45.0, 15.0)  # OpenHands V1's lease timing
    assert cfg.store_options == {"fsync": "full", "url": None, "quota_bytes": 1 << 30}
    store = open_store(cfg.data_dir, **cfg.store_options)
    try:
        assert isinstance(store, SQLiteStore)
    finally:
        store.close()


@pytest.mark.parametrize(
    "url, problem",
    [
        ("mysql://u@h:1/db", "must be postgresql://"),
        ("postgresql://u@h:1/", "must be postgresql://"),
        ("postgresql:///db", "must be postgresql://"),
        ("postgresql://u@h:port/db", "not a valid URL"),
        ("localhost:5432", "must be postgresql://"),
    ],
)
def test_a_bad_store_url_is_refused_naming_the_key(tmp_path: Path, url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        env_config(tmp_path, store_url=url)
    assert info.value.key == "store_url" and "SESSIONACTORS_STORE_URL" in str(info.value)


def test_store_url_selects_postgres_with_this_nodes_leases(tmp_path: Path, pg_url: str) -> None:
    cfg = env_config(tmp_path, store_url=pg_url, node_name="edge-1.example", lease_ttl="9", lease_renew="3")
    assert cfg.store_options == {
        "fsync": "full", "url": pg_url, "quota_bytes": 1 << 30,
        "node": "edge-1.example", "lease_ttl": 9.0, "lease_renew": 3.0,
    }  # fmt: skip
    store = open_store(cfg.data_dir, **cfg.store_options)
    try:
        assert isinstance(store, PostgresStore)
        assert (store.node, store.lease_ttl, store.lease_renew) == ("edge-1.example", 9.0, 3.0)
        assert store.quota_bytes == 1 << 30  # session_quota_bytes holds on PostgreSQL too
    finally:
        store.close()
    assert Config.from_json(cfg.to_json()) == cfg  # reaches the supervisor and the gateway
    assert not (cfg.data_dir / "sessionactors.db").exists()


@pytest.mark.parametrize(
    "env, key, problem",
    [
        ({"redis_url": "redis://127.0.0.1:6379/0"}, "redis_url", "not supported yet"),
        ({"cluster_leader": "10.0.0.1:19500"}, "cluster_leader", "not supported yet"),
        ({"node_name": "has space"}, "node_name", "letters, digits"),
        ({"node_name": "x" * 65}, "node_name", "1-64"),
        ({"lease_ttl": "0"}, "lease_ttl", "> 0"),
        ({"lease_renew": "45"}, "lease_renew", "< lease_ttl"),
        ({"lease_renew": "0"}, "lease_renew", "> 0"),
    ],
)
def test_invalid_or_inactive_settings_are_refused(
    tmp_path: Path, env: dict[str, str], key: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        env_config(tmp_path, **env)
    assert info.value.key == key


def test_serve_refuses_an_inactive_setting_in_one_line(tmp_path: Path) -> None:
    env = {
        "HOME": str(tmp_path),
        "SESSIONACTORS_REDIS_URL": "redis://127.0.0.1:6379/0",
        "PATH": "/usr/bin:/bin",
    }
    argv = [sys.executable, "-m", "sessionactors.cli", "serve", "--data-dir", str(tmp_path / "d")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "sessionactors: invalid configuration 'redis_url': is not supported yet (the cluster is being "
        "built); unset it (from environment SESSIONACTORS_REDIS_URL)"
    ]


def test_serve_with_an_unreachable_store_fails_in_one_line(tmp_path: Path) -> None:
    url = f"postgresql://sa:hunter2@127.0.0.1:{free_port()}/db"
    env = {
        "HOME": str(tmp_path),
        "SESSIONACTORS_STORE_URL": url,
        "PATH": "/usr/bin:/bin",
        "THESPIAN_BASE_IPADDR": "127.0.0.1",
    }
    argv = [sys.executable, "-m", "sessionactors.cli", "serve", "--data-dir", str(tmp_path / "d")]
    argv += ["--port", str(free_port()), "--admin-port", str(free_port())]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "sessionactors: cannot connect to the PostgreSQL store postgresql://sa:***@127.0.0.1:"
    )
    assert "hunter2" not in done.stderr and "hunter2" not in done.stdout


def test_redact_url() -> None:
    assert redact_url("postgresql://u:pw@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact_url("postgresql://u@h:5/db") == "postgresql://u@h:5/db"


def test_every_gateway_on_one_store_shares_the_token_secret(tmp_path: Path, pg_url: str) -> None:
    one = env_config(tmp_path / "one", store_url=pg_url, node_name="one")
    two = env_config(tmp_path / "two", store_url=pg_url, node_name="two")
    secrets_one, follow_one = gateway_secrets(one)
    secrets_two, follow_two = gateway_secrets(two)
    assert secrets_one == secrets_two and len(secrets_one[0]) >= 32 and follow_one is follow_two is None
    token = TokenSigner(secrets_one).issue("ab12")
    assert TokenSigner(secrets_two).verify(token).session_id == "ab12"
    assert not (one.data_dir / "secret.key").exists()
    # A configured secret still wins; without a store_url the file secret is used.
    configured = env_config(tmp_path / "c", store_url=pg_url, token_secret="s" * 32)
    assert gateway_secrets(configured) == ([b"s" * 32], None)
    local = env_config(tmp_path / "l")
    local.data_dir.mkdir(parents=True)
    secrets_local, follow_local = gateway_secrets(local)
    assert secrets_local != secrets_one and follow_local == local.data_dir


def test_rotate_secret_is_refused_with_a_shared_store(tmp_path: Path, pg_url: str) -> None:
    env = {"HOME": str(tmp_path), "SESSIONACTORS_STORE_URL": pg_url, "PATH": "/usr/bin:/bin"}
    argv = [sys.executable, "-m", "sessionactors.cli", "rotate-secret", "--data-dir", str(tmp_path / "d")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "not supported yet with store_url" in done.stderr


def test_a_foreign_or_newer_database_is_refused(pg_url: str) -> None:
    import psycopg

    store = PostgresStore(pg_url, node="n")
    store.close()
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("UPDATE sa_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99, newer"):
        PostgresStore(pg_url, node="n")
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("UPDATE sa_meta SET value = 'other' WHERE key = 'app'")
    with pytest.raises(StoreError, match="not sessionactors'"):
        PostgresStore(pg_url, node="n")


def _tcp_settings(db: object) -> dict[str, str]:
    keys = {"keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout"}
    info = db.pgconn.info  # type: ignore[attr-defined]
    return {o.keyword.decode(): (o.val or b"").decode() for o in info if o.keyword.decode() in keys}


def test_every_store_connection_bounds_a_silent_network(pg_url: str) -> None:
    """A partition that drops packets must not hold an append or a heartbeat inside TCP for
    minutes (measured with tests/test_cluster_partition.py's network namespaces): the
    store's connection and the node heart's carry keepalives and a TCP user timeout."""
    from sessionactors.cluster.nodes import NodeHeart

    store = PostgresStore(pg_url, node="tcp-node")
    heart = NodeHeart(pg_url, "tcp-node", "127.0.0.1:1", interval=1.0, timeout=6.0)
    try:
        expected = {
            "keepalives": "1",
            "keepalives_idle": "5",
            "keepalives_interval": "2",
            "keepalives_count": "3",
        }
        assert _tcp_settings(store._conn()) == {**expected, "tcp_user_timeout": "10000"}
        heart.register()
        assert _tcp_settings(heart._db) == {**expected, "tcp_user_timeout": "3000"}  # node_timeout / 2
    finally:
        heart._drop()
        store.close()
