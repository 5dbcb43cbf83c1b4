"""A session's limits: a memory hog, a fork bomb, a busy loop and a disk filler are each
stopped by their limit, with the observation naming it, while another session answers.

Runs the sandboxed local runtime directly (as its session actor would, see
test_runtime_local.py's ``Driver``), with small limits so that each is reached fast.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionactors.runtimes.base import RuntimeContext
from sessionactors.runtimes.cgroups import available
from sessionactors.runtimes.local import LocalRuntime

from .test_runtime_local import Driver

if shutil.which("bwrap") is None and not os.environ.get("CI"):
    pytest.skip("bubblewrap is not installed (tests/install-sandbox.sh)", allow_module_level=True)

needs_cgroups = pytest.mark.skipif(
    available() is not None and not os.environ.get("CI"), reason=f"no usable cgroups: {available()}"
)


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., tuple[LocalRuntime, Driver]]]:
    made: list[LocalRuntime] = []

    def factory(**options: Any) -> tuple[LocalRuntime, Driver]:
        sid = f"lim-{uuid.uuid4().hex[:10]}"
        rt = LocalRuntime(RuntimeContext(sid, tmp_path / sid, options=options))
        made.append(rt)
        rt.start()
        return rt, Driver(rt)

    yield factory
    for rt in made:
        rt.stop()
        assert rt._shell is None


def while_running(a: Driver, command: str, other: Driver, **args: Any) -> tuple[dict[str, Any], str]:
    """Start ``command`` in ``a``, have ``other`` answer a command meanwhile, then finish ``a``."""
    event = {"id": 900, "source": "user", "action": "run", "args": {"command": command, **args}}
    a.rt.validate(event)
    outputs = list(a.rt.begin(event))
    answer = other.run("echo alive", limit=30)["content"]
    outputs += a.pump(lambda: not a.rt.busy, 60)
    events = [o.fields for o in outputs if hasattr(o, "fields")]
    final = events[-1]
    return {**final, "content": "".join(e["content"] for e in events)}, answer


@needs_cgroups
def test_memory_hog_is_killed_and_named(make: Any) -> None:
    rt, a = make(memory_limit_mb=64)
    _, b = make()
    mem_dir = rt._shell.sandbox.cgroups.dirs["memory"]
    limit_file = "memory.limit_in_bytes" if rt._shell.sandbox.cgroups.version == "v1" else "memory.max"
    assert int((mem_dir / limit_file).read_text()) == 64 * 1024**2
    hog = "python3 -c 'import time; a = bytearray(400 * 2**20); time.sleep(1)'; echo after"
    obs, answer = while_running(a, hog, b)
    assert answer == "alive\n"
    assert obs["extras"]["exit_code"] == 137
    assert obs["content"].endswith("[killed: memory limit 64 MiB]\n")
    # the shell itself survived: the OOM killer took the hog
    assert a.run("echo still-here")["content"] == "still-here\n"
    assert a.run("echo ok")["extras"]["exit_code"] == 0  # the note is not repeated


@needs_cgroups
def test_fork_bomb_is_stopped_and_named(make: Any) -> None:
    rt, a = make(pids_limit=48, timeout=60)
    _, b = make()
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 20; echo never"
    started = time.monotonic()
    obs, answer = while_running(a, bomb, b)
    assert answer == "alive\n"
    assert time.monotonic() - started < 15
    assert obs["extras"]["exit_code"] == 137 and "never" not in obs["content"]
    assert obs["content"].endswith("[killed: process limit 48]\n")
    # every process of the bomb is gone: only the sandbox's init and the shell remain
    sandbox = rt._shell.sandbox

    def settled() -> bool:
        return len(sandbox.cgroups.pids()) <= 2

    end = time.monotonic() + 10
    while not settled():
        assert time.monotonic() < end, sandbox.cgroups.pids()
        time.sleep(0.05)
    assert a.run("echo recovered")["content"] == "recovered\n"


@needs_cgroups
def test_cpu_is_limited(make: Any) -> None:
    _, a = make(cpu_limit=0.1)
    _, b = make()
    obs, answer = while_running(a, "timeout 2 sh -c 'while :; do :; done'; times", b)
    assert answer == "alive\n"
    children = obs["content"].splitlines()[-1].split()  # user and system time of the loop
    used = sum(float(t.split("m")[0]) * 60 + float(t.split("m")[1].rstrip("s")) for t in children)
    assert used < 0.5, obs["content"]  # 0.1 CPU for 2 s is ~0.2 s; unlimited would be ~2 s


def test_one_file_larger_than_the_workspace_cap(make: Any, tmp_path: Path) -> None:
    _, a = make(workspace_limit_mb=8)
    obs = a.run("head -c 20M /dev/zero > big")
    assert obs["extras"]["exit_code"] == 137
    assert obs["content"].endswith("[killed: workspace size limit 8 MiB]\n")
    assert a.run("stat -c %s big")["content"] == f"{8 * 1024**2}\n"  # cut at the cap (SIGXFSZ)


def test_disk_filler_is_stopped_then_the_workspace_recovers(make: Any) -> None:
    rt, a = make(workspace_limit_mb=8)
    _, b = make()
    filler = "for i in $(seq 60); do head -c 1M /dev/zero > f$i; sleep 0.05; done; echo finished"
    obs, answer = while_running(a, filler, b)
    assert answer == "alive\n"
    assert obs["extras"]["exit_code"] == 137 and "finished" not in obs["content"]
    assert obs["content"].endswith("[killed: workspace size limit 8 MiB]\n")
    written = len(list(Path(rt.ctx.workspace).glob("f*")))
    assert 8 <= written < 40  # stopped within a check interval of crossing the cap
    # while full, a write is refused with a clear error; deleting files is how to go on
    outputs = a.act("write", path="more.txt", content="x" * 1000)
    (err,) = [o.fields for o in outputs if hasattr(o, "fields")]
    assert err["observation"] == "error" and "workspace is full" in err["content"]
    assert a.run("rm f*; echo cleaned")["content"] == "cleaned\n"
    outputs = a.act("write", path="more.txt", content="x" * 1000)
    assert [o.fields["observation"] for o in outputs if hasattr(o, "fields")] == ["write"]
    assert a.run("wc -c < more.txt; echo more >> more.txt")["content"] == "1000\n"  # the shell's own


def test_limit_settings_are_checked(tmp_path: Path) -> None:
    for options, key in (
        ({"memory_limit_mb": -1}, "memory_limit_mb"),
        ({"pids_limit": "many"}, "pids_limit"),
        ({"network": "all"}, "network"),
        ({"cgroups": "maybe"}, "cgroups"),
    ):
        rt = LocalRuntime(RuntimeContext("bad", tmp_path / "ws", options=options))
        with pytest.raises(Exception, match=key):
            rt.start()
