"""The wire protocol seen by the official JavaScript client, ``socket.io-client`` 4.x from npm.

Each test runs one scenario of ``tests/js/scenarios.mjs`` with node against a real daemon;
the script asserts on its side, prints its findings as JSON and exits non-zero on failure,
and the test checks the findings again. ``tests/run.sh`` installs the npm package
(``npm install`` in ``tests/js``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .daemon_harness import DaemonProcess, running

JS_DIR = Path(__file__).parent / "js"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed (the JavaScript client needs it)"),
]


@pytest.fixture(scope="module")
def js_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    if not (JS_DIR / "node_modules" / "socket.io-client").is_dir():
        pytest.fail("socket.io-client is not installed: run `npm install` in tests/js (tests/run.sh does)")
    with running(tmp_path_factory.mktemp("js") / "data", close_delay=0.5) as daemon:
        yield daemon


def scenario(daemon: DaemonProcess, name: str, timeout: float = 40) -> Any:
    assert NODE is not None
    done = subprocess.run(
        [NODE, str(JS_DIR / "scenarios.mjs"), daemon.url, name],
        cwd=JS_DIR, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, f"node {name} failed ({done.returncode}):\n{done.stderr}\n{done.stdout}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_js_two_tabs_websocket_and_upgraded_polling_fan_out(js_daemon: DaemonProcess) -> None:
    result = scenario(js_daemon, "tabs")
    assert result["a_transport"] == "websocket"
    assert result["b_transports"] == ["polling", "websocket"]
    assert result["a_ids"] == result["b_ids"] == [0, 1, 2, 3, 4]


def test_js_replay_after_passivation(js_daemon: DaemonProcess) -> None:
    result = scenario(js_daemon, "replay")
    assert result["state_before"] == "passivated"
    assert result["ids"] == [1, 2, 3]
    assert "STATUS$REHYDRATING" in result["statuses"]


def test_js_invalid_token_answered_to_its_sender_only(js_daemon: DaemonProcess) -> None:
    result = scenario(js_daemon, "invalid_token")
    assert result["answers"] == [{"error": "Invalid token", "error_code": 401}] * 3
    assert result["idle"] == [
        {"error": "Not attached to a session; send initialize first", "error_code": 400}
    ]


def test_js_action_before_init(js_daemon: DaemonProcess) -> None:
    result = scenario(js_daemon, "before_init")
    assert [f["error_code"] for f in result["frames"]] == [400, 400, 400]


def test_js_polling_burst_of_actions_is_not_dropped(js_daemon: DaemonProcess) -> None:
    """engine.io-client batches buffered packets into one POST; none may be lost."""
    assert scenario(js_daemon, "polling_burst") == {"count": 60}
