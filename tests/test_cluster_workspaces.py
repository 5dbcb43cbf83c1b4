"""Workspaces follow their session (issue 16) on real daemons sharing a real PostgreSQL:
passivated on node A and rehydrated on node B with its files; after a SIGKILL of node A,
the last snapshot's files and a status saying so; an archive over the cap refused while
the session keeps working; a hostile archive in the store refused at restore; a drain
that says how many archives it wrote."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any

from .cluster_harness import cli, cluster_fixture, nodes_json, rows  # noqa: F401 - a fixture
from .daemon_harness import Client, wait_for
from .test_cluster_failover import kill_every_process, reinit


def run(tab: Client, command: str) -> str:
    """Run ``command`` in the session's shell; its whole output (exit code 0 asserted).

    Matched by the action's own id, not by position: a tab that just re-INITed may still be
    receiving its replay, whose old observations must not be taken for this one's."""
    before = len(tab.events())
    tab.send({"action": "run", "args": {"command": command}})

    def finished(_: Any) -> dict[str, Any] | None:
        events = tab.events()
        mine = [
            e
            for e in events[before:]
            if e.get("action") == "run" and e.get("args", {}).get("command") == command
        ]
        if not mine:
            return None
        return next(
            (e for e in events if e.get("cause") == mine[-1]["id"] and "exit_code" in e.get("extras", {})),
            None,
        )

    done = tab.wait(finished, what=f"{command!r} to finish")
    assert done["extras"]["exit_code"] == 0, done
    cause = done["cause"]
    return "".join(e.get("content", "") for e in tab.events() if e.get("cause") == cause)


def statuses(tab: Client, name: str) -> list[dict[str, Any]]:
    return [f for f in tab.snapshot() if f.get("status_update") and f.get("id") == f"STATUS${name}"]


def archive_row(pg_url: str, sid: str) -> tuple[Any, ...] | None:
    found = rows(
        pg_url, "SELECT kind, node, generation FROM sa_workspace_archives WHERE session_id = %s", sid
    )
    return found[0] if found else None


def test_a_passivated_workspace_is_there_when_the_session_rehydrates_elsewhere(
    cluster: Any, pg_url: str
) -> None:
    one = cluster("node-a", "127.0.0.1", runtime="local", close_delay=0.5)
    two = cluster("node-b", "127.0.0.2", runtime="local")
    tab = Client(one.url)
    try:
        ok = tab.init()
        sid = ok["session_id"]
        run(tab, "mkdir -p src && echo written-on-a > src/notes.txt && chmod 750 src")
    finally:
        tab.close()
    wait_for(lambda: (archive_row(pg_url, sid) or ("",))[0] == "passivation", 30, "the passivation archive")
    wait_for(
        lambda: not rows(pg_url, "SELECT 1 FROM sa_leases WHERE session_id = %s AND node IS NOT NULL", sid),
        30,
        "node-a to release the lease",
    )
    there = two.data_dir / "workspaces" / sid
    assert not there.exists()
    moved = Client(two.url)
    try:
        assert moved.init(token=ok["token"], latest=-1)["session_id"] == sid
        assert (there / "src" / "notes.txt").read_text() == "written-on-a\n"
        assert run(moved, "cat src/notes.txt").strip() == "written-on-a"
        assert statuses(moved, "WORKSPACE_RESTORED") == []  # a passivation archive loses nothing
    finally:
        moved.close()


def test_after_a_kill_the_session_has_the_last_snapshot_and_says_so(cluster: Any, pg_url: str) -> None:
    one = cluster("node-a", "127.0.0.1", runtime="local", workspace_snapshot_interval=1)
    two = cluster("node-b", "127.0.0.2", runtime="local")
    tab = Client(one.url)
    try:
        ok = tab.init()
        sid = ok["session_id"]
        run(tab, "echo snapshotted > kept.txt")
        wait_for(lambda: archive_row(pg_url, sid) is not None, 30, "a periodic snapshot")
        assert archive_row(pg_url, sid)[:2] == ("snapshot", "node-a")  # type: ignore[index]
        killed = time.monotonic()
        kill_every_process(one.pids())
    finally:
        tab.close()
    again, _, _ = reinit(two.url, ok["token"], killed + 45)
    try:
        assert (two.data_dir / "workspaces" / sid / "kept.txt").read_text() == "snapshotted\n"
        notice = again.wait(lambda fs: statuses(again, "WORKSPACE_RESTORED"), what="the restore's status")[0]
        assert notice["type"] == "info"
        assert notice["message"].startswith("workspace restored from a snapshot taken at ")
        assert notice["message"].endswith("later changes were lost with node node-a")
        assert run(again, "cat kept.txt").strip() == "snapshotted"
    finally:
        again.close()


