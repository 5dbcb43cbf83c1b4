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

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .daemon_harness import Client, DaemonProcess, free_port
from .pg_harness import pg_server, pg_url  # noqa: F401 - fixtures for every test module

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


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind(tmp_path_factory: Any) -> Iterator[None]:
    """After the whole run, no daemon, gateway or actor of ours may remain (they name our tmp dir)."""
    base = str(tmp_path_factory.getbasetemp())
    yield
    import signal

    from sessionactors.daemon import pid_alive

    leftovers = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if base in cmdline and "sessionactors" in cmdline and pid_alive(int(entry)):
            leftovers.append((int(entry), cmdline[:200]))
    for pid, _ in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not leftovers, f"processes left behind by the test run: {leftovers}"


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    """``clients(url, transports=None)`` makes a recording client, closed at teardown."""
    made: list[Client] = []

    def make(url: str, transports: list[str] | None = None) -> Client:
        client = Client(url, transports)
        made.append(client)
        return client

    yield make
    for client in made:
        try:
            client.close()
        except Exception:
            pass


@pytest.fixture
def failing_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Install tests/data/failing_runtime for the daemons this test starts (an entry point in a
    throwaway ``dist-info`` on ``PYTHONPATH``, as a real install would); its runtime name."""
    site = tmp_path / "site"
    dist = site / "failing_runtime-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: failing-runtime\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(
        "[sessionactors.runtimes]\nfailing = failing_runtime:FailingRuntime\n"
    )
    plugin = Path(__file__).parent / "data" / "failing_runtime"
    monkeypatch.setenv("PYTHONPATH", f"{site}:{plugin}")
    return "failing"
