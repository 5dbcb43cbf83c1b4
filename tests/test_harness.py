"""The test harness's own guarantees (what every daemon and node fixture relies on)."""

from __future__ import annotations

from bench.targets import free_port


def test_free_port_never_answers_one_port_twice() -> None:
    """A port is bound only later by the daemon, so two answers in a row must differ: CI once
    started a daemon with ``port == admin_port`` (refused by its config). 3,000 draws from the
    ~12,800 ports of the range would repeat hundreds of times by chance alone."""
    ports = [free_port() for _ in range(3000)]
    assert len(set(ports)) == len(ports)
