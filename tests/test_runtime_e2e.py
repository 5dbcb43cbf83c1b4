"""The local (bash) runtime inside a real daemon: state, streaming, passivation without orphans,
rehydration restoring the working directory, and REST access to the workspace."""

from __future__ import annotations

from typing import Any

from sessionactors.daemon import pid_alive

from .daemon_harness import Client, DaemonProcess, session_processes, wait_for


def run(command: str, **extra: Any) -> dict[str, Any]:
    return {"action": "run", "args": {"command": command, **extra}}


def finals(c: Client) -> list[dict[str, Any]]:
    return [e for e in c.events() if e.get("observation") == "run" and not e["extras"].get("partial")]


def state_of(d: DaemonProcess, ok: dict[str, Any]) -> str:
    return str(d.http("GET", f"/api/sessions/{ok['session_id']}", token=ok["token"])[1]["state"])


def test_shell_session_passivates_without_orphans_and_rehydrates_cwd(daemon_factory: Any) -> None:
    d = daemon_factory(runtime="local", close_delay=0.5)
    c = Client(d.url)
    ok = c.init()
    c.send(run("mkdir -p sub && cd sub && sleep 1000 & echo started"))
    wait_for(lambda: finals(c), what="first command")
    c.send(run("cd sub && export GREETING=hi && pwd"))
    wait_for(lambda: len(finals(c)) == 2, what="second command")
    assert finals(c)[1]["content"].strip().endswith("/sub")
    c.send(run('echo "$GREETING from $(basename $PWD)"'))
    wait_for(lambda: len(finals(c)) == 3, what="third command")
    assert finals(c)[2]["content"] == "hi from sub\n"
    status, listing = d.http("GET", f"/api/sessions/{ok['session_id']}/files", token=ok["token"])
    assert status == 200 and {"name": "sub", "type": "dir", "size": None} in listing
    # The sandboxed shell knows only its namespace's pids: find its processes by environment.
    procs = session_processes(ok["session_id"])
    assert len(procs) >= 2 and all(pid_alive(p) for p in procs)  # bash and its sleep 1000
    c.close()
    wait_for(lambda: state_of(d, ok) == "passivated", what="passivation")
    wait_for(lambda: not any(pid_alive(p) for p in procs), 5, "the shell and its sleep 1000 child to be gone")
    r = Client(d.url)
    try:
        assert r.init(token=ok["token"], latest=-1)["status"] == "ok"
        # The replay arrives after the INIT answer: count the finals once all of it is here.
        wait_for(lambda: len(finals(r)) == 3, what="the replay of the three earlier commands")
        r.send(run("basename $PWD"))
        wait_for(lambda: len(finals(r)) == 4, what="command after rehydration")
        assert finals(r)[-1]["content"] == "sub\n"  # the working directory was restored
    finally:
        r.close()


def test_streaming_timeout_and_path_escape(daemon_factory: Any) -> None:
    d = daemon_factory(runtime="local", runtime_options='{"stream_interval": 0.05, "kill_grace": 0.5}')
    c = Client(d.url)
    try:
        c.init()
        c.send(run("for i in 1 2 3; do echo $i; sleep 0.3; done"))
        wait_for(lambda: finals(c), what="streamed command")
        runs = [e for e in c.events() if e.get("observation") == "run"]
        assert len(runs) >= 3 and all(e["extras"].get("partial") for e in runs[:-1])
        assert "".join(e["content"] for e in runs) == "1\n2\n3\n"
        assert runs[-1]["extras"]["exit_code"] == 0
        c.send(run("sleep 30", timeout=0.5))
        wait_for(lambda: len(finals(c)) == 2, 15, "timed-out command")
        assert finals(c)[1]["extras"].get("timed_out") is True
        c.send({"action": "read", "args": {"path": "../../etc/passwd"}})
        wait_for(lambda: c.errors(), what="path escape error")
        assert c.errors()[0]["error_code"] == 400
    finally:
        c.close()


def test_rest_files_rehydrate_a_passivated_session(daemon_factory: Any) -> None:
    d = daemon_factory(runtime="local", close_delay=0.3)
    c = Client(d.url)
    ok = c.init()
    c.send({"action": "write", "args": {"path": "notes/todo.txt", "content": "ship it\n"}})
    wait_for(lambda: any(e.get("observation") == "write" for e in c.events()), what="write")
    c.close()
    wait_for(lambda: state_of(d, ok) == "passivated", what="passivation")
    base = f"/api/sessions/{ok['session_id']}/files"
    assert d.http("GET", base + "/notes/todo.txt", token=ok["token"]) == (
        200,
        {"path": "notes/todo.txt", "content": "ship it\n"},
    )
    status, listing = d.http("GET", base + "?path=notes", token=ok["token"])
    assert status == 200 and listing == [{"name": "todo.txt", "type": "file", "size": 8}]
    assert d.http("GET", base + "/missing.txt", token=ok["token"])[0] == 404
    assert d.http("GET", base + "?path=../..", token=ok["token"])[0] == 400
    assert d.http("GET", base + "/notes/todo.txt")[0] == 401
