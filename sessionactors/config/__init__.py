"""Configuration: embedded defaults < TOML file < ``SESSIONACTORS_*`` environment < CLI flags.

Every key of ``Config`` can be set in the TOML file (top level, plus the ``[runtime]``
table for runtime-specific options), in the environment as ``SESSIONACTORS_<KEY>`` (upper
case) and, for the common ones, as a flag. Invalid values raise ``ConfigError`` naming the
key. Modules: ``settings`` (the keys and their validation; ``cluster`` validates the
cluster's), ``coerce`` (typing raw values), ``loading`` (the sources and their order).

What it may import: ``errors`` only.
"""

from .loading import ENV_PREFIX, load_config
from .settings import Config, default_data_dir

__all__ = ["Config", "default_data_dir", "load_config", "ENV_PREFIX"]
