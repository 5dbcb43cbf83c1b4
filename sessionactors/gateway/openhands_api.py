"""The REST routes the OpenHands web client (Dec 2024) calls, in the shapes it parses.

Its ``src/api/open-hands.ts`` names them. The session is the one the bearer token names
(``Authorization: Bearer <session token>``, as the client sets it after INIT); every
workspace operation goes through that session's actor (``query`` with an op of
``bridge.FILE_OPS``), which rehydrates a passivated session first, exactly like
``/api/sessions/<id>/files``. Every answer is JSON (the zip excepted), errors included:
``{"error": "<what is wrong>"}`` with a 4xx/5xx status, never an HTML page.

| route | answer |
|---|---|
| ``GET /api/options/models\\|agents\\|security-analyzers`` | a list of strings from the config (empty by default); no token needed |
| ``GET /api/list-files?path=`` | workspace-relative paths, directories first and ending in ``/`` |
| ``GET /api/select-file?file=`` | ``{"code": "<text>"}`` |
| ``POST /api/save-file`` ``{"filePath", "content"}`` | ``{"message": "File saved successfully"}`` |
| ``POST /api/upload-files`` (multipart, field ``files``) | ``{"message", "uploaded_files": [...], "skipped_files": [{"name", "reason"}]}`` |
| ``POST /api/zip-directory`` | the workspace as ``application/zip``, streamed from a file the session wrote |
| ``GET /api/conversation`` | ``{"conversation_id", "runtime_id"}`` |
| ``GET /api/vscode-url`` | ``{"vscode_url": null, "error": "..."}``: there is no VS Code here |
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs

from ..config import Config
from ..errors import InvalidToken
from .webclient import CHUNK

if TYPE_CHECKING:
    from ..auth.tokens import TokenSigner

__all__ = ["OpenHandsApi", "ROUTES", "UPLOAD_BODY_FACTOR"]

log = logging.getLogger("sessionactors.rest")

ROUTES = frozenset(
    {
        "/api/list-files", "/api/select-file", "/api/save-file", "/api/upload-files",
        "/api/zip-directory", "/api/conversation", "/api/vscode-url", "/api/options/models",
        "/api/options/agents", "/api/options/security-analyzers",
    }
)  # fmt: skip
_METHODS = {"/api/save-file": "POST", "/api/upload-files": "POST", "/api/zip-directory": "POST"}
# A multipart body above this many times ``upload_max_file_bytes`` is refused whole (413).
UPLOAD_BODY_FACTOR = 4
_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 415: "Unsupported Media Type",
            500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip

Authorize = Callable[[str, dict[str, Any]], "tuple[int, Any]"]


class GatewayPort(Protocol):
    """What these routes need of the gateway (``rest.GatewayPort`` has it; named here so that
    the two modules do not import each other)."""

    signer: TokenSigner

    def query(
        self, op: str, session_id: str | None = None, timeout: float = 5.0, **extra: Any
    ) -> tuple[int, Any]: ...


class _Answer(Exception):
    """Ends a request early with a JSON answer."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status, self.body = status, body


def _stream_and_remove(path: Path) -> Iterator[bytes]:
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk
    finally:  # also when the client goes away mid-download
        path.unlink(missing_ok=True)


