"""The per-connection action rate limit: a token bucket that does not charge a stall.

The gateway reads one connection's packets in order, in one green thread
(``async_handlers=False``). When an action's send to its session blocks (the session
actor is frozen, or swapping, and the bridge socket to it is full), nothing more is read
from that connection until the send completes: what the client sent meanwhile, below the
rate limit, waits in the socket and is then read in one burst. Charging that burst
against a bucket capped at ``burst`` rejected actions that were never sent too fast (66
of them after a 30 s SIGSTOP, issue 18). So the time a send held the connection up is
credited (``rate`` tokens a second, beyond the cap) and the credit is spent first; it
lapses ``CREDIT_TTL`` seconds after the stall, once the backlog has been read.
"""

from __future__ import annotations

import time

__all__ = ["Bucket", "STALL_MIN", "CREDIT_TTL"]

STALL_MIN = 0.05  # seconds: a shorter hold-up is ordinary scheduling, not a stall
CREDIT_TTL = 5.0  # seconds the credit of a stall lasts once the stall ended


class Bucket:
    """Token bucket: ``rate`` actions a second, ``burst`` at once, plus stall credit."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.stamp = float(burst), time.monotonic()
        self.credit, self.credit_until = 0.0, 0.0

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.credit >= 1 and now <= self.credit_until:
            self.credit -= 1
            return True
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def stalled(self, seconds: float) -> None:
        """This connection was not read for ``seconds`` (a blocked send): credit what it may
        have sent meanwhile at the allowed rate."""
        if seconds < STALL_MIN:
            return
        now = time.monotonic()
        if now > self.credit_until:
            self.credit = 0.0
        self.credit += seconds * self.rate
        self.credit_until = now + CREDIT_TTL
