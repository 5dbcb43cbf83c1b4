"""Serving a built single-page web client (``web_client``) from the daemon's own port.

The December 2024 OpenHands server served its frontend build next to ``/api`` and
``/socket.io``, and the client relies on that one origin: it opens its socket to
``window.location.host`` and calls ``/api/...`` relative to the page. So with ``web_client``
set, a request that is not for the API, Socket.IO, ``/metrics`` or the built-in console
(which moves to ``/console/``) gets the file of that path under the build directory, and any
other path (a client-side route such as ``/app``) gets ``index.html``. A missing file with
an extension, or under ``/assets/`` or ``/locales/``, is a 404: handing HTML to a script or
a JSON loader only hides the error. Files are streamed in chunks, never read whole.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["WebClient", "CHUNK"]

CHUNK = 64 * 1024
_NOT_SPA_ROUTES = ("/assets/", "/locales/")


def _stream(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(CHUNK)
            if not chunk:
                return
            yield chunk


class WebClient:
    """A WSGI responder for the files of one built single-page app."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _file(self, path: str) -> Path | None:
        rel = path.lstrip("/")
        if not rel or "\0" in rel:
            return None
        target = (self.root / rel).resolve()
        if self.root not in target.parents or not target.is_file():
            return None  # outside the build (``..``, a symlink out) is the same as missing
        return target

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return self._plain(start_response, "405 Method Not Allowed", b"method not allowed")
        target = self._file(path)
        if target is None:
            last = path.rsplit("/", 1)[-1]
            if path.startswith(_NOT_SPA_ROUTES) or "." in last:
                return self._plain(start_response, "404 Not Found", b"not found")
            target = self.root / "index.html"  # a client-side route
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind.endswith(("javascript", "json")):
            kind += "; charset=utf-8"
        # Vite's assets carry a content hash in their names: cacheable for good; the rest
        # (index.html, config.json, locales) must be revalidated.
        hashed = path.startswith("/assets/") and target.name != "index.html"
        start_response(
            "200 OK",
            [
                ("Content-Type", kind),
                ("Content-Length", str(os.path.getsize(target))),
                ("Cache-Control", "public, max-age=31536000, immutable" if hashed else "no-cache"),
                ("X-Content-Type-Options", "nosniff"),
            ],
        )
        if environ.get("REQUEST_METHOD") == "HEAD":
            return [b""]
        return _stream(target)

    @staticmethod
    def _plain(start_response: Callable[..., Any], status: str, body: bytes) -> Iterable[bytes]:
        start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
