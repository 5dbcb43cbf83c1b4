"""Opening a PostgreSQL connection: the one place that sets how long a silent network may
hold a caller (the store's appends, the lease keeper, the node heart, the CLI commands).

Without TCP timeouts, a partition that drops packets (rather than refusing them) kept an
append or a heartbeat inside the kernel's retransmission for up to ~15 minutes, and after
the heal it resumed only at TCP's next backoff (up to ~2 minutes later): measured with the
network-namespace partitions of ``tests/test_cluster_partition.py``. Fencing does not rest
on these timeouts (it is the epoch in the database and the heart's own clock); they bound
how long an actor is blocked and how soon a healed node talks again.
"""

from __future__ import annotations

from typing import Any

__all__ = ["connect"]


def connect(url: str, timeout: float = 10.0, user_timeout: float = 10.0) -> Any:
    """An autocommit connection: ``timeout`` seconds to connect, and ``user_timeout``
    seconds at most for the network to acknowledge what was sent (psycopg.Error else)."""
    import psycopg  # the optional dependency (the [postgres] extra): only where it is used

    return psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=max(1, round(timeout)),
        tcp_user_timeout=max(1000, round(user_timeout * 1000)),
        # probe an idle connection after 5 s, every 2 s, and give up after 3 misses
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
    )