class OpenHandsApi:
    """WSGI responder for ``ROUTES``."""

    def __init__(self, gateway: GatewayPort, cfg: Config, authorize: Authorize) -> None:
        self.gateway, self.cfg, self.authorize = gateway, cfg, authorize

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "").rstrip("/")
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if method != _METHODS.get(path, "GET"):
                raise _Answer(405, {"error": f"{path} takes {_METHODS.get(path, 'GET')}"})
            if path.startswith("/api/options/"):
                key = "options_" + path.rsplit("/", 1)[1].replace("-", "_")
                return self._json(start_response, 200, list(getattr(self.cfg, key)))
            if path == "/api/vscode-url":
                body = {"vscode_url": None, "error": "VS Code is not available on this server"}
                return self._json(start_response, 200, body)
            session_id = self._session(environ)
            if path == "/api/zip-directory":
                return self._zip(session_id, start_response)
            status, body = self._route(path, session_id, environ)
        except _Answer as answer:
            status, body = answer.status, answer.body
        except Exception:
            log.exception("REST %s %s failed", method, path)
            status, body = 500, {"error": "internal error"}
        return self._json(start_response, status, body)

    def _route(self, path: str, session_id: str, environ: dict[str, Any]) -> tuple[int, Any]:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        if path == "/api/conversation":
            return 200, {"conversation_id": session_id, "runtime_id": f"{self.cfg.runtime}-{session_id}"}
        if path == "/api/list-files":
            where = query.get("path", ["."])[0] or "."
            return self._ask("list_tree", session_id, where)
        if path == "/api/select-file":
            name = query.get("file", [""])[0]
            if not name:
                raise _Answer(400, {"error": "select-file needs ?file=<path>"})
            status, body = self._ask("read_file", session_id, name)
            return (200, {"code": body["content"]}) if status == 200 else (status, body)
        if path == "/api/save-file":
            data = self._json_body(environ)
            file_path, content = data.get("filePath"), data.get("content")
            if not isinstance(file_path, str) or not file_path or not isinstance(content, str):
                raise _Answer(400, {"error": 'save-file needs a JSON body {"filePath": str, "content": str}'})
            return self._ask("save_file", session_id, file_path.lstrip("/"), {"content": content})
        return self._upload(session_id, environ)

    # -- pieces --------------------------------------------------------------------------
    def _session(self, environ: dict[str, Any]) -> str:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if not auth.startswith("Bearer "):
            raise _Answer(401, {"error": "Invalid token"})
        try:
            claims = self.gateway.signer.verify(auth[len("Bearer ") :].strip())
        except InvalidToken:
            raise _Answer(401, {"error": "Invalid token"}) from None
        status, info = self.authorize(claims.session_id, environ)
        if status != 200:
            raise _Answer(status, info)
        return claims.session_id

    def _ask(
        self, op: str, session_id: str, path: str, data: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        return self.gateway.query(op, session_id, timeout=60.0, path=path, data=data or {})

    def _read_body(self, environ: dict[str, Any], limit: int) -> bytes:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise _Answer(400, {"error": "bad Content-Length"}) from None
        if length > limit:
            raise _Answer(413, {"error": f"request body of {length} bytes is over the {limit} byte limit"})
        return bytes(environ["wsgi.input"].read(length)) if length > 0 else b""

    def _json_body(self, environ: dict[str, Any]) -> dict[str, Any]:
        raw = self._read_body(environ, self.cfg.max_frame_bytes)
        try:
            data = json.loads(raw or b"null")
        except ValueError:
            raise _Answer(400, {"error": "the body is not valid JSON"}) from None
        if not isinstance(data, dict):
            raise _Answer(400, {"error": "the body must be a JSON object"})
        return data

    def _upload(self, session_id: str, environ: dict[str, Any]) -> tuple[int, Any]:
        kind = environ.get("CONTENT_TYPE", "")
        if not kind.startswith("multipart/form-data"):
            raise _Answer(415, {"error": "upload-files takes multipart/form-data (field 'files')"})
        body = self._read_body(environ, self.cfg.upload_max_file_bytes * UPLOAD_BODY_FACTOR)
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + kind.encode("latin-1") + b"\r\n\r\n" + body
        )
        if not message.is_multipart():
            raise _Answer(400, {"error": "the multipart body could not be parsed"})
        uploaded: list[str] = []
        skipped: list[dict[str, str]] = []
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") != "files":
                continue
            name = str(part.get_filename() or "")
            data = part.get_payload(decode=True)
            data = data if isinstance(data, bytes) else b""
            if not name or name.endswith("/") or "\0" in name:
                skipped.append({"name": name, "reason": "Invalid file name"})
            elif len(uploaded) >= self.cfg.upload_max_files:
                skipped.append(
                    {"name": name, "reason": f"Too many files (limit {self.cfg.upload_max_files})"}
                )
            elif len(data) > self.cfg.upload_max_file_bytes:
                limit = self.cfg.upload_max_file_bytes
                skipped.append({"name": name, "reason": f"File too large (limit {limit} bytes)"})
            else:
                payload = {"content_b64": base64.b64encode(data).decode()}
                status, answer = self._ask("upload_file", session_id, name.lstrip("/"), payload)
                if status == 200:
                    uploaded.append(name)
                else:
                    skipped.append({"name": name, "reason": str(answer.get("error", status))})
        return 200, {
            "message": "Files uploaded successfully" if uploaded else "No files were uploaded",
            "uploaded_files": uploaded,
            "skipped_files": skipped,
        }

    def _zip(self, session_id: str, start_response: Callable[..., Any]) -> Iterable[bytes]:
        status, body = self._ask("zip_workspace", session_id, ".")
        if status != 200:
            return self._json(start_response, status, body)
        path = Path(body["zip_path"])
        if path.parent != self.cfg.run_dir / "zips":  # only ever a file the session wrote for us
            return self._json(start_response, 500, {"error": "internal error"})
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/zip"),
                ("Content-Length", str(path.stat().st_size)),
                ("Content-Disposition", 'attachment; filename="workspace.zip"'),
                ("Cache-Control", "no-store"),
            ],
        )
        return _stream_and_remove(path)

    @staticmethod
    def _json(start_response: Callable[..., Any], status: int, body: Any) -> Iterable[bytes]:
        data = json.dumps(body).encode()
        reason = "OK" if status == 200 else _REASONS.get(status, "Error")
        start_response(
            f"{status} {reason}",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(data))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [data]
