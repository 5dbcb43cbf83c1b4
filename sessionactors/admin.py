"""What ``sessionactors status`` and ``sessions`` show: sessions from the running daemon's
admin API (admin token), or from the store when no daemon runs; ``sessions show|delete``
take an id or a unique prefix of one, and times are shown as ISO 8601 (UTC).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any

from .config import Config
from .daemon import pid_alive, read_state
from .errors import DaemonError

__all__ = ["admin_get", "list_sessions", "sessions_table", "sessions_cmd", "iso_time", "url_host"]


def url_host(host: str) -> str:
    """``host`` as this machine reaches it in a URL (wildcards to loopback, IPv6 in brackets)."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def admin_get(cfg: Config, state: dict[str, Any], path: str, method: str = "GET") -> Any:
    """Ask the running daemon's admin API; DaemonError (exit 1) when it cannot answer."""
    try:
        token = (cfg.run_dir / "admin.token").read_text().strip()
    except OSError as exc:
        raise DaemonError(f"cannot read the admin token: {exc}") from None
    import urllib.error  # here: the actor processes fork from this one; keep ssl out of them
    import urllib.request

    url = f"http://{url_host(str(state['host']))}:{state['port']}{path}"
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            detail = exc.read(2000).decode("utf-8", "replace")
        raise DaemonError(f"the daemon answered {method} {path} with HTTP {exc.code}: {detail}") from None
    except (OSError, ValueError) as exc:
        raise DaemonError(f"cannot reach the daemon at {url}: {exc}") from None


def list_sessions(cfg: Config) -> tuple[bool, list[dict[str, Any]]]:
    """(daemon running, session infos): from the daemon, else from the store."""
    state = read_state(cfg)
    if state and pid_alive(int(state["pid"])):
        return True, admin_get(cfg, state, "/api/admin/sessions")
    from .store import open_store

    if not (cfg.data_dir / "sessionactors.db").exists():
        return False, []
    store = open_store(cfg.data_dir, **cfg.store_options)
    try:
        return False, [
            {
                "session_id": r.session_id,
                "state": "passivated" if r.state == "live" else r.state,
                "connections": 0,
                "last_event_id": store.last_event_id(r.session_id),
                "owner_login": r.owner_login,
                "last_active": r.last_active,
            }
            for r in store.list_sessions()
        ]
    finally:
        store.close()


_TIMES = frozenset({"last_active", "created_at"})  # epoch seconds shown as ISO 8601 by `sessions show`


def iso_time(value: Any) -> Any:
    """An epoch time as ISO 8601 in UTC (seconds), anything else unchanged."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="seconds")
    return value


def sessions_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'SESSION':32}  {'STATE':10}  {'CONNS':>5}  {'EVENTS':>7}  {'OWNER':12}  LAST ACTIVE"
    lines = [head]
    for r in rows:
        when = iso_time(r.get("last_active") or 0) or "-"
        lines.append(
            f"{r['session_id']:32}  {r['state']:10}  {r['connections']:>5}  {r['last_event_id'] + 1:>7}  "
            f"{(r.get('owner_login') or '-'):12}  {when}"
        )
    return "\n".join(lines)


def sessions_cmd(cfg: Config, action: str, session_id: str | None) -> int:
    if action == "list":
        print(sessions_table(list_sessions(cfg)[1]))
        return 0
    if not session_id:
        print(f"sessions {action} needs a session id", file=sys.stderr)
        return 2
    running, rows = list_sessions(cfg)
    match = [r for r in rows if r["session_id"] == session_id] or [
        r for r in rows if r["session_id"].startswith(session_id)
    ]
    if not match:
        print(f"no session {session_id}", file=sys.stderr)
        return 1
    if len(match) > 1:
        print(f"{session_id} is the prefix of {len(match)} sessions; give more of the id", file=sys.stderr)
        return 1
    session_id = match[0]["session_id"]
    if action == "show":
        shown = {k: iso_time(v) if k in _TIMES else v for k, v in match[0].items()}
        print(json.dumps(shown, indent=2))
        return 0
    if running:
        state = read_state(cfg) or {}
        admin_get(cfg, state, f"/api/admin/sessions/{session_id}", method="DELETE")
    else:
        import shutil

        from .store import open_store

        store = open_store(cfg.data_dir, **cfg.store_options)
        store.delete_session(session_id)
        store.close()
        shutil.rmtree(cfg.workspaces_dir / session_id, ignore_errors=True)
    print(f"deleted {session_id}")
    return 0


_TIMES = frozenset({"last_active", "created_at"})  # epoch seconds shown as ISO 8601 by `sessions show`
