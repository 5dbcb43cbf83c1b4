"""Logging: one ``sessionactors`` namespace, plain text or JSON lines.

Every process (launcher, gateway, actors through Thespian's logger process) uses
the same format. Records may carry ``session_id`` and ``conn_id`` (pass them in
``extra``); they become fields of the JSON line. Secrets are never passed to a
logger: tokens appear only through ``github.redact``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

__all__ = ["JsonFormatter", "PlainFormatter", "setup_logging", "formatter_config"]

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
