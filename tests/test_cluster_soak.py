"""Three nodes on one PostgreSQL with clients that keep working through node faults: a
SIGKILL of a whole node (then its restart), and a rolling restart (drain, stop, start each
node in turn). Clients follow the 503 answers to the node they name, as our client and a
load balancer do; at the end every client view equals the stored log.

A ``Follower`` is one tab of one session. Its view is cut into *periods*: a period starts
with an INIT answered ``ok`` (``latest_event_id`` = the highest id it held) and holds every
event received until the connection is replaced. The verdict: the stored ids are
contiguous from 0; each period is exactly the run of the log after its ``latest``; every
message a client saw come back (acknowledged) is stored, once. No timing assertion: the
faults run on a thread of their own while the clients go on, each wait has a deadline.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .cluster_harness import Node, cli, cluster_fixture, msg, rows  # noqa: F401 - a fixture
from .daemon_harness import Client, wait_for
from .test_cluster_failover import kill_every_process

ADDRESS = re.compile(r"(?:connect to |at )(\d+\.\d+\.\d+\.\d+:\d+)")
SESSIONS = 6


@dataclass
class Period:
    latest: int
    node: str
    client: Client
    events: list[dict[str, Any]] = field(default_factory=list)


class Follower:
    """A tab that re-INITs wherever it is sent, holding what it received."""

    def __init__(self, name: str, nodes: list[Node]) -> None:
        self.name = name
        self.nodes = nodes
        self.url = nodes[0].url
        self.token: str | None = None
        self.session_id = ""
        self.periods: list[Period] = []
        self.acked: set[str] = set()  # tags seen coming back
        self.sent = 0
        self.redirects = 0

    @property
    def current(self) -> Period | None:
        return self.periods[-1] if self.periods else None

    def held(self) -> int:
        ids = [e["id"] for p in self.periods for e in p.client.events()]
        return max(ids, default=-1)

    def _close(self) -> None:
        if self.current is not None:
            try:
                self.current.client.close()
            except Exception:
                pass

    def attach(self, give_up: float) -> None:
        """Connect and INIT (resume after what it holds) until answered ok."""
        self._close()
        tried = 0
        while True:
            assert time.monotonic() < give_up, f"{self.name}: not attached before the deadline"
            latest = self.held() if self.token else None
            try:
                client = Client(self.url)
            except Exception:  # the node is down: try the next one
                self.url = self.nodes[tried % len(self.nodes)].url
                tried += 1
                time.sleep(0.2)  # the client's pause between two attempts
                continue
            try:
                answer = client.init(token=self.token, latest=latest)
            except Exception:
                answer = {"error": "no answer"}
            if answer.get("status") == "ok":
                self.token = answer["token"]
                self.session_id = answer["session_id"]
                self.periods.append(Period(-1 if latest is None else latest, self.url, client))
                return
            client.close()
            found = ADDRESS.search(str(answer.get("error", "")))
            if found:
                self.url = f"http://{found.group(1)}"
                self.redirects += 1
            else:  # no address named (being served elsewhere, or no live peer): go round
                self.url = self.nodes[tried % len(self.nodes)].url
                tried += 1
            time.sleep(0.2)  # the client's pause between two attempts

    def step(self, give_up: float) -> None:
        """Send one tagged message and wait for it; on any trouble, re-attach (the message
        may then be lost: it was never acknowledged)."""
        period = self.current
        assert period is not None
        self.sent += 1
        tag = f"{self.name}.{self.sent}"
        try:
            period.client.send(msg(tag))
            period.client.wait(
                lambda fs: (
                    any(f.get("args", {}).get("content") == tag or "error" in f for f in fs)
                    or not period.client.sio.connected
                ),
                20,
                f"{tag} back",
            )
        except Exception:
            pass
        if any(e.get("args", {}).get("content") == tag for e in period.client.events()):
            self.acked.add(tag)
        if period.client.errors() or not period.client.sio.connected:
            self.attach(give_up)

    def finish(self) -> None:
        for period in self.periods:
            period.events = period.client.events()
            try:
                period.client.close()
            except Exception:
                pass


def verify(url: str, followers: list[Follower]) -> dict[str, int]:
    problems: list[str] = []
    for f in followers:
        f.finish()
        log = [
            (int(r[0]), r[1])
            for r in rows(
                url, "SELECT id, body FROM sa_events WHERE session_id = %s ORDER BY id", f.session_id
            )
        ]
        ids = [i for i, _ in log]
        if ids != list(range(len(ids))):
            problems.append(f"{f.name}: stored ids not contiguous: {ids}")
            continue
        events = [json.loads(body) for _, body in log]
        for n, period in enumerate(f.periods):
            got = [e["id"] for e in period.events]
            want = list(range(period.latest + 1, period.latest + 1 + len(got)))
            if got != want:
                problems.append(f"{f.name} period {n} on {period.node}: ids {got}, expected {want}")
            elif any(e["id"] >= len(events) or events[e["id"]] != e for e in period.events):
                problems.append(
                    f"{f.name} period {n}: an event differs from the stored one (or is not stored)"
                )
        tags = Counter(e.get("args", {}).get("content") for e in events if e.get("source") == "user")
        problems += [f"{f.name}: {t} stored {c} times" for t, c in tags.items() if c > 1]
        problems += [f"{f.name}: acknowledged {t} not stored" for t in sorted(f.acked - set(tags))]
        last = f.periods[-1]
        if last.events and last.events[-1]["id"] != len(events) - 1:
            problems.append(f"{f.name}: the open view ends at {last.events[-1]['id']} of {len(events) - 1}")
    assert not problems, "\n".join(problems)
    return {
        "sessions": len(followers),
        "acked": sum(len(f.acked) for f in followers),
        "sent": sum(f.sent for f in followers),
        "periods": sum(len(f.periods) for f in followers),
        "redirects": sum(f.redirects for f in followers),
    }


def work_through(
    followers: list[Follower], fault: threading.Thread, after: int = 3, least: float = 30.0
) -> None:
    """Every follower keeps sending while the fault runs, then ``after`` rounds more, for
    ``least`` seconds in all (the run's length, not a synchronisation)."""
    began = time.monotonic()
    give_up = began + 240
    fault.start()
    rounds_after = 0
    while rounds_after < after or time.monotonic() - began < least:
        if not fault.is_alive():
            rounds_after += 1
        for f in followers:
            f.step(give_up)
        assert time.monotonic() < give_up, "the run took too long"
    fault.join()


def three_nodes(cluster: Any) -> list[Node]:
    options = {"node_timeout": 3.0, "close_delay": 2.0}
    return [cluster(f"node-{c}", f"127.0.0.{i + 1}", **options) for i, c in enumerate("abc")]


def start_followers(nodes: list[Node]) -> list[Follower]:
    followers = [Follower(f"t{i}", [nodes[i % 3], *nodes]) for i in range(SESSIONS)]
    for f in followers:
        f.url = f.nodes[0].url
        f.attach(time.monotonic() + 60)
        f.step(time.monotonic() + 60)
    return followers


def test_soak_across_three_nodes_with_a_node_killed_and_restarted(cluster: Any, pg_url: str) -> None:
    nodes = three_nodes(cluster)
    followers = start_followers(nodes)
    victim = nodes[1]
    errors: list[BaseException] = []

    def kill_and_restart() -> None:
        try:
            pids = victim.pids()
            kill_every_process(pids)
            assert victim.proc is not None
            victim.proc.wait()
            victim.proc = None
            victim.log.close()
            victim.known_pids = set()
            wait_for(
                lambda: rows(
                    pg_url,
                    "SELECT 1 FROM sa_nodes WHERE node_name = 'node-b'"
                    " AND heartbeat_at + timeout_s * interval '1 second' <= clock_timestamp()",
                ),
                60,
                "node-b dead for the others",
            )
            victim.start()  # same data dir and ports: it registers again and serves
        except BaseException as exc:
            errors.append(exc)

    work_through(followers, threading.Thread(target=kill_and_restart))
    assert not errors, errors
    figures = verify(pg_url, followers)
    print(f"three-node soak: {figures}")
    assert figures["periods"] > SESSIONS  # the kill moved tabs


def test_rolling_restart_of_three_nodes_loses_nothing(cluster: Any, pg_url: str) -> None:
    nodes = three_nodes(cluster)
    followers = start_followers(nodes)
    errors: list[BaseException] = []

    def roll() -> None:
        try:
            for node in nodes:
                done = cli(pg_url, "drain", node.options["node_name"])
                assert done.returncode == 0, done.stderr
                assert node.stop() == []
                node.known_pids = set()
                node.start()
        except BaseException as exc:
            errors.append(exc)

    work_through(followers, threading.Thread(target=roll))
    assert not errors, errors
    figures = verify(pg_url, followers)
    print(f"rolling restart: {figures}")
    assert figures["periods"] > SESSIONS
