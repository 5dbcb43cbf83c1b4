"""Configuration: defaults, precedence (file < environment < flags), the ``[runtime]`` table,
every refusal naming its key, the JSON hand-over to child processes, and docs/configuration.md.

Every test passes an explicit ``environ`` mapping to ``load_config``: os.environ is neither
read nor changed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from sessionactors.config import Config, default_data_dir, load_config
from sessionactors.errors import ConfigError

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def toml(tmp_path: Path, text: str, name: str = "sessionactors.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(key: str, **kwargs: Any) -> ConfigError:
    """load_config(**kwargs) must raise ConfigError for ``key``, naming it in the message."""
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    assert info.value.key == key, str(info.value)
    assert f"'{key}'" in str(info.value)
    return info.value


# -- defaults -------------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config(environ={"HOME": str(tmp_path)})
    assert (cfg.host, cfg.port, cfg.close_delay) == ("127.0.0.1", 3000, 15.0)
    assert cfg.data_dir == tmp_path / ".local" / "share" / "sessionactors"
    assert cfg.run_dir == cfg.data_dir / "run" and cfg.workspaces_dir == cfg.data_dir / "workspaces"
    assert (cfg.runtime, cfg.runtime_options, cfg.fsync) == ("local", {}, "full")
    assert (cfg.actor_ip, cfg.multi_host, cfg.require_github) == ("127.0.0.1", False, False)
    assert cfg.github_api_url == "https://api.github.com" and cfg.token_secret is None
    # Every field not given equals the dataclass default (data_dir aside: it comes from environ).
    plain = Config(data_dir=cfg.data_dir)
    assert cfg == plain and plain.validate() is plain


def test_data_dir_follows_xdg_data_home(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    home = tmp_path / "home"
    env = {"XDG_DATA_HOME": str(xdg), "HOME": str(home)}
    assert load_config(environ=env).data_dir == xdg / "sessionactors"
    assert default_data_dir(env) == xdg / "sessionactors"
    # An empty XDG_DATA_HOME counts as unset (XDG Base Directory specification).
    env["XDG_DATA_HOME"] = ""
    assert load_config(environ=env).data_dir == home / ".local" / "share" / "sessionactors"
    # An explicit data_dir wins over both.
    env["SESSIONACTORS_DATA_DIR"] = str(tmp_path / "elsewhere")
    assert load_config(environ=env).data_dir == tmp_path / "elsewhere"


# -- precedence -----------------------------------------------------------------------------


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        'port = 4000\nclose_delay = 5\nhost = "127.0.0.2"\nlog_level = "debug"\nadmin_port = 19601\n',
    )
    env = {"SESSIONACTORS_PORT": "5000", "SESSIONACTORS_CLOSE_DELAY": "6.5", "HOME": str(tmp_path)}
    flags = {"port": "6000", "admin_port": None, "log_level": None}

    only_file = load_config(path, environ={"HOME": str(tmp_path)})
    assert (only_file.port, only_file.close_delay, only_file.host) == (4000, 5.0, "127.0.0.2")

    file_env = load_config(path, environ=env)
    assert (file_env.port, file_env.close_delay, file_env.host) == (5000, 6.5, "127.0.0.2")

    everything = load_config(path, flags, env)
    assert everything.port == 6000  # flag > environment > file
    assert everything.close_delay == 6.5  # environment > file
    assert everything.host == "127.0.0.2"  # file > default
    assert everything.log_level == "debug" and everything.admin_port == 19601  # a None flag is not given
    assert everything.max_frame_bytes == Config.max_frame_bytes  # default


def test_config_file_named_by_environment(tmp_path: Path) -> None:
    by_env = toml(tmp_path, "port = 4100\n", "by-env.toml")
    by_flag = toml(tmp_path, "port = 4200\n", "by-flag.toml")
    env = {"SESSIONACTORS_CONFIG": str(by_env)}
    assert load_config(environ=env).port == 4100
    assert load_config(by_flag, environ=env).port == 4200  # --config wins over SESSIONACTORS_CONFIG
    missing = refused("config", environ={"SESSIONACTORS_CONFIG": str(tmp_path / "nope.toml")})
    assert "nope.toml" in str(missing) and "does not exist" in str(missing)


def test_environment_value_syntax(tmp_path: Path) -> None:
    env = {
        "SESSIONACTORS_MULTI_HOST": "Yes",
        "SESSIONACTORS_ACTOR_IP": "192.0.2.10",  # allowed because multi_host is on
        "SESSIONACTORS_REQUIRE_GITHUB": "0",
        "SESSIONACTORS_CORS_ORIGINS": "https://a.example, https://b.example,",
        "SESSIONACTORS_RUNTIME_OPTIONS": '{"timeout": 30, "env": {"A": "b"}}',
        "SESSIONACTORS_GITHUB_ALLOWLIST": "",  # empty: unset
        "SESSIONACTORS_TOKEN_SECRET": "",
        "SESSIONACTORS_POOL_SIZE": " 4 ",
        "SESSIONACTORS_SESSION_ID": "abc",  # set by the local runtime in a session's shell: not a key
        "HOME": str(tmp_path),
    }
    cfg = load_config(environ=env)
    assert cfg.multi_host is True and cfg.actor_ip == "192.0.2.10" and cfg.require_github is False
    assert cfg.cors_origins == ("https://a.example", "https://b.example")
    assert cfg.runtime_options == {"timeout": 30, "env": {"A": "b"}}
    assert cfg.github_allowlist is None and cfg.token_secret is None and cfg.pool_size == 4


# -- the [runtime] table --------------------------------------------------------------------


def test_runtime_table(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        '[runtime]\nname = "echo"\nfail_start = true\nstop_delay = 0.5\n\n[runtime.env]\nLANG = "C"\n',
    )
    cfg = load_config(path, environ={})
    assert cfg.runtime == "echo"
    assert cfg.runtime_options == {"fail_start": True, "stop_delay": 0.5, "env": {"LANG": "C"}}

    # The environment overrides the name and keeps the table's options...
    swapped = load_config(path, environ={"SESSIONACTORS_RUNTIME": "local"})
    assert swapped.runtime == "local" and swapped.runtime_options == cfg.runtime_options
    # ...or replaces the options as a whole.
    replaced = load_config(path, environ={"SESSIONACTORS_RUNTIME_OPTIONS": '{"timeout": 9}'})
    assert replaced.runtime == "echo" and replaced.runtime_options == {"timeout": 9}
    # The flag wins over both.
    assert load_config(path, {"runtime": "rulebot"}, {"SESSIONACTORS_RUNTIME": "local"}).runtime == "rulebot"

    no_name = load_config(toml(tmp_path, "[runtime]\ntimeout = 300\n", "no-name.toml"), environ={})
    assert no_name.runtime == "local" and no_name.runtime_options == {"timeout": 300}

    plain = load_config(toml(tmp_path, 'runtime = "echo"\n', "plain.toml"), environ={})
    assert plain.runtime == "echo" and plain.runtime_options == {}

    both = toml(tmp_path, 'runtime_options = {a = 1}\n[runtime]\nname = "echo"\n', "both.toml")
    refused("runtime_options", config_file=both)


# -- refusals -------------------------------------------------------------------------------

# (key, file text or None, environment, flags): each must be refused naming ``key``.
INVALID: list[tuple[str, str | None, dict[str, str], dict[str, Any]]] = [
    ("port", None, {}, {"port": 70000}),
    ("port", None, {}, {"port": "abc"}),
    ("port", None, {"SESSIONACTORS_PORT": "0"}, {}),
    ("port", "port = 3000.5\n", {}, {}),
    ("port", 'port = "three thousand"\n', {}, {}),
    ("port", "port = true\n", {}, {}),
    ("admin_port", None, {"SESSIONACTORS_ADMIN_PORT": "65536"}, {}),
    ("admin_port", "port = 19500\n", {}, {}),  # the default admin_port
    ("close_delay", "close_delay = -1\n", {}, {}),
    ("close_delay", None, {"SESSIONACTORS_CLOSE_DELAY": "abc"}, {}),
    ("close_delay", None, {"SESSIONACTORS_CLOSE_DELAY": "nan"}, {}),
    ("close_delay", "close_delay = inf\n", {}, {}),
    ("close_delay", None, {}, {"close_delay": "-0.5"}),
    ("bogus", "bogus = 1\n", {}, {}),
    ("bogus", None, {"SESSIONACTORS_BOGUS": "1"}, {}),
    ("multi_host", None, {"SESSIONACTORS_MULTI_HOST": "maybe"}, {}),
    ("multi_host", 'multi_host = "perhaps"\n', {}, {}),
    ("require_github", None, {"SESSIONACTORS_REQUIRE_GITHUB": "2"}, {}),
    ("fsync", 'fsync = "sometimes"\n', {}, {}),
    ("fsync", None, {"SESSIONACTORS_FSYNC": "FULL"}, {}),
    ("actor_ip", 'actor_ip = "192.0.2.10"\n', {}, {}),
    ("actor_ip", None, {"SESSIONACTORS_ACTOR_IP": "0.0.0.0"}, {}),
    ("actor_ip", None, {"SESSIONACTORS_ACTOR_IP": "localhost"}, {}),
    ("actor_base", 'actor_base = "multiprocUDPBase"\n', {}, {}),
    ("max_field_bytes", "max_field_bytes = 2000\nmax_frame_bytes = 1000\n", {}, {}),
    ("max_field_bytes", None, {"SESSIONACTORS_MAX_FRAME_BYTES": "1000"}, {}),
    ("max_frame_bytes", "max_frame_bytes = 0\n", {}, {}),
    ("max_connections_per_session", "max_connections_per_session = 0\n", {}, {}),
    ("max_live_sessions_per_user", "max_live_sessions_per_user = 0\n", {}, {}),
    ("send_buffer", None, {"SESSIONACTORS_SEND_BUFFER": "-1"}, {}),
    ("rate_limit", "rate_limit = 0\n", {}, {}),
    ("rate_burst", "rate_burst = 0\n", {}, {}),
    ("pool_size", "pool_size = 1025\n", {}, {}),
    ("restart_intensity", "restart_intensity = -1\n", {}, {}),
    ("restart_period", "restart_period = 0\n", {}, {}),
    ("retention_days", "retention_days = -1\n", {}, {}),
    ("token_ttl", None, {"SESSIONACTORS_TOKEN_TTL": "0"}, {}),
    ("token_secret", 'token_secret = "too short"\n', {}, {}),
    ("github_api_url", None, {}, {"github_api_url": "ftp://github.example"}),
    ("github_api_url", 'github_api_url = "https://"\n', {}, {}),
    ("github_timeout", "github_timeout = 0\n", {}, {}),
    ("github_cache_ttl", "github_cache_ttl = -1\n", {}, {}),
    ("cors_origins", "cors_origins = [1, 2]\n", {}, {}),
    ("runtime_options", None, {"SESSIONACTORS_RUNTIME_OPTIONS": "timeout=5"}, {}),
    ("runtime_options", None, {"SESSIONACTORS_RUNTIME_OPTIONS": "[1]"}, {}),
    ("log_level", 'log_level = "loud"\n', {}, {}),
    ("host", 'host = ""\n', {}, {}),
    ("host", "host = [1]\n", {}, {}),
    ("data_dir", None, {"SESSIONACTORS_DATA_DIR": ""}, {}),
]


@pytest.mark.parametrize(
    ("key", "text", "environ", "flags"), INVALID, ids=[f"{c[0]}-{i}" for i, c in enumerate(INVALID)]
)
def test_invalid_value_is_refused_naming_its_key(
    tmp_path: Path, key: str, text: str | None, environ: dict[str, str], flags: dict[str, Any]
) -> None:
    path = toml(tmp_path, text) if text is not None else None
    exc = refused(key, config_file=path, flags=flags, environ=environ)
    # ...and where the offending value came from (a check across two keys names both instead).
    if key in ("admin_port", "max_field_bytes") and key not in (text or "") + str(environ).lower():
        other = "port" if key == "admin_port" else "max_frame_bytes"
        assert f"must differ from {other}" in str(exc) or f"must not exceed {other}" in str(exc)
    elif flags:
        assert "(from command line)" in str(exc)
    elif environ:
        (name,) = environ
        assert f"(from environment {name})" in str(exc)
    else:
        assert f"(from file {path})" in str(exc)


def test_unparsable_toml(tmp_path: Path) -> None:
    path = toml(tmp_path, "port = = 3\n")
    exc = refused("config", config_file=path)
    assert str(path) in str(exc) and "TOML" in str(exc)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"port = 3\n\xff\xfe\n")
    refused("config", config_file=binary)


def test_missing_or_unreadable_file(tmp_path: Path) -> None:
    exc = refused("config", config_file=tmp_path / "missing.toml")
    assert "missing.toml" in str(exc) and "does not exist" in str(exc)
    refused("config", config_file=tmp_path)  # a directory


def test_flags_win_over_an_invalid_environment_value(tmp_path: Path) -> None:
    # The value that is used is checked; one that is overridden is not.
    cfg = load_config(flags={"port": 3100}, environ={"SESSIONACTORS_PORT": "not a port"})
    assert cfg.port == 3100


def test_validate_checks_a_config_built_by_hand(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Config(data_dir=tmp_path, close_delay=-1).validate()
    assert info.value.key == "close_delay"
    with pytest.raises(ConfigError) as info:
        Config(data_dir=tmp_path, port=0).validate()
    assert info.value.key == "port"


# -- the JSON hand-over to the gateway and the actors ----------------------------------------


def test_json_round_trip(tmp_path: Path) -> None:
    cfg = Config(
        host="127.0.0.3",
        port=4321,
        data_dir=tmp_path / "data",
        close_delay=2.5,
        admin_port=19999,
        actor_ip="192.0.2.7",
        multi_host=True,
        runtime="echo",
        runtime_options={"stop_delay": 0.5, "env": {"A": "b"}, "list": [1, 2]},
        fsync="normal",
        token_secret="s" * 40,
        github_allowlist=tmp_path / "allow.txt",
        require_github=True,
        cors_origins=("https://a.example", "https://b.example"),
        log_json=True,
        log_level="debug",
    ).validate()
    text = cfg.to_json()
    raw = json.loads(text)
    assert set(raw) == {f.name for f in dataclasses.fields(Config)}
    back = Config.from_json(text)
    assert back == cfg
    assert isinstance(back.data_dir, Path) and isinstance(back.github_allowlist, Path)
    assert isinstance(back.cors_origins, tuple)
    assert Config.from_json(Config(data_dir=tmp_path).to_json()) == Config(data_dir=tmp_path)

    # from_json checks what it reads, like load_config.
    with pytest.raises(ConfigError) as info:
        Config.from_json(json.dumps({**raw, "port": 0}))
    assert info.value.key == "port"
    with pytest.raises(ConfigError) as info:
        Config.from_json(json.dumps({**raw, "surprise": 1}))
    assert info.value.key == "surprise"


# -- docs/configuration.md ------------------------------------------------------------------


def _doc_example() -> str:
    match = re.search(r"## An example file\n\n```toml\n(.*?)```", DOC.read_text(), re.S)
    assert match, "docs/configuration.md has no example TOML block"
    return match.group(1)


def test_documented_example_parses(tmp_path: Path) -> None:
    path = toml(tmp_path, _doc_example())
    cfg = load_config(path, environ={})
    assert (cfg.host, cfg.port, cfg.close_delay, cfg.admin_port) == ("127.0.0.1", 8080, 30.0, 19600)
    assert cfg.data_dir == Path("/var/lib/sessionactors") and cfg.require_github is True
    assert cfg.github_api_url == "https://github.example.com/api/v3"
    assert cfg.cors_origins == ("https://console.example.com",) and cfg.log_level == "warning"
    assert cfg.runtime == "local"
    assert cfg.runtime_options == {
        "timeout": 300,
        "stream_interval": 0.5,
        "max_output": 2000000,
        "env": {"LANG": "C.UTF-8"},
    }
    # The sentence under the example: a flag overrides the file.
    assert load_config(path, {"port": "9000"}, {}).port == 9000


def test_documented_table_lists_every_key_with_its_default() -> None:
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`") and cells[3].startswith("`SESSIONACTORS_"):
            rows[cells[0].strip("`")] = cells
    defaults = Config(data_dir=Path("/unused"))
    for f in dataclasses.fields(Config):
        assert f.name in rows, f"docs/configuration.md does not document {f.name}"
        _, default, _, env, flag = rows[f.name]
        assert env.startswith(f"`SESSIONACTORS_{f.name.upper()}`"), env
        value = getattr(defaults, f.name)
        if f.name not in ("data_dir", "node_name") and value not in (None, (), {}):  # machine's own
            shown = json.dumps(value) if isinstance(value, bool) else str(value)
            assert f"`{shown}`" in default, (f.name, default, shown)
        if flag:
            assert flag == f"`--{f.name.replace('_', '-')}`", (f.name, flag)
    assert set(rows) == {f.name for f in dataclasses.fields(Config)}
