"""Issue 18, item 8: REST file reads (``Runtime.read_file``) against a hostile session shell.

The workspace is written by the session's own commands, so a symlink can be swapped in
between the path check and the read. A shell loop swaps one while reads run; no read may
return the outside file. A 1 GiB sparse file must get its 400 without being read.
"""

from __future__ import annotations

import subprocess
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from sessionactors.errors import ActionError, PathEscape
from sessionactors.runtimes._files import openat2_available
from sessionactors.runtimes.base import Output, Runtime, RuntimeContext

SWAPPER = r"""
cd "$1"
while :; do
  ln -sfn "$2/secret.txt" f        # the file itself: inside, then outside
  ln -sfn inside.txt f
  mv -T d d.real 2>/dev/null       # the directory on the way: a real one, then a link out
  ln -sfn "$2" d
  rm -f d
  mv -T d.real d 2>/dev/null
done
"""


class FilesOnly(Runtime):
    """A runtime with only the base class's workspace access (what the REST routes use)."""

    name = "files-only"

    def start(self) -> list[Output]:
        return []

    def begin(self, action_event: dict[str, Any]) -> list[Output]:
        return []

    def stop(self) -> None:
        pass


def _runtime(workspace: Path) -> FilesOnly:
    return FilesOnly(RuntimeContext(session_id="s1", workspace=workspace))


@pytest.fixture
def swap_dirs(tmp_path: Path) -> tuple[Path, Path]:
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    (ws / "d").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("OUTSIDE")
    (ws / "inside.txt").write_text("inside")
    (ws / "d" / "secret.txt").write_text("inside")
    return ws, outside


@pytest.mark.parametrize("use_openat2", [True, False], ids=["openat2", "component-walk"])
def test_symlink_swap_race_never_reads_outside(
    swap_dirs: tuple[Path, Path], use_openat2: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessionactors.runtimes import _files

    if use_openat2 and not openat2_available():
        pytest.skip("this kernel has no openat2")
    if not use_openat2:
        monkeypatch.setattr(_files, "_openat2_ok", False)
    ws, outside = swap_dirs
    rt = _runtime(ws)
    swapper = subprocess.Popen(["sh", "-c", SWAPPER, "swapper", str(ws), str(outside)])
    counts = {"inside": 0, "outside": 0, "refused": 0}
    try:
        deadline = time.monotonic() + 20
        while counts["inside"] < 2000 and time.monotonic() < deadline:
            for path in ("f", "d/secret.txt"):
                try:
                    content = rt.read_file(path)
                except (OSError, ActionError, PathEscape):
                    counts["refused"] += 1  # a link seen at the check, or a path caught mid-swap
                    continue
                counts["outside" if content == "OUTSIDE" else "inside"] += 1
    finally:
        swapper.kill()
        swapper.wait()
    assert counts["outside"] == 0, counts
    assert counts["inside"] >= 2000, counts  # the reads ran, and most passed
    assert counts["refused"] > 0, counts  # and the swapper did race them


def test_symlink_swap_race_never_zips_an_outside_file(swap_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    """REST ``zip-directory`` walks the workspace while the shell swaps links in it."""
    import zipfile

    ws, outside = swap_dirs
    rt = _runtime(ws)
    dest = tmp_path / "ws.zip"
    swapper = subprocess.Popen(["sh", "-c", SWAPPER, "swapper", str(ws), str(outside)])
    zips, leaked, inside = 0, 0, 0
    try:
        deadline = time.monotonic() + 20
        while zips < 1500 and time.monotonic() < deadline:
            rt.zip_workspace(dest)
            zips += 1
            with zipfile.ZipFile(dest) as archive:
                for name in archive.namelist():
                    content = archive.read(name)
                    leaked += content == b"OUTSIDE"
                    inside += content == b"inside"
    finally:
        swapper.kill()
        swapper.wait()
    assert leaked == 0, f"{leaked} outside file(s) in {zips} zips"
    assert zips >= 300 and inside >= zips, (zips, inside)


def test_huge_sparse_file_is_refused_without_reading(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    with open(ws / "sparse.bin", "wb") as fh:
        fh.truncate(1 << 30)  # 1 GiB of holes: reading it whole costs 1 GiB of memory
    rt = _runtime(ws)
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ActionError, match="larger than the 1000000 byte limit"):
            rt.read_file("sparse.bin")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak} bytes while refusing"
    assert time.monotonic() - started < 1.0  # measured before the fix: 5.3 s


def test_read_file_answers_as_before(tmp_path: Path) -> None:
    """What the REST routes rely on: text, 404 for missing and directories, 400 for the rest."""
    ws = tmp_path / "ws"
    (ws / "dir").mkdir(parents=True)
    (ws / "a.txt").write_text("héllo")
    (ws / "bin").write_bytes(b"\xff\xfe")
    (ws / "ok_link").symlink_to("a.txt")  # a link inside the workspace is still read
    (ws / "big").write_bytes(b"x" * 11)
    rt = _runtime(ws)
    assert rt.read_file("a.txt") == "héllo"
    assert rt.read_file("ok_link") == "héllo"
    assert rt.read_file("big", limit=11) == "x" * 11
    with pytest.raises(ActionError, match="larger"):
        rt.read_file("big", limit=10)
    with pytest.raises(ActionError, match="binary"):
        rt.read_file("bin")
    for missing in ("nope.txt", "dir", "."):
        with pytest.raises(FileNotFoundError):
            rt.read_file(missing)
    with pytest.raises(PathEscape):
        rt.read_file("../x")


# -- the same through the REST route and a real session shell ------------------------------


def _vm_hwm_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))


