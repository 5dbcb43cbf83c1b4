"""A real PostgreSQL 15 server for the tests: initdb into a temp dir, a free loopback port.

``PgServer`` runs ``initdb`` (as the ``postgres`` user when we are root: the server
refuses to run as root) into a fresh directory, starts ``postgres`` on 127.0.0.1 and a
free port with its socket in that directory, and ``stop`` shuts it down (fast, then
immediate, then SIGKILL of the postmaster by its pid) and removes the directory.
``new_database`` makes an empty database per test, so tests never see each other's rows.

Where it cannot run (no binaries), ``pg_unavailable`` says why: the tests skip with that
reason, except in CI (``CI`` set), where they fail (tests/run.sh installs postgresql-15).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .daemon_harness import free_port

__all__ = ["PgServer", "pg_bin_dir", "pg_server", "pg_unavailable", "pg_url"]

PG_USER = "postgres"


def pg_bin_dir() -> Path | None:
    """The PostgreSQL 15 binaries (Debian's layout first), or None."""
    for candidate in ["/usr/lib/postgresql/15/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin"))[::-1]]:
        if os.access(os.path.join(candidate, "initdb"), os.X_OK):
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def pg_unavailable() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None when it can."""
    if pg_bin_dir() is None:
        return "PostgreSQL is not installed (tests/run.sh installs postgresql-15)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            return f"running as root without a {PG_USER!r} user to run initdb as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    return None


class PgServer:
    """One PostgreSQL server in a temp dir (see the module docstring)."""

    def __init__(
        self, *, fsync: bool = True, listen: tuple[str, ...] = ("127.0.0.1",), trust: tuple[str, ...] = ()
    ) -> None:
        """``listen``: the addresses it listens on; ``trust``: more client networks (CIDR)
        let in without a password (tests/netns.py: the store link of a namespace)."""
        bindir = pg_bin_dir()
        assert bindir is not None, pg_unavailable()
        self.bindir = bindir
        self.fsync = fsync
        self.listen, self.trust = listen, trust
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="sa-pg-"))
        self.datadir = self.root / "data"
        self.log_path = self.root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._as_user: dict[str, Any] = {"cwd": str(self.root)}
        if os.geteuid() == 0:  # Popen switches user itself: the pid is the postmaster's
            entry = pwd.getpwnam(PG_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._as_user.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])

    @property
    def base_url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}"

    def url(self, database: str = "postgres") -> str:
        return f"{self.base_url}/{database}"

    def start(self) -> PgServer:
        initdb = [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", PG_USER]
        initdb += ["--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C"]
        subprocess.run(initdb, check=True, capture_output=True, timeout=120, **self._as_user)
        if self.trust:
            with open(self.datadir / "pg_hba.conf", "a") as hba:
                hba.writelines(f"host all all {net} trust\n" for net in self.trust)
        argv = [str(self.bindir / "postgres"), "-D", str(self.datadir)]
        argv += [
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={','.join(self.listen)}",
            "-k",
            str(self.root),
        ]
        argv += ["-c", f"fsync={'on' if self.fsync else 'off'}", "-c", "max_connections=200"]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True, **self._as_user)
        log.close()
        self._wait_ready(60)
        return self

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_path.read_text()[-2000:]}")
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"postgres not ready in {timeout} s: {self.log_path.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.05)  # polling a condition (connectable), with a deadline

    def new_database(self, name: str) -> str:
        """Create an empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown; SIGKILL by pid if it hangs) and remove its files."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)  # postgres: SIGINT = fast shutdown
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGQUIT)  # immediate shutdown
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the test run (fsync off: the tests check our contract,
    not the disk); skipped with the reason where none can run, except in CI."""
    why = pg_unavailable()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but PostgreSQL cannot run: {why}")
        pytest.skip(why)
    server = PgServer(fsync=False).start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """The URL of a new, empty database on the test run's server."""
    return pg_server.new_database(f"t_{uuid.uuid4().hex[:16]}")
