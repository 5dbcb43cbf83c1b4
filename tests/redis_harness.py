"""A real Redis server for the tests: Debian's ``redis-server`` on a free loopback port.

``RedisServer`` starts ``redis-server`` in a fresh temp dir (``--save '' --appendonly no
--bind 127.0.0.1``: nothing written to disk, nothing reachable from outside), waits until
it answers PING, and ``stop`` shuts it down by its pid (SIGTERM, then SIGKILL) and removes
the directory. Where it cannot run (no binary, no ``redis`` client), ``redis_unavailable``
says why: the tests skip with that reason, except in CI (``CI`` set), where they fail
(tests/run.sh installs redis-server).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .daemon_harness import free_port

__all__ = ["RedisServer", "redis_server", "redis_unavailable"]


def redis_unavailable() -> str | None:
    """Why a Redis server cannot be started here, or None when it can."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (tests/run.sh installs it)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis client is not installed (pip install -e '.[test]')"
    return None


class RedisServer:
    """One Redis server in a temp dir (see the module docstring)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="sa-redis-"))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it answers PING (AssertionError on timeout)."""
        import redis

        log = open(self.root / "server.log", "wb")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_timeout=2)
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    text = (self.root / "server.log").read_text()
                    self.stop()
                    raise AssertionError(f"redis-server did not start: {text}")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (by its pid) and remove its directory. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A Redis server for the module's tests (skipped with the reason where none can run,
    failed instead under CI)."""
    reason = redis_unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}")
        pytest.skip(reason)
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
