"""The gateways' Redis messages are signed with the cluster key (gateway/signing.py):
through a real Redis and python-socketio's own RedisManager, a signed emit from one
manager reaches the other, while an unsigned or forged message injected into the channel
is dropped, never handled (issue 16)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import socketio

from sessionactors.gateway.signing import BadSignature, SignedJson, SignedRedisManager

from .redis_harness import RedisServer, redis_server

__all__ = ["redis_server"]

KEY = "k" * 32


def test_codec_round_trip_and_refusals() -> None:
    codec = SignedJson(KEY)
    wire = codec.dumps({"method": "emit", "event": "oh_event", "data": {"id": 3}})
    assert codec.loads(wire) == {"method": "emit", "event": "oh_event", "data": {"id": 3}}
    assert codec.loads(wire.encode()) == codec.loads(wire)
    tampered = wire.replace('"id":3', '"id":4')
    for bad in ('{"method": "emit"}', tampered, SignedJson("x" * 32).dumps({"method": "emit"}), "", "."):
        with pytest.raises(BadSignature):
            codec.loads(bad)
    assert codec.dropped == 5
    with pytest.raises(ValueError):
        SignedJson("short")


class _Spy:
    """Records the emits a RedisManager handles from the channel (its ``_handle_emit``)."""

    def __init__(self, mgr: Any) -> None:
        self.seen: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        original = mgr._handle_emit

        def handle(message: dict[str, Any]) -> None:
            with self.cond:
                self.seen.append(message)
                self.cond.notify_all()
            original(message)

        mgr._handle_emit = handle

    def wait_for(self, pred: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self.seen):
                left = deadline - time.monotonic()
                assert left > 0, f"timed out; handled so far: {self.seen}"
                self.cond.wait(left)


@pytest.fixture
def managers(redis_server: RedisServer) -> Iterator[tuple[Any, Any, SignedJson]]:
    codec_a, codec_b = SignedJson(KEY), SignedJson(KEY)
    mgr_a = SignedRedisManager(redis_server.url, codec_a, channel="sa-test")
    mgr_b = SignedRedisManager(redis_server.url, codec_b, channel="sa-test")
    servers = [socketio.Server(client_manager=m, async_mode="threading") for m in (mgr_a, mgr_b)]
    for srv in servers:  # what the server does on its first request: start the listener
        srv.manager_initialized = True
        srv.manager.initialize()
    yield mgr_a, mgr_b, codec_b
    threads = [t for t in threading.enumerate() if t.name != threading.current_thread().name]
    for mgr in (mgr_a, mgr_b):
        mgr.close()
    for thread in threads:  # the managers' listeners end once closed (no retry loop left)
        if "_thread" in repr(getattr(thread, "_target", None)):
            thread.join(30)
            assert not thread.is_alive(), "a Redis listener outlived its manager"


def test_forged_messages_are_dropped(
    redis_server: RedisServer, managers: tuple[Any, Any, SignedJson]
) -> None:
    import json

    import redis

    mgr_a, mgr_b, codec_b = managers
    spy = _Spy(mgr_b)
    raw = redis.Redis.from_url(redis_server.url)
    try:
        # b's listener must be subscribed before anything is published (pub/sub keeps nothing).
        deadline = time.monotonic() + 30
        while raw.pubsub_numsub("sa-test")[0][1] < 2:
            assert time.monotonic() < deadline, "the managers never subscribed"
            time.sleep(0.02)
        forged = {"method": "emit", "event": "oh_event", "data": "forged", "namespace": "/",
                  "room": None, "skip_sid": None, "callback": None, "host_id": "evil"}  # fmt: skip
        raw.publish("sa-test", json.dumps(forged))  # unsigned
        raw.publish("sa-test", SignedJson("w" * 32).dumps(forged))  # another key
        raw.publish("sa-test", "0" * 64 + "." + json.dumps(forged))  # a made-up signature
        mgr_a.emit("oh_event", "genuine", namespace="/")  # signed with the cluster key
        # One channel keeps publication order: once the genuine one is handled, the three
        # forged ones before it have been read and dropped.
        spy.wait_for(lambda seen: any(m["data"] == ["genuine"] for m in seen))
    finally:
        raw.close()
    assert [m["data"] for m in spy.seen] == [["genuine"]]
    assert codec_b.dropped == 3


def test_the_cluster_key_is_shared_first_writer_wins(pg_url: str) -> None:
    """Every node that asks for the cluster key gets the first one stored (sa_secrets)."""
    from sessionactors.store.postgres import PostgresStore

    a, b = PostgresStore(pg_url, node="a"), PostgresStore(pg_url, node="b")
    try:
        assert a.cluster_key("a" * 32) == "a" * 32
        assert b.cluster_key("b" * 32) == "a" * 32
        assert a.cluster_key("c" * 32) == "a" * 32
    finally:
        a.close()
        b.close()
