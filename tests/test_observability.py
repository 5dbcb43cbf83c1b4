"""/metrics (Prometheus text format), /api/ready, and structured logs, against a real daemon."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

from .daemon_harness import Client, DaemonProcess, wait_for


def scrape(d: DaemonProcess) -> dict[str, float]:
    with urllib.request.urlopen(d.url + "/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) ([-+\w.]+)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def metric(d: DaemonProcess, name: str) -> float:
    return scrape(d).get(name, 0.0)


def test_metrics_move_as_sessions_work(daemon_factory: Any) -> None:
    d = daemon_factory(close_delay=0.3)
    before = scrape(d)
    assert before.get('sessionactors_sessions{state="live"}') == 0.0
    c = Client(d.url)
    ok = c.init()
    c.send({"action": "message", "args": {"content": "hi"}})
    c.send({"action": "run", "args": {"command": "echo x"}})
    c.wait_events(3)
    assert c.init(token="not.a.token")["error_code"] == 401
    wait_for(lambda: metric(d, "sessionactors_store_append_seconds_count") >= 2, what="append samples")
    after = scrape(d)
    assert after.get('sessionactors_inits_total{outcome="ok"}') == 1, after
    assert after.get('sessionactors_inits_total{outcome="error_401"}') == 1, after
    assert after.get('sessionactors_actions_total{action="message"}') == 1, after
    assert after.get('sessionactors_actions_total{action="run"}') == 1, after
    assert after.get("sessionactors_events_sent_total") >= 3, after
    assert after.get('sessionactors_sessions{state="live"}') == 1, after
    assert after.get("sessionactors_connections") == 1, after
    assert after.get("sessionactors_created_total") == 1, after
    wait_for(lambda: metric(d, 'sessionactors_action_seconds_count{action="message"}') == 1, what="latency")
    c.close()
    wait_for(lambda: metric(d, "sessionactors_passivations_total") == 1, what="passivation counted")
    wait_for(lambda: metric(d, 'sessionactors_sessions{state="passivated"}') == 1, what="passivated gauge")
    r = Client(d.url)
    try:
        assert r.init(token=ok["token"])["status"] == "ok"
        assert metric(d, "sessionactors_rehydrations_total") == 1
    finally:
        r.close()


def test_ready_and_json_logs(daemon_factory: Any) -> None:
    d = daemon_factory(log_json="true", log_level="info")
    assert d.http("GET", "/api/ready") == (
        200,
        {"status": "ready", "checks": {"supervisor": True, "store": True}},
    )
    c = Client(d.url)
    ok = c.init()
    c.close()
    wait_for(lambda: ok["session_id"] in d.log_path.read_text(), what="a log record naming the session")
    records = []
    for line in d.log_path.read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    assert records, "no JSON log lines"
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert any(r.get("session_id") == ok["session_id"] for r in records)
    assert ok["token"] not in d.log_path.read_text()
