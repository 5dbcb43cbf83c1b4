"""REST access to a session's workspace, answered by its session actor.

The gateway never touches a workspace: it sends a ``query`` whose op is in
``bridge.FILE_OPS``; the supervisor forwards it as a ``FileRequest`` (rehydrating a
passivated session first) and the session actor answers with a ``reply`` frame on its
own link. Every path goes through the runtime's confinement (``Runtime._confine``).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
from typing import TYPE_CHECKING, Any

from ..errors import ActionError
from ..messages import FileRequest

if TYPE_CHECKING:
    from ..config import Config
    from ..runtimes.base import Runtime

__all__ = ["WorkspaceFiles", "tree_entries"]

log = logging.getLogger("sessionactors.session")


def tree_entries(path: str, entries: list[dict[str, Any]]) -> list[str]:
    """The OpenHands ``list-files`` shape: workspace-relative paths, directories first and
    ending in ``/``."""
    prefix = path.strip("/")
    prefix = "" if prefix in ("", ".") else prefix + "/"
    dirs = [f"{prefix}{e['name']}/" for e in entries if e["type"] == "dir"]
    files = [f"{prefix}{e['name']}" for e in entries if e["type"] != "dir"]
    return dirs + files


class WorkspaceFiles:
    """Mixin of ``SessionActor``: list, read, save, upload and zip for the REST API."""

    if TYPE_CHECKING:
        cfg: Config | None
        runtime: Runtime | None
        session_id: str | None

        def outbox_send(self, frame: dict[str, Any]) -> None: ...

    def _on_file_request(self, msg: FileRequest) -> None:
        body: Any
        if self.runtime is None:  # its constructor raised (session.py answers its INIT 503)
            error = {"error": "the session's runtime could not be created"}
            self.outbox_send({"t": "reply", "req": msg.req, "status": 503, "body": error})
            return
        try:
            status, body = 200, self._file_op(msg)
        except ActionError as exc:
            status, body = 400, {"error": str(exc)}
        except FileNotFoundError:
            status, body = 404, {"error": f"No such file or directory: {msg.path}"}
        except IsADirectoryError:
            status, body = 400, {"error": f"{msg.path} is a directory"}
        except OSError as exc:
            status, body = 400, {"error": f"Cannot access {msg.path}: {exc.strerror or exc}"}
        self.outbox_send({"t": "reply", "req": msg.req, "status": status, "body": body})

    def _file_op(self, msg: FileRequest) -> Any:
        assert self.runtime is not None and self.cfg is not None
        rt = self.runtime
        if msg.op == "list":
            return rt.list_files(msg.path)
        if msg.op == "tree":
            return tree_entries(msg.path, rt.list_files(msg.path))
        if msg.op == "read":
            return {"path": msg.path, "content": rt.read_file(msg.path)}
        if msg.op == "save":
            content = msg.data.get("content")
            if not isinstance(content, str):
                raise ActionError("'content' must be a string")
            rt.write_file(msg.path, content.encode("utf-8"))
            return {"message": "File saved successfully"}
        if msg.op == "upload":
            try:
                data = base64.b64decode(str(msg.data.get("content_b64", "")), validate=True)
            except (binascii.Error, ValueError):
                raise ActionError("the upload is not valid base64") from None
            rt.write_file(msg.path, data)
            return {"path": msg.path, "size": len(data)}
        if msg.op == "zip":
            # On disk, not in memory: the gateway streams the file and then removes it.
            folder = self.cfg.run_dir / "zips"
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            dest = folder / f"{self.session_id}-{secrets.token_hex(8)}.zip"
            try:
                rt.zip_workspace(dest)
            except BaseException:
                dest.unlink(missing_ok=True)
                raise
            os.chmod(dest, 0o600)
            return {"zip_path": str(dest)}
        raise ActionError(f"unknown file operation {msg.op!r}")
