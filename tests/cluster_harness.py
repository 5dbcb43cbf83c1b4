"""Nodes of a cluster on one machine for the tests: daemons on their own loopback
addresses (127.0.0.x), ports and data dirs, sharing one PostgreSQL database, and the
``sessionactors`` command run against that database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from .daemon_harness import DaemonProcess


def rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as db:
        cur = db.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


def msg(text: str) -> dict[str, Any]:
    return {"action": "message", "args": {"content": text}}


class Node(DaemonProcess):
    """A daemon whose gateway listens on ``host`` (a loopback address of its own)."""

    @property
    def url(self) -> str:
        return f"http://{self.options['host']}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.options['host']}:{self.port}"

    def pids(self) -> set[int]:
        self.remember_pids()
        return set(self.known_pids)


@pytest.fixture(name="cluster")
def cluster_fixture(tmp_path: Path, pg_url: str) -> Iterator[Any]:
    """``cluster(name, host, **options)`` starts a node on the shared database; all are
    stopped at teardown and none may leave a process behind."""
    started: list[Node] = []

    def make(name: str, host: str, **options: Any) -> Node:
        options = {"close_delay": 30.0, "heartbeat_interval": 0.5, **options}
        node = Node(tmp_path / name, host=host, store_url=pg_url, node_name=name, **options)
        started.append(node)
        node.start()
        return node

    yield make
    left = [pid for node in reversed(started) for pid in node.stop()]
    assert not left, f"processes left behind: {left}"


def cli(pg_url: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONACTORS_")}
    env["SESSIONACTORS_STORE_URL"] = pg_url
    return subprocess.run(
        [sys.executable, "-m", "sessionactors.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def nodes_json(pg_url: str) -> dict[str, dict[str, Any]]:
    done = cli(pg_url, "nodes", "--json")
    assert done.returncode == 0, done.stderr
    return {row["node"]: row for row in map(json.loads, done.stdout.splitlines())}
