"""Workspaces follow their session across nodes (issue 16): restore at activation,
periodic snapshots while live, the archive at passivation.

A mixin of ``SessionActor``, active only with a shared store that keeps archives
(``Store.supports_workspace_archives``: PostgreSQL); with the embedded store the
workspace stays on its one disk and nothing here runs.

* Activation (after the lease is taken): when the store holds an archive newer than the
  one this node last wrote or restored for the session (a generation recorded in
  ``<data_dir>/workspace-archives/<id>``, outside the workspace), it is extracted in place
  of the workspace (``store/archive.py``: streamed, capped, nothing outside). The files
  then belong to the daemon; the sandbox hands them to the session's uid when the runtime
  starts (``Sandbox.own_workspace``), as for every file the daemon writes there.
* Live: every ``workspace_snapshot_interval`` seconds a thread (its own store handle, so
  the actor's connection is never shared) compares a tree signature with the last
  archive's and, when it changed, archives under the epoch the session holds. The actor
  only starts the thread and, on a later wakeup, reads its outcome.
* Passivation: the archive is written in the actor, after the runtime stopped and before
  the lease is released (``passivation.py``).
"""

from __future__ import annotations

import datetime
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LeaseLost, SessionActorsError
from ..protocol import status_update
from ..store import open_store
from ..store.archive import ArchiveRefused, extract_archive, tree_signature

if TYPE_CHECKING:
    from ..config import Config
    from ..store import Store

__all__ = ["WorkspaceSync"]

log = logging.getLogger("sessionactors.session")

_POLL = 1.0  # seconds between two looks at a running snapshot thread


