"""Linux ``/proc`` helpers of the local runtime: find, signal and wait for processes.

What it is for: ``_shell`` (the shell and what it started) and ``sandbox`` (everything in a
sandbox) find processes by parent, group, session or environment here. Imports nothing of
sessionactors.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable

__all__ = ["all_stats", "children", "descendants", "exists", "proc_stat", "signal_all", "wait_gone"]


def proc_stat(pid: int) -> tuple[int, int, int, str] | None:
    """(ppid, pgrp, session, state) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()  # the command name may contain spaces and ')'
    return int(fields[1]), int(fields[2]), int(fields[3]), fields[0].decode()


def all_stats() -> dict[int, tuple[int, int, int]]:
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None and st[3] != "Z":
                stats[int(name)] = st[:3]
    return stats


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:  # kernel without CONFIG_PROC_CHILDREN: scan
        return [p for p, (ppid, _g, _s) in all_stats().items() if ppid == pid]


def descendants(roots: Iterable[int]) -> set[int]:
    found: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children(pid))
    return found


def exists(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[3] != "Z"  # a zombie is dead, only not yet reaped by its parent


def signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def wait_gone(pids: set[int], timeout: float) -> None:
    # Killed processes that are not our children vanish asynchronously; wait (bounded)
    # so that "stop() returned" means "nothing of the session runs".
    end = time.monotonic() + timeout
    while any(exists(pid) for pid in pids) and time.monotonic() < end:
        time.sleep(0.01)