def test_an_archive_over_the_cap_is_refused_and_the_session_keeps_serving(cluster: Any, pg_url: str) -> None:
    one = cluster(
        "node-a",
        "127.0.0.1",
        runtime="local",
        workspace_snapshot_interval=1,
        workspace_archive_max_bytes=65536,
    )
    tab = Client(one.url)
    try:
        ok = tab.init()
        run(tab, "head -c 400000 /dev/urandom > big.bin")
        refused = tab.wait(lambda fs: statuses(tab, "ERROR_WORKSPACE_ARCHIVE"), 30, "the refusal")[0]
        assert (
            refused["type"] == "error" and "workspace_archive_max_bytes (65536 bytes)" in refused["message"]
        )
        assert archive_row(pg_url, ok["session_id"]) is None  # nothing half-written stands
        assert rows(
            pg_url, "SELECT count(*) FROM sa_workspace_chunks WHERE session_id = %s", ok["session_id"]
        ) in (
            [(0,)],
            [(1,)],  # a chunk of the next attempt, in flight
        )
        assert run(tab, "echo still serving").strip() == "still serving"
    finally:
        tab.close()
    wait_for(
        lambda: (
            "archive is refused: the workspace archive exceeds workspace_archive_max_bytes"
            in one.log_path.read_text()
        ),
        30,
        "the log naming the cause",
    )


def test_a_hostile_archive_in_the_store_is_refused_at_restore(
    cluster: Any, pg_url: str, tmp_path: Path
) -> None:
    one = cluster("node-a", "127.0.0.1", runtime="local", close_delay=0.5)
    tab = Client(one.url)
    try:
        ok = tab.init()
        sid = ok["session_id"]
        run(tab, "echo mine > mine.txt")
    finally:
        tab.close()
    wait_for(lambda: archive_row(pg_url, sid) is not None, 30, "the passivation archive")
    wait_for(lambda: nodes_json(pg_url)["node-a"]["load"] == 0, 30, "node-a to hold nothing")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, kind, target in (
            ("ok.txt", tarfile.REGTYPE, ""),
            ("l", tarfile.SYMTYPE, "/"),
            ("../x", 0, ""),
        ):
            info = tarfile.TarInfo(name)
            info.type = kind or tarfile.REGTYPE
            info.linkname = target
            tar.addfile(info, io.BytesIO(b""))
    rows(pg_url, "INSERT INTO sa_workspace_chunks VALUES (%s, 999999, 0, %s)", sid, buf.getvalue())
    rows(
        pg_url,
        "UPDATE sa_workspace_archives SET generation = 999999, kind = 'snapshot' WHERE session_id = %s",
        sid,
    )
    again = Client(one.url)
    try:
        assert again.init(token=ok["token"], latest=-1)["session_id"] == sid
        refused = again.wait(lambda fs: statuses(again, "ERROR_WORKSPACE_RESTORE"), what="the refusal")[0]
        assert "points out of the workspace" in refused["message"]
        assert run(again, "cat mine.txt").strip() == "mine"  # this node's copy, untouched
        workspaces = one.data_dir / "workspaces"
        assert not (workspaces / "x").exists() and not (workspaces / sid / "ok.txt").exists()
    finally:
        again.close()


def test_drain_archives_the_workspaces_and_says_how_many(cluster: Any, pg_url: str) -> None:
    one = cluster("node-a", "127.0.0.1", runtime="local")
    cluster("node-b", "127.0.0.2", runtime="local")
    tabs = [Client(one.url) for _ in range(2)]
    try:
        for tab in tabs:
            tab.init()
            run(tab, "echo drained > d.txt")
        wait_for(lambda: nodes_json(pg_url)["node-a"]["load"] == 2, 30, "node-a's load")
        done = cli(pg_url, "drain", "node-a")
        assert done.returncode == 0, done.stderr
        assert "2 workspace archive(s) written" in done.stdout, done.stdout
    finally:
        for tab in tabs:
            tab.close()
    kinds = rows(pg_url, "SELECT kind, node FROM sa_workspace_archives")
    assert kinds == [("passivation", "node-a")] * 2
