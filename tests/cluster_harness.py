"""Nodes of a cluster on one machine for the tests: daemons on their own loopback
addresses (127.0.0.x), ports and data dirs, sharing one PostgreSQL database, and the
``sessionactors`` command run against that database."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from bench.targets import free_port

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
        options = {"close_delay": 30.0, "heartbeat_interval": 0.5, "store_url": pg_url, **options}
        node = Node(tmp_path / name, host=host, node_name=name, **options)
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


class TcpCut:
    """A TCP relay on loopback in front of the database, that the test can cut (every
    connection closed, new ones refused: the node has lost the store) and restore."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.lock = threading.Lock()
        self.socks: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.restore()

    def url(self, url: str) -> str:
        """``url`` (the database's) through this relay."""
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host).geturl()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            if self.listener is not listener:  # accepted while being cut: refused
                client.close()
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                if self.listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self.lock:
            listener, self.listener = self.listener, None
            socks, self.socks = self.socks, []
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            except OSError:
                pass
            listener.close()
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.cut()


@pytest.fixture(name="relay")
def relay_fixture(pg_url: str) -> Iterator[TcpCut]:
    """A ``TcpCut`` in front of the test's database; ask for it before ``cluster`` so that
    it outlives the nodes (they stop with their store reachable)."""
    parts = urlsplit(pg_url)
    relay = TcpCut(parts.hostname or "127.0.0.1", parts.port or 5432)
    yield relay
    relay.close()
