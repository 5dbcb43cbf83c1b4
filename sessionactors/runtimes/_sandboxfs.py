"""Helpers of the session sandbox: its prepared ``/etc``, bwrap's info, the workspace's size.

What it is for: the parts of ``sandbox`` that touch files rather than processes. Imports
``errors`` only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import shutil
import time
from typing import Any

from ..errors import RuntimeStartError

__all__ = ["INSIDE_CTL", "ETC", "cgroup_name", "etc_dir", "read_info", "workspace_usage"]

INSIDE_CTL = "/run/sessionactors"  # the runtime's control files (command file), read-only
# The /etc a shell and the usual tools need; nothing with secrets (no shadow, no ssh keys).
ETC = (
    "alternatives", "ssl", "ca-certificates", "ca-certificates.conf", "hosts", "host.conf",
    "nsswitch.conf", "resolv.conf", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime",
    "os-release", "debian_version", "mime.types", "inputrc", "gitconfig", "magic", "bash.bashrc",
)  # fmt: skip


def workspace_usage(root: str, budget: int = 200_000) -> int:
    """Bytes the workspace occupies on disk (allocated blocks, so sparse files count as
    what they use); stops counting after ``budget`` entries to stay bounded."""
    total, seen = 0, 0
    stack = [root]
    while stack and seen < budget:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as it:
            for entry in it:
                seen += 1
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
    return total


_etc_cache: list[str] = []


def etc_dir() -> str:
    """The sandbox's /etc: copies of ``ETC`` and links to its own passwd and group (one bind
    mount instead of one per file: a few ms less per start). Made once per uid and boot,
    shared by every process of the daemon; one found with the wrong owner or mode is not used.
    """
    if _etc_cache and os.path.isdir(_etc_cache[0]):
        return _etc_cache[0]
    import tempfile

    with open("/proc/sys/kernel/random/boot_id") as fh:
        boot = fh.read().strip()[:8]
    stable = os.path.join(tempfile.gettempdir(), f"sessionactors-etc-{os.geteuid()}-{boot}")
    st = None
    with contextlib.suppress(OSError):
        st = os.lstat(stable)
    if st is not None and st.st_uid == os.geteuid() and (st.st_mode & 0o7777) == 0o755:
        _etc_cache[:] = [stable]
        return stable
    path = tempfile.mkdtemp(prefix="sessionactors-etc-")
    for name in ETC:
        src, dst = f"/etc/{name}", os.path.join(path, name)
        with contextlib.suppress(OSError, shutil.Error):
            if os.path.isdir(src):
                shutil.copytree(src, dst, symlinks=True)
            elif os.path.exists(src):
                shutil.copy2(src, dst)  # a symlinked resolv.conf: its content
    for name in ("passwd", "group"):
        os.symlink(f"{INSIDE_CTL}/{name}", os.path.join(path, name))
    os.chmod(path, 0o755)
    try:
        os.rename(path, stable)  # atomic; fails when another process was first (or a stranger)
        path = stable
    except OSError:
        pass
    _etc_cache[:] = [path]
    return path


def cgroup_name(session_id: str) -> str:
    # By session: a leftover of a killed daemon is reused (emptied) at the next activation.
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in session_id)[:64]
    return f"s-{safe}-{hashlib.sha256(session_id.encode()).hexdigest()[:8]}"


def read_info(fd: int, timeout: float) -> dict[str, Any] | None:
    """bwrap's ``--info-fd`` JSON; None when it closed the pipe without writing (it failed)."""
    data = b""
    end = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ValueError):
            if data:
                return json.loads(data)  # type: ignore[no-any-return]
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise RuntimeStartError(f"the sandbox did not start within {timeout} s")
        select.select([fd], [], [], remaining)
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        data += chunk
