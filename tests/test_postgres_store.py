"""What the PostgreSQL store does beyond the shared contract: fork safety of its connection
(Thespian forks session actors from the supervisor, which holds a handle), the one-line
errors, the per-session byte count, and a handle whose server goes away.
"""

from __future__ import annotations

import gc
import os
import signal

import pytest

from sessionactors.errors import StoreError
from sessionactors.store.postgres import PostgresStore

from .pg_harness import PgServer


def _in_forked_child(body: object) -> int:
    """Run ``body()`` in a forked child that then drops everything it inherited; its status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        signal.alarm(30)  # a deadlocked child dies (and fails the test) instead of hanging it
        code = 0
        try:
            body()  # type: ignore[operator]
            gc.collect()  # what a child's exit does to the objects it inherited
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_forked_child_dropping_the_inherited_handle_leaves_the_parents_connection(pg_url: str) -> None:
    store = PostgresStore(pg_url, node="n")
    store.append("s", [{"id": 0}])
    connection = store._db

    def child() -> None:
        store.close()  # drops the inherited connection: it must not end the parent's session
        del store.__dict__["_db"]

    assert _in_forked_child(child) == 0
    assert store._db is connection
    store.append("s", [{"id": 1}])  # the same connection, still usable
    assert store._db is connection and [e["id"] for e in store.read("s")] == [0, 1]
    store.close()


def test_a_forked_child_uses_a_connection_of_its_own(pg_url: str) -> None:
    store = PostgresStore(pg_url, node="n")
    store.append("s", [{"id": 0}])
    parent_pid = store._db.info.backend_pid

    def child() -> None:
        store.append("s", [{"id": 1}])
        assert store._db.info.backend_pid != parent_pid

    assert _in_forked_child(child) == 0
    assert store._db.info.backend_pid == parent_pid
    assert store.last_event_id("s") == 1
    store.close()


def test_event_bytes_counts_what_is_stored(pg_url: str) -> None:
    store = PostgresStore(pg_url, node="n")
    events = [{"id": 0, "m": "é"}, {"id": 1, "m": "x" * 100}]
    store.append("s", events)
    expected = sum(len(body.encode()) for body in ('{"id":0,"m":"é"}', '{"id":1,"m":"' + "x" * 100 + '"}'))
    assert store.event_bytes("s") == expected and store.event_bytes("none") == 0
    store.delete_session("s")
    assert store.event_bytes("s") == 0
    store.close()


def test_a_lost_server_is_a_store_error_and_a_new_one_is_reconnected() -> None:
    server = PgServer(fsync=False).start()
    try:
        url = server.new_database("gone")
        store = PostgresStore(url, node="n")
        store.append("s", [{"id": 0}])
        server.stop()
        with pytest.raises(StoreError, match=r"PostgreSQL store .*gone"):
            store.read("s")
        with pytest.raises(StoreError, match="cannot connect"):
            store.read("s")  # reconnects, and says so in one line when it cannot
        store.close()
    finally:
        server.stop()


def test_the_harness_leaves_no_process_and_no_file(pg_server: PgServer) -> None:
    from sessionactors.daemon import pid_alive

    server = PgServer(fsync=False).start()
    assert server.proc is not None
    postmaster = server.proc.pid
    assert int((server.datadir / "postmaster.pid").read_text().split()[0]) == postmaster  # no wrapper
    children = [int(p) for p in open(f"/proc/{postmaster}/task/{postmaster}/children").read().split()]
    assert children, "the postmaster has its background processes"
    root = server.root
    server.stop()
    assert not any(pid_alive(p) for p in [postmaster, *children])
    assert not root.exists()
    server.stop()  # idempotent


def test_a_fork_while_the_lease_book_is_locked_does_not_deadlock_the_child(pg_url: str) -> None:
    store = PostgresStore(pg_url, node="n")
    store.append("s", [{"id": 0}])
    with store.leases._lock:  # as if the renewal thread held it at the moment of the fork

        def child() -> None:
            store.append("s", [{"id": 1}])  # takes the book's lock: must not hang

        assert _in_forked_child(child) == 0
    assert store.last_event_id("s") == 1
    store.close()
