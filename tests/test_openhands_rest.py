"""The OpenHands client's REST routes (``gateway/openhands_api.py``) and the web client
serving (``gateway/webclient.py``) against a real daemon: shapes, limits, and bad input
answered with a clear JSON error, never an HTML page."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest

from sessionactors.config import Config
from sessionactors.errors import ConfigError

from .daemon_harness import Client, DaemonProcess, wait_for

BOUNDARY = "----sessionactors-test-boundary"


def request(
    d: DaemonProcess,
    method: str,
    path: str,
    token: str | None = None,
    body: bytes | None = None,
    content_type: str | None = None,
) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of one HTTP request."""
    req = urllib.request.Request(d.url + path, method=method, data=body)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if content_type is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def api(d: DaemonProcess, method: str, path: str, token: str | None = None, **kw: Any) -> tuple[int, Any]:
    status, kind, data = request(d, method, path, token, **kw)
    assert kind == "application/json", (status, kind, data[:200])  # errors too: never HTML
    return status, json.loads(data)


def multipart(files: list[tuple[str, bytes]], field: str = "files") -> tuple[bytes, str]:
    out = io.BytesIO()
    for name, data in files:
        out.write(f"--{BOUNDARY}\r\n".encode())
        out.write(f'Content-Disposition: form-data; name="{field}"; filename="{name}"\r\n'.encode())
        out.write(b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={BOUNDARY}"


def test_openhands_rest_routes(daemon_factory: Any) -> None:
    d = daemon_factory(
        runtime="local",
        close_delay=0.5,
        options_models="gpt-4o,claude",
        upload_max_file_bytes=1000,
        upload_max_files=2,
    )
    c = Client(d.url)
    ok = c.init()
    token, sid = ok["token"], ok["session_id"]
    c.send({"action": "run", "args": {"command": "mkdir -p dir && echo x > dir/x.txt && echo top > top.txt"}})
    wait_for(lambda: any(e.get("extras", {}).get("exit_code") == 0 for e in c.events()), what="setup")

    assert api(d, "GET", "/api/options/models") == (200, ["gpt-4o", "claude"])
    assert api(d, "GET", "/api/options/agents") == (200, [])
    assert api(d, "GET", "/api/options/security-analyzers") == (200, [])
    assert api(d, "GET", "/api/vscode-url", token)[1]["vscode_url"] is None
    assert api(d, "GET", "/api/conversation", token) == (
        200,
        {"conversation_id": sid, "runtime_id": f"local-{sid}"},
    )

    # Authorisation: the bearer token of the session.
    assert api(d, "GET", "/api/list-files") == (401, {"error": "Invalid token"})
    assert api(d, "GET", "/api/list-files", "not-a-token") == (401, {"error": "Invalid token"})

    assert api(d, "GET", "/api/list-files", token) == (200, ["dir/", "top.txt"])
    assert api(d, "GET", "/api/list-files?path=dir/", token) == (200, ["dir/x.txt"])
    status, body = api(d, "GET", "/api/list-files?path=../", token)
    assert status == 400 and "outside the workspace" in body["error"]
    assert api(d, "GET", "/api/list-files?path=nope/", token)[0] == 404

    assert api(d, "GET", "/api/select-file?file=top.txt", token) == (200, {"code": "top\n"})
    assert api(d, "GET", "/api/select-file", token)[0] == 400
    assert api(d, "GET", "/api/select-file?file=missing.txt", token)[0] == 404
    assert api(d, "GET", "/api/select-file?file=dir/", token)[0] == 404
    assert api(d, "GET", "/api/select-file?file=../../etc/passwd", token)[0] == 400

    saved = json.dumps({"filePath": "dir/new.txt", "content": "saved text"}).encode()
    assert api(d, "POST", "/api/save-file", token, body=saved, content_type="application/json") == (
        200,
        {"message": "File saved successfully"},
    )
    assert api(d, "GET", "/api/select-file?file=dir/new.txt", token) == (200, {"code": "saved text"})
    for bad in (b"{not json", b"[1]", json.dumps({"filePath": 3, "content": "x"}).encode()):
        status, body = api(d, "POST", "/api/save-file", token, body=bad, content_type="application/json")
        assert status == 400 and body["error"], bad
    assert api(d, "GET", "/api/save-file", token)[0] == 405

    body, kind = multipart(
        [("a.txt", b"A" * 10), ("big.bin", b"B" * 1001), ("b.txt", b"bee"), ("c.txt", b"C")]
    )
    status, answer = api(d, "POST", "/api/upload-files", token, body=body, content_type=kind)
    assert status == 200 and answer["uploaded_files"] == ["a.txt", "b.txt"]
    assert answer["skipped_files"] == [
        {"name": "big.bin", "reason": "File too large (limit 1000 bytes)"},
        {"name": "c.txt", "reason": "Too many files (limit 2)"},
    ]
    assert api(d, "GET", "/api/select-file?file=b.txt", token) == (200, {"code": "bee"})
    body, kind = multipart([("../escape.txt", b"x")])
    answer = api(d, "POST", "/api/upload-files", token, body=body, content_type=kind)[1]
    assert answer["uploaded_files"] == [] and "outside the workspace" in answer["skipped_files"][0]["reason"]
    assert api(d, "POST", "/api/upload-files", token, body=b"x", content_type="text/plain")[0] == 415
    body, kind = multipart([("huge.bin", b"H" * 5000)])
    assert api(d, "POST", "/api/upload-files", token, body=body, content_type=kind)[0] == 413

    status, kind, data = request(d, "POST", "/api/zip-directory", token, body=b"{}")
    assert status == 200 and kind == "application/zip"
    names = sorted(zipfile.ZipFile(io.BytesIO(data)).namelist())
    assert names == ["a.txt", "b.txt", "dir/new.txt", "dir/x.txt", "top.txt"]
    assert not list((d.data_dir / "run" / "zips").iterdir())  # streamed, then removed

    assert api(d, "GET", "/api/no-such-route", token)[0] == 404
    # A passivated session is rehydrated by a REST call, like /api/sessions/<id>/files.
    c.close()
    wait_for(
        lambda: d.http("GET", f"/api/sessions/{sid}", token=token)[1]["state"] == "passivated",
        30,
        "passivated",
    )
    assert api(d, "GET", "/api/list-files", token) == (200, ["dir/", "a.txt", "b.txt", "top.txt"])


def test_web_client_served_and_console_moves(daemon_factory: Any, tmp_path: Path) -> None:
    build = tmp_path / "build"
    (build / "assets").mkdir(parents=True)
    (build / "locales" / "en").mkdir(parents=True)
    (build / "index.html").write_text("<html>the spa</html>")
    (build / "assets" / "app-1234.js").write_text("console.log(1)")
    (build / "config.json").write_text('{"APP_MODE": "oss"}')
    (build / "locales" / "en" / "translation.json").write_text("{}")
    (tmp_path / "outside.txt").write_text("not served")
    d = daemon_factory(web_client=str(build), close_delay=1.0)

    for path in ("/", "/app", "/app/deeper/route"):
        status, kind, data = request(d, "GET", path)
        assert (status, data) == (200, b"<html>the spa</html>") and kind.startswith("text/html"), path
    status, kind, data = request(d, "GET", "/assets/app-1234.js")
    assert status == 200 and "javascript" in kind and data == b"console.log(1)"
    assert request(d, "GET", "/config.json")[2] == b'{"APP_MODE": "oss"}'
    assert request(d, "GET", "/locales/en/translation.json")[0] == 200
    for missing in ("/assets/gone.js", "/locales/en-US/translation.json", "/nope.png", "/../outside.txt"):
        assert request(d, "GET", missing)[0] == 404, missing
    assert request(d, "POST", "/")[0] == 405
    status, kind, data = request(d, "GET", "/console/")
    assert status == 200 and b"/static/console.js" in data  # the built-in console, moved
    assert api(d, "GET", "/api/health") == (200, {"status": "ok"})
    assert api(d, "GET", "/api/unknown")[0] == 404  # the API never falls back to index.html
    c = Client(d.url)  # Socket.IO on the same origin
    assert c.init()["status"] == "ok"


def test_web_client_must_be_a_build(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="web_client"):
        Config(web_client=tmp_path).validate()
    (tmp_path / "index.html").write_text("x")
    assert Config(web_client=tmp_path).validate().openhands_mode
    assert not Config(web_client=tmp_path, openhands_compat="off").validate().openhands_mode
    assert Config(openhands_compat="on").validate().openhands_mode and not Config().openhands_mode
