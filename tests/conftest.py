"""Shared fixtures: free ports, a real daemon started and stopped per test, Socket.IO clients.

Every daemon is started as ``sessionactors serve`` in its own process group with
its own data dir, HTTP port and Thespian admin port, all on 127.0.0.1, and is
stopped with SIGTERM on teardown; the fixture then checks that every process it
spawned (the daemon, the gateway, the actor system) is gone, ending stragglers
by pid and failing the test if there were any.
"""

from __future__ import annotations

import os

os.environ["THESPIAN_BASE_IPADDR"] = "127.0.0.1"

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .daemon_harness import DaemonProcess, free_port

__all__ = ["free_port"]


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Any]:
    """Start daemons on demand (``daemon_factory(close_delay=1)``); all stopped at teardown."""
    started: list[DaemonProcess] = []

    def make(**options: Any) -> DaemonProcess:
        data_dir = options.pop("data_dir", None) or tmp_path / f"data{len(started)}"
        proc = DaemonProcess(Path(data_dir), **options)
        started.append(proc)
        proc.start()
        return proc

    yield make
    problems = []
    for proc in reversed(started):
        problems.extend(proc.stop())
    assert not problems, f"processes left behind: {problems}"


@pytest.fixture
def daemon(daemon_factory: Any) -> DaemonProcess:
    """One running daemon with the echo runtime and a 1 s close_delay."""
    return daemon_factory(close_delay=1.0)
