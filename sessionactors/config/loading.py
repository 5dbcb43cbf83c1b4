"""Where settings come from: embedded defaults < TOML file < ``SESSIONACTORS_*``
environment < CLI flags (``load_config``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .coerce import build
from .settings import Config, default_data_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ENV_PREFIX", "load_config"]

ENV_PREFIX = "SESSIONACTORS_"
# ``SESSIONACTORS_*`` names that are not configuration keys: the file to read, and what the
# local runtime sets in every session's shell (a ``sessionactors`` command run there must work).
_NOT_KEYS = frozenset({ENV_PREFIX + "CONFIG", ENV_PREFIX + "SESSION_ID"})


def _read_file(path: Path) -> dict[str, Any]:
    """The TOML file's keys, with the ``[runtime]`` table split into ``runtime``/``runtime_options``."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("config", f"file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("config", f"cannot read {str(path)!r}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{str(path)!r} is not valid TOML: {exc}") from None
    if isinstance(raw.get("runtime"), dict):
        if "runtime_options" in raw:
            raise ConfigError("runtime_options", "give runtime options in the [runtime] table only")
        options = dict(raw.pop("runtime"))
        raw["runtime"] = options.pop("name", Config.runtime)
        raw["runtime_options"] = options
    return raw


def load_config(
    config_file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Merge defaults, the TOML file, the environment and CLI flags (later wins).

    ``config_file`` defaults to ``$SESSIONACTORS_CONFIG``; ``environ`` to ``os.environ``
    (it also gives the default data directory, see ``default_data_dir``). A flag whose
    value is None is not given. Raises ConfigError naming the key (and where it was set).
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG")
    if config_file:
        for key, value in _read_file(Path(config_file)).items():
            merged[key], sources[key] = value, f"file {config_file}"
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX) and name not in _NOT_KEYS:
            key = name[len(ENV_PREFIX) :].lower()
            merged[key], sources[key] = value, f"environment {name}"
    for key, value in (flags or {}).items():
        if value is not None:
            merged[key], sources[key] = value, "command line"
    if "data_dir" not in merged:
        merged["data_dir"], sources["data_dir"] = default_data_dir(environ), "default"
    try:
        return build(Config, merged, sources)
    except ConfigError as exc:
        source = sources.get(exc.key)
        if source is None or "(from " in exc.problem:
            raise
        raise ConfigError(exc.key, f"{exc.problem} (from {source})") from None
