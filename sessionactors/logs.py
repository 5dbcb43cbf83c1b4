"""Logging: one ``sessionactors`` namespace, plain text or JSON lines.

Every process (launcher, gateway, actors through Thespian's logger process) uses
the same format. Records may carry ``session_id`` and ``conn_id`` (pass them in
``extra``); they become fields of the JSON line. Secrets are never passed to a
logger: tokens appear only through ``github.redact``.

``python -m sessionactors.logs PATH MAX_BYTES KEEP`` is the log writer of a daemon run
by ``sessionactors start``: every process of the daemon writes to one pipe (their
stderr), and this process appends it to PATH, rotating by size (PATH.1 ... PATH.KEEP).
One writer, so that rotation never races between processes; ``print_log`` and
``follow_log`` are what ``sessionactors logs [-f]`` shows.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "JsonFormatter",
    "PlainFormatter",
    "setup_logging",
    "formatter_config",
    "RotatingWriter",
    "print_log",
    "follow_log",
]

_FIELDS = ("session_id", "conn_id")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, pid, and session_id/conn_id when known."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        for key in _FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """Human-readable lines, with ``[session conn]`` when the record names them."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        tags = [str(getattr(record, k)) for k in _FIELDS if getattr(record, k, None) is not None]
        return f"{text} [{' '.join(tags)}]" if tags else text


def formatter_config(json_lines: bool) -> dict[str, Any]:
    """The ``formatters`` entry of a logging dictConfig (Thespian's logDefs use it too)."""
    cls = JsonFormatter if json_lines else PlainFormatter
    return {"()": f"{cls.__module__}.{cls.__qualname__}"}


def setup_logging(level: str, json_lines: bool) -> None:
    """Configure this process's root logger to stderr (the daemon redirects it to its log)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RotatingWriter:
    """Appends to one log file and rotates it once it reaches ``max_bytes``.

    Rotation happens between two writes (so a file may pass ``max_bytes`` by one write,
    at most 64 KiB): PATH becomes PATH.1, PATH.1 becomes PATH.2 ... and PATH.<keep> is
    removed.
    """

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path, self.max_bytes, self.keep = path, max_bytes, keep
        self.fh = open(path, "ab")

    def write(self, data: bytes) -> None:
        if self.fh.tell() >= self.max_bytes:
            self.rotate()
        self.fh.write(data)
        self.fh.flush()

    def rotate(self) -> None:
        self.fh.close()
        for n in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.keep > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self.fh = open(self.path, "ab")


def print_log(path: Path, out: BinaryIO, lines: int | None = None) -> int:
    """Write the log at ``path`` (or its last ``lines`` lines) to ``out``; the offset reached."""
    with open(path, "rb") as fh:
        if lines is None:
            while chunk := fh.read(65536):
                out.write(chunk)
        else:
            out.writelines(deque(fh, maxlen=max(0, lines)))
        out.flush()
        return fh.tell()


def follow_log(path: Path, out: BinaryIO, start: int = 0, poll: float = 0.2) -> None:
    """Write what is appended to ``path`` from offset ``start``, across rotations, until interrupted."""
    fh: BinaryIO | None = None
    inode = -1
    try:
        while True:
            if fh is None:
                try:
                    fh = open(path, "rb")
                except FileNotFoundError:
                    time.sleep(poll)
                    continue
                inode = os.fstat(fh.fileno()).st_ino
                fh.seek(start)
                start = 0  # a file that replaces this one (rotation) is read from its start
            chunk = fh.read(65536)
            if chunk:
                out.write(chunk)
                out.flush()
                continue
            try:
                rotated = os.stat(path).st_ino != inode
            except FileNotFoundError:
                rotated = True
            if rotated:  # the old file was read to its end above: go on with the new one
                fh.close()
                fh = None
                continue
            time.sleep(poll)
    finally:
        if fh is not None:
            fh.close()


def _writer_main(argv: list[str]) -> int:
    """Copy stdin to a rotating log file until every writer of the pipe has closed it."""
    path, max_bytes, keep = Path(argv[0]), int(argv[1]), int(argv[2])
    writer = RotatingWriter(path, max_bytes, keep)
    while chunk := os.read(0, 65536):
        writer.write(chunk)
    writer.fh.close()
    return 0


if __name__ == "__main__":
    sys.exit(_writer_main(sys.argv[1:]))
