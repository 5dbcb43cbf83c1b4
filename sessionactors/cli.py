"""The ``sessionactors`` command: serve, start, stop, status, logs, sessions, rotate-secret,
nodes, drain (``cluster/commands.py``: the node registry of a shared store).

``serve`` runs the daemon in the foreground; ``start`` runs the same as a
detached process (pid and log under ``<data_dir>/run``) and returns once *its own*
daemon answers ``/api/health``; ``stop`` ends it and waits (or the actor system a
crashed daemon left); ``status`` and ``sessions`` ask the running daemon (admin
token) or, when none runs, read the store; ``logs`` prints (``-f`` follows) the
daemon's log, which ``start`` rotates by size; ``rotate-secret`` replaces
``<data_dir>/secret.key`` (a running daemon follows it).

Exit codes: 0 success, 1 error, 2 usage; ``status`` exits 3 when no daemon runs and 1
when a crashed daemon left its actor system running (the LSB conventions).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .admin import list_sessions, sessions_cmd, sessions_table, url_host
from .cluster import commands as cluster_commands
from .config import Config, load_config
from .daemon import (
    INSTANCE_ENV,
    Daemon,
    end_processes,
    health_ok,
    leftover_actor_pids,
    pid_alive,
    prepare_data_dir,
    read_state,
)
from .errors import SessionActorsError
from .logs import follow_log, print_log, setup_logging
from .runtimes.base import load_runtime

__all__ = ["main", "build_parser"]

_FLAGS = {
    "host": "host",
    "port": "port",
    "data_dir": "data_dir",
    "close_delay": "close_delay",
    "github_api_url": "github_api_url",
    "admin_port": "admin_port",
    "runtime": "runtime",
    "log_level": "log_level",
    "web_client": "web_client",
}


def _common(p: argparse.ArgumentParser, serving: bool) -> None:
    p.add_argument("--data-dir", help="where everything is stored (default: per-user data dir)")
    p.add_argument("--config", help="TOML configuration file")
    if serving:
        # No argparse type= here: load_config converts and checks every value, so that a bad
        # flag is reported like a bad file or environment value (exit 1, naming the key).
        p.add_argument("--host", help="address to serve on (default 127.0.0.1)")
        p.add_argument("--port", help="port to serve on (default 3000)")
        p.add_argument("--close-delay", help="seconds before an unattended session passivates (default 15)")
        p.add_argument("--github-api-url", help="GitHub REST API base used to verify github_token")
        p.add_argument("--admin-port", help="Thespian admin port (default 19500)")
        p.add_argument("--runtime", help="runtime name (local, echo, or an installed plugin)")
        p.add_argument("--log-level", help="debug, info, warning or error")
        p.add_argument(
            "--web-client", help="serve this built single-page client at / (console moves to /console/)"
        )


# (name, one-line help, description shown by ``<name> --help``): plain text, no markup.
_COMMANDS = {
    "serve": (
        "run the daemon in the foreground",
        "Run the daemon in the foreground until SIGINT or SIGTERM; it logs to stderr.",
    ),
    "start": (
        "run the daemon detached",
        "Run the daemon in the background and return once it answers on its port. Its pid and "
        "log are in <data-dir>/run; the log, daemon.log, rotates by size (log_max_bytes, log_keep).",
    ),
    "stop": (
        "stop the running daemon",
        "Stop the daemon started with start (SIGTERM, then wait). When a crashed daemon left its "
        "actor system running, end that instead.",
    ),
    "status": (
        "show the daemon and its sessions",
        "Show whether the daemon runs and list its sessions. Exits 0 when it runs, 3 when it does "
        "not, 1 when a crashed daemon left its actor system running.",
    ),
    "logs": ("print the daemon's log", "Print the log of the daemon started with start; -f follows it."),
    "sessions": (
        "list, show or delete sessions",
        "List sessions, show one, or delete one (its events and workspace). A session id may be "
        "abbreviated to any unique prefix.",
    ),
    "rotate-secret": (
        "sign new session tokens with a new secret",
        "Replace <data-dir>/secret.key. New tokens use the new secret; tokens signed with the "
        "previous one keep working until the next rotation.",
    ),
    **cluster_commands.COMMANDS,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessionactors",
        description="An actor-per-session supervisor for agent servers: run its daemon, ask it, manage its sessions.",
        epilog="'sessionactors COMMAND --help' describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"sessionactors {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {
        name: sub.add_parser(name, help=text, description=description)
        for name, (text, description) in _COMMANDS.items()
    }
    for name, p in parsers.items():
        _common(p, serving=name in ("serve", "start"))
    parsers["logs"].add_argument("-f", "--follow", action="store_true", help="keep printing what is appended")
    parsers["logs"].add_argument("-n", "--lines", type=int, help="print only the last N lines")
    parsers["sessions"].add_argument("action", choices=["list", "show", "delete"])
    parsers["sessions"].add_argument("session_id", nargs="?", help="a session id or a unique prefix of one")
    cluster_commands.add_arguments(parsers)
    return parser


def _config(args: argparse.Namespace) -> Config:
    flags = {key: getattr(args, attr, None) for attr, key in _FLAGS.items()}
    return load_config(args.config, flags)


def exposure_warning(cfg: Config) -> str | None:
    """The warning for serving beyond this machine without GitHub identities, or None.

    Loopback (``localhost``, 127.0.0.0/8, ``::1``) is private to the machine's users;
    any other host (an interface address, a wildcard, a name) may be reachable by others.
    """
    if cfg.require_github:
        return None
    if cfg.host == "localhost":
        return None
    try:
        if ipaddress.ip_address(cfg.host).is_loopback:
            return None
    except ValueError:
        pass  # a host name: it may resolve to anything
    return f"serving on {cfg.host} without require_github: anyone who can reach it can create sessions"


def _check_runtime(cfg: Config) -> list[str]:
    """An unknown runtime, or one that cannot run here (the sandbox without bubblewrap), is
    an error before starting; what it warns about (running unsandboxed) is logged at start."""
    cls = load_runtime(cfg.runtime)
    preflight = getattr(cls, "preflight", None)
    return list(preflight(cfg.runtime_options)) if preflight is not None else []


def _serve(cfg: Config, warnings: Sequence[str] = ()) -> int:
    setup_logging(cfg.log_level, cfg.log_json)
    for text in warnings:
        logging.getLogger("sessionactors").warning("%s", text)
    warning = exposure_warning(cfg)
    if warning:
        logging.getLogger("sessionactors").warning("%s", warning)
    return Daemon(cfg).run()


def _start(cfg: Config, argv: list[str]) -> int:
    state = read_state(cfg)
    if state and pid_alive(int(state["pid"])):
        print(f"already running (pid {state['pid']})", file=sys.stderr)
        return 1
    prepare_data_dir(cfg)
    log_path = cfg.run_dir / "daemon.log"
    instance = secrets.token_hex(8)
    env = {**os.environ, INSTANCE_ENV: instance}
    serve_argv = [sys.executable, "-m", "sessionactors.cli", "serve", *argv]
    offset = log_path.stat().st_size if log_path.exists() else 0
    # The daemon, its gateway and its actors write to one pipe; a writer process appends it
    # to daemon.log and rotates the file by size (it ends when the last of them has exited).
    read_end, write_end = os.pipe()
    writer_argv = [
        sys.executable,
        "-m",
        "sessionactors.logs",
        str(log_path),
        str(cfg.log_max_bytes),
        str(cfg.log_keep),
    ]
    quiet = subprocess.DEVNULL  # it must not hold our stdout or stderr open after we exit
    subprocess.Popen(writer_argv, stdin=read_end, stdout=quiet, stderr=quiet, start_new_session=True)
    os.close(read_end)
    try:
        proc = subprocess.Popen(
            serve_argv,
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=write_end,
            env=env,
            start_new_session=True,
        )
    finally:
        os.close(write_end)
    deadline = time.monotonic() + 60
    while not health_ok(url_host(cfg.host), cfg.port, instance=instance):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
                print(f"the daemon did not answer within 60 s; see {log_path}", file=sys.stderr)
            else:
                print(_failure_line(log_path, offset), file=sys.stderr)
            return 1
        time.sleep(0.1)
    print(f"sessionactors running on http://{cfg.host}:{cfg.port} (pid {proc.pid}, log {log_path})")
    return 0


def _failure_line(log_path: Path, offset: int) -> str:
    """What the failed daemon said (its last ``sessionactors:`` line), or where to look."""
    deadline = time.monotonic() + 5  # the log writer may still be appending the last lines
    while True:
        try:
            with open(log_path, "rb") as fh:
                fh.seek(offset)
                lines = fh.read().decode(errors="replace").splitlines()
        except OSError:
            lines = []
        said = [line for line in lines if line.startswith("sessionactors: ")]
        if said:
            return said[-1]
        if time.monotonic() > deadline:
            return f"the daemon did not start; see {log_path}"
        time.sleep(0.05)


def _leftovers(cfg: Config, state: dict[str, Any] | None) -> list[int]:
    """The actor system a crashed daemon of this data dir left running (pids), or []."""
    if not state:
        return []
    return leftover_actor_pids(state, int(state.get("admin_port") or cfg.admin_port), cfg.actor_ip)


def _stop(cfg: Config) -> int:
    state = read_state(cfg)
    if not state or not pid_alive(int(state["pid"])):
        orphans = _leftovers(cfg, state)
        if not orphans:
            print("not running")
            return 0
        print(f"the daemon (pid {state and state['pid']}) is gone but left its actor system running "
              f"({len(orphans)} processes): ending it")  # fmt: skip
        end_processes(orphans)
        for name in ("daemon.json", "admin.token", "bridge.sock"):  # what the dead daemon would remove
            (cfg.run_dir / name).unlink(missing_ok=True)
        left = [p for p in orphans if pid_alive(p)]
        if left:
            print(f"could not end pids {left}", file=sys.stderr)
            return 1
        print("stopped the leftover actor system")
        return 0
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while pid_alive(pid):
        if time.monotonic() > deadline:
            print(f"daemon (pid {pid}) did not stop within 60 s", file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(f"stopped (pid {pid})")
    return 0


def _status(cfg: Config) -> int:
    running, rows = list_sessions(cfg)
    state = read_state(cfg)
    code = 0
    if running and state:
        print(f"daemon: running (pid {state['pid']}) on http://{state['host']}:{state['port']}")
        runtime = str(state.get("runtime") or "")
        if runtime in ("local", "local-unsandboxed"):  # say whether sessions run in a sandbox
            print(f"runtime: {runtime} ({'sandboxed' if runtime == 'local' else 'NOT sandboxed'})")
    else:
        orphans = _leftovers(cfg, state)
        if orphans:
            code = 1
            print(f"daemon: not running, but the crashed daemon (pid {state and state['pid']}) left its actor "
                  f"system running ({len(orphans)} processes, pids {' '.join(map(str, orphans))}); "
                  "'sessionactors stop' ends it")  # fmt: skip
        else:
            code = 3
            print(f"daemon: not running (data dir {cfg.data_dir})")
    live = sum(1 for r in rows if r["state"] == "live")
    print(f"sessions: {live} live, {len(rows) - live} other\n")
    print(sessions_table(rows))
    return code


def _rotate_secret(cfg: Config) -> int:
    """Rotate ``<data_dir>/secret.key``; refuse a configured secret or a data dir without one."""
    from .auth.tokens import SECRET_FILE, rotate_secret

    if cfg.token_secret is not None:
        print(
            "sessionactors: token_secret is configured (file or SESSIONACTORS_TOKEN_SECRET): "
            "rotate it there and restart the daemon; secret.key is not used",
            file=sys.stderr,
        )
        return 1
    if cfg.store_url:
        print(
            "sessionactors: rotate-secret is not supported yet with store_url (the secret is in the shared store)",
            file=sys.stderr,
        )
        return 1
    if not (cfg.data_dir / SECRET_FILE).is_file():
        print(
            f"sessionactors: no token secret in {cfg.data_dir} (the daemon creates {SECRET_FILE} "
            "when it first starts): nothing to rotate",
            file=sys.stderr,
        )
        return 1
    try:
        rotate_secret(cfg.data_dir)
    except (OSError, UnicodeError) as exc:
        reason = exc if isinstance(exc, OSError) else f"{SECRET_FILE} is not text"  # no secret bytes
        print(f"sessionactors: cannot rotate the token secret in {cfg.data_dir}: {reason}", file=sys.stderr)
        return 1
    print(
        f"rotated the token secret in {cfg.data_dir}: new tokens are signed with the new secret; "
        "tokens signed with the previous one keep working until the next rotation "
        "(a running daemon picks it up within a second)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code. A closed stdout (``status | head -2``) ends it quietly."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit: a closed pipe is caught below, not printed
        return code
    except BrokenPipeError:
        # The reader went away: no traceback, and none when Python flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a program killed by it


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        cfg = _config(args)
        if args.command in ("serve", "start"):
            warnings = _check_runtime(cfg)  # refused before anything starts
        if args.command == "serve":
            return _serve(cfg, warnings)
        if args.command == "start":
            return _start(cfg, argv[1:])
        if args.command == "stop":
            return _stop(cfg)
        if args.command == "status":
            return _status(cfg)
        if args.command == "rotate-secret":
            return _rotate_secret(cfg)
        if args.command == "logs":
            return _logs(cfg, args.follow, args.lines)
        if args.command == "nodes":
            return cluster_commands.nodes_cmd(cfg, args.json)
        if args.command == "drain":
            return cluster_commands.drain_cmd(cfg, args.node, args.timeout, not args.no_wait, args.undo)
        return sessions_cmd(cfg, args.action, args.session_id)
    except SessionActorsError as exc:
        print(f"sessionactors: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130 if args.command != "logs" else 0


def _logs(cfg: Config, follow: bool, lines: int | None) -> int:
    path = cfg.run_dir / "daemon.log"
    if not path.exists() and not follow:
        print(f"sessionactors: no log at {path} (it is written by 'sessionactors start')", file=sys.stderr)
        return 1
    out = sys.stdout.buffer
    reached = print_log(path, out, lines) if path.exists() else 0
    if follow:
        follow_log(path, out, reached)
    return 0


if __name__ == "__main__":
    sys.exit(main())
