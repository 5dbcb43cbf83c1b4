"""Per-sandbox control groups: memory, process count and CPU limits of one session.

What it is for: ``sandbox`` puts each sandbox's processes in a ``CgroupSet`` so that a
memory hog, a fork bomb or a busy loop in one session is stopped by the kernel without
touching the daemon or the other sessions, and so that the runtime can tell afterwards
*which* limit a command hit (the OOM kill and ``pids.max`` counters). Imports nothing of
sessionactors.

Both layouts are supported:

- cgroup v1 (these machines): one hierarchy per controller, ``/sys/fs/cgroup/<controller>``.
  A sandbox gets ``<daemon's own cgroup>/sessionactors/<name>`` in each of ``memory``,
  ``pids`` and ``cpu``.
- cgroup v2: one hierarchy; the sandbox gets ``<parent>/<name>`` where ``parent`` is
  ``<daemon's own cgroup>/sessionactors`` with the three controllers enabled in its
  ``cgroup.subtree_control`` (the daemon's cgroup must be delegated to it, as a systemd
  service with ``Delegate=yes`` is).

Why nested under the daemon's own cgroup: the daemon may itself be confined (a container,
a systemd slice); a session must never get more than the daemon has.

Cost: creating a cgroup is ~0.1 ms; *moving* a process into one costs 2-20 ms on a v1
kernel (it takes the global threadgroup lock, a percpu rwsem whose writer waits for an RCU
grace period). ``attach_async`` moves into the three v1 hierarchies from three threads at once, so that
the waits overlap each other (measured 15 ms sequential, 2-9 ms in parallel) and the
sandbox's own setup (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CgroupError", "CgroupLimits", "CgroupSet", "available"]

ROOT = Path("/sys/fs/cgroup")
_V1_CONTROLLERS = ("memory", "pids", "cpu")
_CPU_PERIOD = 100_000  # microseconds


class CgroupError(OSError):
    """The cgroups cannot be made or written (no permission, controller missing)."""


@dataclass(frozen=True)
class CgroupLimits:
    """What one sandbox may use; ``None`` means no limit of that kind."""

    memory_bytes: int | None = 512 * 1024**2
    pids: int | None = 256
    cpu: float | None = 1.0  # in CPUs: 0.5 is half of one core's time


def _own_paths() -> dict[str, str]:
    """The daemon's cgroup path per v1 controller, and ``""`` for the v2 hierarchy."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as fh:
        for line in fh:
            _id, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(","):
                paths[controller] = path
    return paths


def layout() -> str | None:
    """``"v1"``, ``"v2"`` or None (no usable cgroup filesystem)."""
    if (ROOT / "cgroup.controllers").exists():
        return "v2"
    if all((ROOT / c / "cgroup.procs").exists() for c in _V1_CONTROLLERS):
        return "v1"
    return None


def available() -> str | None:
    """Why cgroups cannot be used here, or None when they can (checked by making one)."""
    try:
        probe = CgroupSet.create(f"probe-{os.getpid()}", CgroupLimits())
    except CgroupError as exc:
        return str(exc)
    probe.remove()
    return None