def test_select_file_against_the_session_shell(daemon_factory: Any, tmp_path: Path) -> None:
    """``GET /api/select-file`` while the session's own shell swaps a link (the issue's 6 of
    600), and on a 1 GiB sparse file the shell made (the issue's 22 MB to 1,046 MB, 5.3 s)."""
    from .daemon_harness import Client, wait_for
    from .test_hardening_actors import session_pid
    from .test_openhands_rest import api

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("OUTSIDE")
    d = daemon_factory(runtime="local", close_delay=30.0)
    c = Client(d.url)
    ok = c.init()
    token = ok["token"]
    loop = SWAPPER.replace('cd "$1"\n', "").replace('"$2"', str(outside))
    setup = "mkdir -p d && printf inside > inside.txt && printf inside > d/secret.txt && truncate -s 1G sparse.bin"
    c.send({"action": "run", "args": {"command": f"{setup} && (sh -c '{loop}' >/dev/null 2>&1 &)"}})
    wait_for(lambda: any(e.get("extras", {}).get("exit_code") == 0 for e in c.events()), what="setup")
    pid = session_pid(d, ok["session_id"])
    counts = {"inside": 0, "outside": 0, "refused": 0}
    for n in range(600):
        status, body = api(d, "GET", f"/api/select-file?file={('f', 'd/secret.txt')[n % 2]}", token)
        if status == 200:
            counts["outside" if body["code"] == "OUTSIDE" else "inside"] += 1
        else:
            counts["refused"] += 1
    assert counts["outside"] == 0, counts
    assert counts["inside"] > 100 and counts["refused"] > 0, counts  # it ran, and it raced

    before = _vm_hwm_kb(pid)
    started = time.monotonic()
    status, body = api(d, "GET", "/api/select-file?file=sparse.bin", token)
    took = time.monotonic() - started
    assert status == 400 and "larger than" in body["error"], body
    grown = _vm_hwm_kb(pid) - before
    assert grown < 50_000, f"the session actor's peak memory grew by {grown} kB"
    assert took < 3.0, f"{took:.1f} s to refuse it"
    c.close()
