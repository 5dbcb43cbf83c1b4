"""Real network partitions for the cluster tests: a node in a network namespace of its own.

``Partitioned`` makes a namespace ``sa-<random>`` and two veth pairs into it, each on a
private /30 made by the test (10.213.x.0/30 and 10.213.x.4/30: addresses that exist only
on these veths and in that namespace, never any other real address):

- the *store link*: the host side gets ``.1``, the namespace side ``.2``; the test's
  PostgreSQL listens on ``.1`` as well as 127.0.0.1, and the node's ``store_url`` points
  there;
- the *client link*: the host side ``.5``, the namespace side ``.6``; the node's gateway
  listens on ``.6`` so that the test's clients, in the host namespace, reach it directly
  (simpler than running every client through ``ip netns exec``, and the gateway's ``host``
  may be any address: only ``actor_ip`` must stay on loopback without ``multi_host``, and
  the node's actor system runs on the namespace's own loopback).

``partition()`` sets the host side of the store link down: the node's packets to the
database go nowhere (no reset, no error: what a real partition does), while its clients
keep their connections and so hear what the node tells them. ``heal()`` sets it up again.
``close()`` removes both veths and the namespace; the fixture calls it even when the test
fails. Where this cannot run (not root, no ``ip netns``) the tests skip with the reason,
except in CI (``CI`` set), where they fail: tests/run.sh installs iproute2.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .cluster_harness import Node
from .pg_harness import PgServer, pg_unavailable

__all__ = ["NsNode", "Partitioned", "netns_unavailable", "partitioned_fixture"]


def ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30, check=check)


def netns_unavailable() -> str | None:
    """Why a network namespace cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "the ip command is missing (tests/run.sh installs iproute2)"
    probe = f"sa-probe-{secrets.token_hex(3)}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add fails here: {made.stderr.strip()}"
    ip("netns", "delete", probe, check=False)
    return None


class Partitioned:
    """A namespace with a store link and a client link to the host (module docstring)."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"sa-{tag}"
        # A /30 pair from 10.213.0.0/16, chosen at random so that parallel runs rarely meet;
        # a clash makes ``ip addr add`` fail loudly rather than share an address.
        block = secrets.randbelow(65536 // 8) * 8
        base = f"10.213.{block // 256}."
        low = block % 256
        self.store_host, self.store_ns = f"{base}{low + 1}", f"{base}{low + 2}"
        self.client_host, self.client_ns = f"{base}{low + 5}", f"{base}{low + 6}"
        self.store_veth, self.client_veth = f"sas{tag}", f"sac{tag}"
        self.made: list[str] = []  # what close() must remove, in order

    def create(self) -> Partitioned:
        ip("netns", "add", self.name)
        self.made.append("netns")
        ip("-n", self.name, "link", "set", "lo", "up")  # the node's actor system lives there
        for veth, host, inside in (
            (self.store_veth, self.store_host, self.store_ns),
            (self.client_veth, self.client_host, self.client_ns),
        ):
            peer = veth + "n"
            ip("link", "add", veth, "type", "veth", "peer", "name", peer)
            self.made.append(veth)
            ip("link", "set", peer, "netns", self.name)
            ip("addr", "add", f"{host}/30", "dev", veth)
            ip("link", "set", veth, "up")
            ip("-n", self.name, "addr", "add", f"{inside}/30", "dev", peer)
            ip("-n", self.name, "link", "set", peer, "up")
        return self

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def partition(self) -> None:
        """Cut the node from the store (its clients keep their link)."""
        ip("link", "set", self.store_veth, "down")

    def heal(self) -> None:
        ip("link", "set", self.store_veth, "up")

    def close(self) -> None:
        for what in reversed(self.made):
            if what == "netns":
                ip("netns", "delete", self.name, check=False)
            else:
                ip("link", "delete", what, check=False)  # removes its peer too
        self.made = []


class NsNode(Node):
    """A node whose daemon runs inside ``net``'s namespace (``ip netns exec`` execs the
    command, so the pid is the daemon's own and the usual process accounting holds)."""

    def __init__(self, net: Partitioned, data_dir: Path, **options: Any) -> None:
        super().__init__(data_dir, host=net.client_ns, **options)
        self.net = net

    def argv_prefix(self) -> list[str]:
        """The daemon runs inside the namespace: ``ip netns exec NAME``."""
        return list(self.net.exec_prefix())


@pytest.fixture(name="partitioned")
def partitioned_fixture(tmp_path: Path) -> Iterator[Any]:
    """``(net, pg_url, make_node)``: a namespace, a
    PostgreSQL of this test listening on 127.0.0.1 and on the store link, and
    ``make_node(name, host=None, **options)`` (``host`` None: inside the namespace)."""
    why = pg_unavailable() or netns_unavailable()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the partition tests cannot run: {why}")
        pytest.skip(why)
    net = Partitioned()
    server: PgServer | None = None
    started: list[Node] = []
    try:
        net.create()
        server = PgServer(fsync=False, listen=("127.0.0.1", net.store_host), trust=(f"{net.store_host}/30",))
        server.start()
        url = server.new_database("partition")
        ns_url = url.replace("@127.0.0.1:", f"@{net.store_host}:")

        def make(name: str, host: str | None = None, **options: Any) -> Node:
            options = {"close_delay": 30.0, "heartbeat_interval": 0.5, "node_name": name, **options}
            if host is None:
                node: Node = NsNode(net, tmp_path / name, store_url=ns_url, **options)
            else:
                node = Node(tmp_path / name, host=host, store_url=url, **options)
            started.append(node)
            node.start()
            return node

        yield net, url, make
        left = [pid for node in reversed(started) for pid in node.stop()]
        assert not left, f"processes left behind: {left}"
    finally:
        for node in started:  # a failed test: end what is still running, by pid
            if node.proc is not None:
                node.stop()
        if server is not None:
            server.stop()
        net.close()
