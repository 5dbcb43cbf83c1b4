"""Prometheus metrics, exposed by the gateway at ``/metrics``.

Three sources feed them: the gateway counts what it sees (connections, INIT
outcomes, actions, frames sent, slow clients); session actors report their
store-append and action latencies in small ``metrics`` frames over the bridge
(batched, so measuring costs no extra round trip); the supervisor's counters
(sessions by state, passivations, rehydrations, restarts) are read with a
``stats`` query at scrape time.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["GatewayMetrics", "LATENCY_BUCKETS"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class _SupervisorCollector:
    """Reads the supervisor's counters when Prometheus scrapes."""

    def __init__(self, query: Any) -> None:
        self.query = query

    def collect(self) -> Any:
        status, stats = self.query("stats", timeout=2.0)
        if status != 200 or not isinstance(stats, dict):
            return
        sessions = GaugeMetricFamily("sessionactors_sessions", "Sessions by state", labels=["state"])
        for state in ("live", "passivated", "failed"):
            sessions.add_metric([state], float(stats.get(state, 0)))
        yield sessions
        for key, text in (
            ("created", "Sessions created"),
            ("passivations", "Sessions passivated"),
            ("rehydrations", "Sessions rehydrated from the store"),
            ("restarts", "Session actors restarted after a crash"),
        ):
            yield CounterMetricFamily(f"sessionactors_{key}", text, value=float(stats.get(key, 0)))


class GatewayMetrics:
    """The gateway's metrics registry (one per gateway process)."""

    def __init__(self, query: Any = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.connections = Gauge("sessionactors_connections", "Open Socket.IO connections", registry=r)
        self.inits = Counter("sessionactors_inits", "INIT requests by outcome", ["outcome"], registry=r)
        self.actions = Counter(
            "sessionactors_actions", "Actions accepted for routing", ["action"], registry=r
        )
        self.frames_sent = Counter(
            "sessionactors_events_sent", "Stored events sent to connections", registry=r
        )
        self.events_stored = Counter("sessionactors_events_stored", "Events appended by sessions", registry=r)
        self.slow = Counter("sessionactors_slow_disconnects", "Connections dropped for lagging", registry=r)
        self.action_latency = Histogram(
            "sessionactors_action_seconds",
            "From an action's arrival at its session to its event being stored and sent",
            ["action"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.append_latency = Histogram(
            "sessionactors_store_append_seconds",
            "Durable append of one batch of events",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        if query is not None:
            r.register(_SupervisorCollector(query))

    def observe_session_report(self, frame: dict[str, Any]) -> None:
        """A session's ``metrics`` frame: ``{"append": [s...], "actions": [[name, s]...], "stored": n}``."""
        for seconds in frame.get("append", []):
            self.append_latency.observe(float(seconds))
        for name, seconds in frame.get("actions", []):
            self.action_latency.labels(str(name)).observe(float(seconds))
        self.events_stored.inc(int(frame.get("stored", 0)))

    def render(self) -> bytes:
        """The Prometheus text format."""
        return bytes(generate_latest(self.registry))
