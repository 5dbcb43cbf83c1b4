"""py-spy around a running scenario: record a process, then name where its samples went."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["available", "start_record", "finish_record", "top_costs"]

_LINE = re.compile(r"^(.*) (\d+)$")


def available() -> bool:
    return shutil.which("py-spy") is not None


def start_record(
    pid: int, out: Path, duration: float, rate: int = 100, idle: bool = False, children: bool = False
) -> subprocess.Popen[bytes]:
    """Start ``py-spy record`` on ``pid`` (raw collapsed stacks to ``out``); returns the py-spy process.

    Without ``idle`` only samples of a running thread count (where the CPU goes); with it,
    waiting counts too (where the wall-clock time goes: sleeping in SQLite's busy handler,
    an fsync, waiting for a message)."""
    argv = [
        "py-spy", "record", "--pid", str(pid), "--duration", str(int(duration)), "--rate", str(rate),
        "--format", "raw", "--nonblocking", "--output", str(out),
    ]  # fmt: skip
    if idle:
        argv.append("--idle")
    if children:  # also every process it forks while recording (new session actors)
        argv.append("--subprocesses")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish_record(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
    """Wait for py-spy; answer its error text ('' when it worked)."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        return "py-spy did not finish"
    return "" if proc.returncode == 0 else err.decode(errors="replace")[-500:]


def _short(frame: str, line: bool = False) -> str:
    """``func (path/to/module.py:12)`` -> ``func (module.py)``, or ``func (module.py:12)`` with ``line``."""
    m = re.match(r"^(.*) \((.*?)(:\d+)?\)$", frame)
    if not m:
        return frame
    name, path, lineno = m.groups()
    suffix = (lineno or "") if line else ""
    return f"{name} ({path.rsplit('/', 1)[-1]}{suffix})"


def top_costs(raw_file: Path, n: int = 15) -> dict[str, Any]:
    """From py-spy's raw output: total samples, and the top ``n`` frames by self and by inclusive share."""
    self_counts: Counter[str] = Counter()
    line_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    try:
        lines = raw_file.read_text().splitlines()
    except OSError:
        return {"samples": 0, "self": [], "inclusive": []}
    for line in lines:
        m = _LINE.match(line.strip())
        if not m:
            continue
        stack, count = m.group(1), int(m.group(2))
        # py-spy prefixes the thread/process name; drop non-frame entries (no "(file)")
        raw = [f for f in stack.split(";") if f.endswith(")")]
        if not raw:
            continue
        frames = [_short(f) for f in raw]
        total += count
        self_counts[frames[-1]] += count
        line_counts[_short(raw[-1], line=True)] += count
        for frame in set(frames):
            incl_counts[frame] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100.0 * c / total, 1)) for f, c in counter.most_common(n)] if total else []

    # frames under (nearly) every sample are the process's start-up chain (fork, actor loop): noise
    base = {f for f, c in incl_counts.items() if c >= 0.97 * total}
    return {
        "samples": total,
        "self": share(self_counts),
        "self_lines": share(line_counts),
        "inclusive": share(Counter({f: c for f, c in incl_counts.items() if f not in base})),
    }