class WorkspaceSync:
    """Restores, snapshots and archives a session's workspace through the shared store."""

    if TYPE_CHECKING:
        cfg: Config | None
        store: Store | None
        session_id: str | None
        conns: dict[str, None]
        state: str

        def wakeupAfter(self, timePeriod: float, payload: Any = None) -> None: ...
        def _send_to(self, conns: list[str], payloads: list[dict[str, Any]]) -> None: ...

    _ws_token = 0  # per activation: a snapshot timer armed for an earlier session is stale
    _ws_root: Path | None = None
    _ws_signature: str | None = None
    _ws_thread: threading.Thread | None = None
    _ws_result: tuple[str, Any] | None = None
    _ws_notice: dict[str, Any] | None = None

    def _ws_enabled(self) -> bool:
        return bool(self.store is not None and getattr(self.store, "supports_workspace_archives", False))

    def _ws_marker(self) -> Path:
        assert self.cfg is not None and self.session_id is not None
        return self.cfg.data_dir / "workspace-archives" / self.session_id

    def _ws_local_generation(self) -> int | None:
        try:
            return int(self._ws_marker().read_text())
        except (OSError, ValueError):
            return None

    def _ws_record(self, generation: int) -> None:
        marker = self._ws_marker()
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(str(generation))
        tmp.replace(marker)

    # -- activation ------------------------------------------------------------------
    def _sync_workspace_at_activation(self, workspace: Path) -> None:
        """Restore the stored archive when it is newer than this node's copy; arm the
        snapshots. Called with the lease held."""
        self._ws_token += 1
        self._ws_root, self._ws_signature, self._ws_result, self._ws_notice = workspace, None, None, None
        if not self._ws_enabled():
            return
        assert self.cfg is not None and self.store is not None and self.session_id is not None
        info = self.store.workspace_archive(self.session_id)  # type: ignore[attr-defined]
        local = self._ws_local_generation()
        if info is not None and (local is None or local < info["generation"] or not workspace.exists()):
            try:
                chunks = self.store.read_workspace_archive(self.session_id, info["generation"])  # type: ignore[attr-defined]
                size = extract_archive(chunks, str(workspace), self.cfg.workspace_archive_max_bytes)
            except ArchiveRefused as exc:
                log.error("session %s: the stored workspace archive is refused: %s", self.session_id, exc)
                why = f"The stored workspace could not be restored ({exc}); the workspace is this node's copy"
                self._ws_notice = status_update("ERROR_WORKSPACE_RESTORE", why, "error")
            else:
                self._ws_record(info["generation"])
                log.info(
                    "session %s: workspace restored from the %s archive of node %s (%d bytes)",
                    self.session_id,
                    info["kind"],
                    info["node"],
                    size,
                )
                if info["kind"] == "snapshot":
                    taken = datetime.datetime.fromtimestamp(info["taken_at"], datetime.timezone.utc)
                    self._ws_notice = status_update(
                        "WORKSPACE_RESTORED",
                        f"workspace restored from a snapshot taken at {taken.isoformat(timespec='seconds')}; "
                        f"later changes were lost with node {info['node']}",
                    )
        self._ws_signature = tree_signature(str(workspace))
        self._ws_arm(self.cfg.workspace_snapshot_interval)

    def _send_workspace_notice(self, conn: str) -> None:
        """The restore's status update, to the first connection the runtime starts for."""
        if self._ws_notice is not None:
            self._send_to([conn], [self._ws_notice])
            self._ws_notice = None

    # -- periodic snapshots -----------------------------------------------------------
    def _ws_arm(self, delay: float) -> None:
        if delay > 0:
            self.wakeupAfter(delay, payload=("ws_snapshot", self._ws_token))

    def _on_snapshot_wakeup(self, token: int) -> None:
        if token != self._ws_token or self.state != "live" or not self._ws_enabled():
            return  # armed for an earlier session of this (recycled) actor
        assert self.cfg is not None
        if self._ws_thread is not None:
            if self._ws_thread.is_alive():
                self._ws_arm(_POLL)
                return
            self._ws_thread = None
            self._ws_outcome()
            self._ws_arm(self.cfg.workspace_snapshot_interval)
            return
        try:
            epoch = self.store.leases.epoch(self.session_id)  # type: ignore[union-attr]
        except LeaseLost:
            return  # fenced: the next append stops this copy
        if epoch is None:
            return
        thread = threading.Thread(
            target=self._ws_snapshot, args=(epoch,), name="workspace-snapshot", daemon=True
        )
        self._ws_thread = thread
        thread.start()
        self._ws_arm(_POLL)

    def _ws_snapshot(self, epoch: int) -> None:
        """In the snapshot thread: archive when the tree changed since the last archive."""
        assert self.cfg is not None and self._ws_root is not None and self.session_id is not None
        try:
            signature = tree_signature(str(self._ws_root))
            if signature == self._ws_signature:
                self._ws_result = ("unchanged", None)
                return
            store = open_store(self.cfg.data_dir, **self.cfg.store_options)
            try:
                info = store.put_workspace_archive(  # type: ignore[attr-defined]
                    self.session_id,
                    str(self._ws_root),
                    kind="snapshot",
                    max_bytes=self.cfg.workspace_archive_max_bytes,
                    epoch=epoch,
                )
            finally:
                store.close()
            self._ws_result = ("archived", (info, signature))
        except Exception as exc:  # reported by the actor on its next wakeup
            self._ws_result = ("failed", exc)

    def _ws_outcome(self) -> None:
        """In the actor: what the last snapshot thread did."""
        result, self._ws_result = self._ws_result, None
        if result is None or result[0] == "unchanged":
            return
        if result[0] == "archived":
            info, self._ws_signature = result[1]
            self._ws_record(info["generation"])
            log.info(
                "session %s: workspace snapshot %d written (%d bytes)",
                self.session_id,
                info["generation"],
                info["size"],
            )
            return
        self._ws_failed(result[1], "snapshot")

    def _ws_failed(self, exc: BaseException, kind: str) -> None:
        log.error("session %s: the workspace %s archive is refused: %s", self.session_id, kind, exc)
        if isinstance(exc, LeaseLost):
            return  # the next append stops this copy (passivation._fenced)
        why = f"The workspace was not archived ({exc}); the previous archive stays"
        self._send_to(list(self.conns), [status_update("ERROR_WORKSPACE_ARCHIVE", why, "error")])

    # -- passivation ---------------------------------------------------------------------
    def _archive_workspace_at_passivation(self) -> None:
        """Archive the stopped session's workspace before its lease is released."""
        if not self._ws_enabled() or self._ws_root is None:
            return
        assert self.cfg is not None and self.store is not None and self.session_id is not None
        self._ws_token += 1  # no more snapshots for this activation
        if self._ws_thread is not None:
            self._ws_thread.join()
            self._ws_thread = None
            self._ws_outcome()
        if not self._ws_root.is_dir():
            return
        try:
            info = self.store.put_workspace_archive(  # type: ignore[attr-defined]
                self.session_id,
                str(self._ws_root),
                kind="passivation",
                max_bytes=self.cfg.workspace_archive_max_bytes,
            )
        except (SessionActorsError, OSError) as exc:
            self._ws_failed(exc, "passivation")
            return
        self._ws_record(info["generation"])
        log.info("session %s: workspace archived at passivation (%d bytes)", self.session_id, info["size"])
