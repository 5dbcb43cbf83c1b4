"""What the gateway answers a repeated INIT with: the same token, and a cap.

The OpenHands client (Dec 2024) stores the token of every INIT answer and, when it changed,
drops its socket and INITs again with the new one. A server that signs a fresh token for
every INIT drives it into a reconnect loop (1,900 websocket connections in two minutes with
two tabs). So an INIT that presents a valid token for the session it joins is answered with
that same token, unless its remaining lifetime is below ``REFRESH_FRACTION`` of
``token_ttl``, or it was signed with a secret since rotated (then one new token: one
reconnect of the client). And one connection may send
at most ``max_inits_per_connection`` INITs per ``WINDOW`` seconds; the rest are refused
(429) and the first refusal is logged, so that no other client can loop us either.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from ..auth.tokens import TokenClaims, TokenSigner

__all__ = ["InitGuard", "REFRESH_FRACTION", "WINDOW"]

log = logging.getLogger("sessionactors.gateway")

REFRESH_FRACTION = 0.25
WINDOW = 60.0


class InitGuard:
    """Per connection: the token its INIT presented, and the times of its recent INITs."""

    def __init__(self, signer: TokenSigner, max_inits: int) -> None:
        self.signer = signer
        self.max_inits = max_inits
        self.presented: dict[str, tuple[str, TokenClaims]] = {}
        self.answered: dict[str, str] = {}  # conn -> the token of its last INIT answer
        self.recent: dict[str, deque[float]] = {}
        self.warned: set[str] = set()

    def allow(self, conn: str) -> bool:
        """Count an INIT from ``conn``; False when it is over the cap (logged once)."""
        now = time.monotonic()
        times = self.recent.setdefault(conn, deque())
        while times and times[0] <= now - WINDOW:
            times.popleft()
        if len(times) >= self.max_inits:
            if conn not in self.warned:
                self.warned.add(conn)
                log.warning(
                    "connection %s sent more than %d INITs within %g s: refusing (a client in a reconnect loop?)",
                    conn,
                    self.max_inits,
                    WINDOW,
                )
            return False
        times.append(now)
        return True

    def present(self, conn: str, token: str | None, claims: TokenClaims | None) -> None:
        """The token an INIT carried (verified), or none."""
        if token is not None and claims is not None:
            self.presented[conn] = (token, claims)
        else:
            self.presented.pop(conn, None)

    def answer(self, conn: str, session_id: str, token_version: int) -> str:
        """The token for the INIT answer: the one presented if still good, else a new one."""
        token = None
        held = self.presented.pop(conn, None)
        if held is not None:
            presented, claims = held
            remaining = claims.expires_at - time.time()
            if (
                claims.session_id == session_id
                and claims.token_version == token_version
                and remaining > self.signer.ttl * REFRESH_FRACTION
                and self.signer.signed_by_current(presented)  # after a rotation: re-signed
            ):
                token = presented
        if token is None:
            token = self.signer.issue(session_id, token_version)
        self.answered[conn] = token
        return token

    def forget(self, conn: str) -> None:
        for table in (self.presented, self.answered, self.recent):
            table.pop(conn, None)
        self.warned.discard(conn)
