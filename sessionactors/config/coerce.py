"""Typing of raw setting values (TOML, environment strings, flags) into a settings dataclass.

Kept apart from ``settings`` so that the loaders and ``Config.from_json`` share one
conversion without an import circle: it knows dataclass fields, not ``Config``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigError

__all__ = ["build", "coerce"]

T = TypeVar("T")


def coerce(fields: Mapping[str, dataclasses.Field[Any]], key: str, value: Any, source: str) -> Any:
    """Convert a file/env/flag value to the field's type, or raise ConfigError naming the key.

    Environment values are strings: numbers and booleans are parsed, lists are
    comma-separated, tables are JSON objects, and an empty string unsets an optional key.
    """
    kind = str(fields[key].type)
    optional = kind.endswith("| None")
    try:
        if value is None or (optional and value == ""):
            if optional:
                return None
            raise ValueError("must not be empty")
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"must be true or false, not {value!r}")
        if kind == "int":
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise ValueError(f"must be an integer, not {value!r}")
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"must be an integer, not {value!r}") from None
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError(f"must be a number, not {value!r}")
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"must be a number, not {value!r}") from None
        if kind.startswith("Path"):
            if not isinstance(value, (str, os.PathLike)) or str(value) == "":
                raise ValueError(f"must be a non-empty path, not {value!r}")
            return Path(os.path.expanduser(str(value)))
        if kind.startswith("tuple"):
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError("must be a list of strings")
            return tuple(value)
        if kind.startswith("dict"):
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError:
                    raise ValueError("must be a table (a JSON object in the environment)") from None
            if not isinstance(value, dict):
                raise ValueError("must be a table (a JSON object in the environment)")
            return dict(value)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"must be a string, not {value!r}")
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(key, f"{exc} (from {source})") from None


def build(cls: type[T], raw: Mapping[str, Any], sources: str | Mapping[str, str]) -> T:
    """A validated ``cls`` (``Config``) from raw values; ``sources`` says where each came from (for errors)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {}
    for key, value in raw.items():
        source = sources if isinstance(sources, str) else sources[key]
        if key not in fields:
            raise ConfigError(key, f"unknown key (from {source})")
        values[key] = coerce(fields, key, value, source)
    return cls(**values).validate()  # type: ignore[attr-defined, no-any-return]
