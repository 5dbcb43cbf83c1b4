"""The sandbox's outbound network (``network = "outbound"``): pasta, attached to its netns.

What it is for: ``sandbox`` calls ``attach(init_pid)`` once the sandbox's shell is ready;
pasta (Debian ``passt``) then gives the sandbox's network namespace an interface with the
host's address and a default route, and carries its TCP/UDP connections out through the
host's sockets. Imports ``errors`` only.

What it never does: forward anything to the host's loopback (``--no-map-gw``: the
gateway address is not mapped to the host, ``-T none -U none``: no port of the host's
loopback is forwarded into the namespace, ``-t none -u none``: nothing forwarded in from
outside). The daemon's HTTP and Thespian ports, bound to 127.0.0.1, stay unreachable.

pasta runs in the foreground as the session's child, under ``setpriv --pdeathsig KILL``
so that it dies with the session's process even when that is SIGKILLed (pasta does not
notice a namespace given by a /proc path going away). It runs as root (``--runas 0``):
as nobody it cannot open the namespace of a sandbox that root made.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time

from ..errors import RuntimeStartError

__all__ = ["Pasta", "attach"]


class Pasta:
    """One pasta process serving one sandbox."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=2)


def attach(init_pid: int, timeout: float = 5.0) -> Pasta:
    """Give the network namespace of ``init_pid`` outbound access; RuntimeStartError if not."""
    netns = f"/proc/{init_pid}/ns/net"
    argv = ["setpriv", "--pdeathsig", "KILL", "--", "pasta", "--foreground", "--quiet", "--config-net"]
    argv += ["--no-map-gw", "-t", "none", "-u", "none", "-T", "none", "-U", "none", "--runas", "0"]
    argv += ["--netns", netns, "--netns-only"]
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    except OSError as exc:
        raise RuntimeStartError(f"cannot start pasta for the outbound network: {exc}") from None
    pasta = Pasta(proc)
    # Ready once the namespace has a route out (pasta configures it before serving).
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            said = proc.stderr.read().decode(errors="replace").strip()[-300:] if proc.stderr else ""
            raise RuntimeStartError(f"pasta exited (code {proc.returncode}): {said}")
        with contextlib.suppress(OSError), open(f"/proc/{init_pid}/net/route") as fh:
            if any(line.split()[1] == "00000000" for line in fh.readlines()[1:] if line.split()):
                if proc.stderr is not None:
                    os.set_blocking(proc.stderr.fileno(), False)
                return pasta
        time.sleep(0.005)
    pasta.close()
    raise RuntimeStartError(f"pasta did not configure the sandbox's network within {timeout} s")