class CgroupSet:
    """The cgroup directories of one sandbox (one per v1 controller, or one v2 directory)."""

    def __init__(self, dirs: dict[str, Path], version: str) -> None:
        self.dirs = dirs  # controller -> directory; on v2 every controller maps to the same one
        self.version = version
        self._baseline = self.counters()

    @classmethod
    def create(cls, name: str, limits: CgroupLimits) -> CgroupSet:
        """Make (or reuse, after a crash) the cgroups called ``name`` and set ``limits``."""
        version = layout()
        if version is None:
            raise CgroupError(f"no cgroup v1 ({', '.join(_V1_CONTROLLERS)}) or v2 filesystem at {ROOT}")
        own = _own_paths()
        try:
            if version == "v1":
                dirs = {}
                for controller in _V1_CONTROLLERS:
                    base = ROOT / controller / own.get(controller, "/").lstrip("/") / "sessionactors"
                    dirs[controller] = base / name
                    dirs[controller].mkdir(parents=True, exist_ok=True)
            else:
                parent = ROOT / own.get("", "/").lstrip("/") / "sessionactors"
                parent.mkdir(parents=True, exist_ok=True)
                _enable_v2(parent)
                path = parent / name
                path.mkdir(exist_ok=True)
                dirs = dict.fromkeys(_V1_CONTROLLERS, path)
            group = cls(dirs, version)
            group._set_limits(limits)
        except OSError as exc:
            raise CgroupError(f"cannot set up cgroups under {ROOT}: {exc.strerror or exc}") from None
        return group

    def _set_limits(self, limits: CgroupLimits) -> None:
        v1 = self.version == "v1"
        mem = "max" if limits.memory_bytes is None else str(limits.memory_bytes)
        if v1:
            self._write("memory", "memory.limit_in_bytes", "-1" if limits.memory_bytes is None else mem)
            # No swap on the sandbox's behalf: the limit must mean what it says.
            with contextlib.suppress(OSError):
                self._write(
                    "memory", "memory.memsw.limit_in_bytes", "-1" if limits.memory_bytes is None else mem
                )
        else:
            self._write("memory", "memory.max", mem)
            with contextlib.suppress(OSError):
                self._write("memory", "memory.swap.max", "0")
        self._write("pids", "pids.max", "max" if limits.pids is None else str(limits.pids))
        quota = None if limits.cpu is None else max(1000, int(limits.cpu * _CPU_PERIOD))
        if v1:
            self._write("cpu", "cpu.cfs_period_us", str(_CPU_PERIOD))
            self._write("cpu", "cpu.cfs_quota_us", "-1" if quota is None else str(quota))
        else:
            self._write("cpu", "cpu.max", f"{'max' if quota is None else quota} {_CPU_PERIOD}")

    def _write(self, controller: str, file: str, value: str) -> None:
        (self.dirs[controller] / file).write_text(value)

    def attach(self, pid: int) -> None:
        """Move process ``pid`` into every controller's cgroup (and wait until it is in)."""
        self.attach_async(pid)()

    def attach_async(self, pid: int) -> Callable[[], None]:
        """Start moving ``pid`` (one thread per hierarchy: the moves' waits overlap with each
        other and with whatever the caller does meanwhile); the returned function waits for
        the moves and raises CgroupError if one failed."""
        errors: list[OSError] = []

        def move(directory: Path) -> None:
            try:
                (directory / "cgroup.procs").write_text(str(pid))
            except OSError as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=move, args=(d,), daemon=True) for d in dict.fromkeys(self.dirs.values())
        ]
        for t in threads:
            t.start()

        def join() -> None:
            for t in threads:
                t.join()
            if errors:
                raise CgroupError(
                    f"cannot move the sandbox into its cgroup: {errors[0].strerror or errors[0]}"
                )

        return join

    def holds(self, pid: int) -> bool:
        """Whether ``pid`` is in every one of these cgroups."""
        try:
            with open(f"/proc/{pid}/cgroup") as fh:
                paths = {line.rstrip("\n").split(":", 2)[2] for line in fh}
        except OSError:
            return False
        return all(any(str(d).endswith(p) and p != "/" for p in paths) for d in set(self.dirs.values()))

    def counters(self) -> dict[str, int]:
        """Cumulative limit events: ``oom_kill`` (processes the OOM killer ended) and
        ``pids_max`` (forks refused at the process limit)."""
        out = {"oom_kill": 0, "pids_max": 0}
        memfile = "memory.oom_control" if self.version == "v1" else "memory.events"
        out["oom_kill"] = _keyed(self.dirs["memory"] / memfile, "oom_kill")
        out["pids_max"] = _keyed(self.dirs["pids"] / "pids.events", "max")
        return out

    def hits(self) -> dict[str, int]:
        """Limit events since the last call (or since creation)."""
        now = self.counters()
        delta = {k: now[k] - self._baseline.get(k, 0) for k in now}
        self._baseline = now
        return delta

    def pids(self) -> set[int]:
        found: set[int] = set()
        for directory in set(self.dirs.values()):
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        return found

    def kill_all(self) -> None:
        """SIGKILL every process in the cgroups (a backstop: the PID namespace does it too)."""
        if self.version == "v2":
            with contextlib.suppress(OSError):
                self._write("memory", "cgroup.kill", "1")
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def remove(self, timeout: float = 1.0) -> None:
        """Kill what is left and remove the directories (bounded retry while they drain)."""
        end = time.monotonic() + timeout
        for directory in set(self.dirs.values()):
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY: a killed process not yet gone
                    if time.monotonic() > end:
                        break
                    self.kill_all()
                    time.sleep(0.01)


def _keyed(path: Path, key: str) -> int:
    """The value of ``key`` in a ``key value`` per line file (0 when absent)."""
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


def _enable_v2(parent: Path) -> None:
    """Enable memory, pids and cpu for the sandboxes' cgroups under ``parent`` (v2)."""
    wanted = {"memory", "pids", "cpu"}
    for directory in (parent.parent, parent):
        have = set((directory / "cgroup.subtree_control").read_text().split())
        missing = wanted - have
        if missing:
            (directory / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(missing)))
