"""Configuration: precedence flags > env > file > defaults, errors that name key and source, redaction."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from inos_node import config
from inos_node.errors import ConfigError
from inos_node.protocols import decider


def _flags(argv: list[str]) -> dict[str, object]:
    p = argparse.ArgumentParser()
    config.add_flags(p)
    return config.flag_values(p.parse_args(argv))


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('workers = 3\napi = "127.0.0.1:7000"\nprefer = "local"\n'
                                          'bootstrap = "/ip4/127.0.0.1/tcp/1/p2p/x"\n')
    env = {"INOS_API": "127.0.0.1:7001", "INOS_PREFER": "remote"}
    r = config.resolve(_flags(["--data-dir", str(tmp_path), "--prefer", "cheapest"]), env)
    assert r.values["prefer"] == "cheapest" and r.sources["prefer"] == "flag --prefer"
    assert r.values["api"] == "127.0.0.1:7001" and r.sources["api"] == "env INOS_API"
    assert r.values["workers"] == 3 and r.sources["workers"] == f"file {tmp_path / 'config.toml'}"
    assert r.values["bootstrap"] == ("/ip4/127.0.0.1/tcp/1/p2p/x",)
    assert r.values["arena_mb"] == 64 and r.sources["arena_mb"] == "default"
    assert r.values["name"] == tmp_path.name and r.config_file == tmp_path / "config.toml"


def test_env_types_and_daemon_config(tmp_path: Path) -> None:
    env = {"INOS_DATA_DIR": str(tmp_path), "INOS_LISTEN": "/ip4/127.0.0.1/tcp/1, /ip4/127.0.0.1/tcp/2",
           "INOS_MDNS": "yes", "INOS_ARENA_MB": "16", "INOS_HEDGE_AFTER": "0", "INOS_LOG_FORMAT": "json"}
    cfg = config.resolve(_flags(["--genesis", "g.json"]), env).daemon_config()
    assert cfg.listen == ("/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/2") and cfg.mdns is True
    assert cfg.arena_size == 16 * 1024 * 1024 and cfg.hedge_after == 0.0 and cfg.log_format == "json"
    assert cfg.data_dir == tmp_path and cfg.genesis == Path("g.json")
    off = config.resolve(_flags(["--data-dir", str(tmp_path), "--no-mdns"]), {"INOS_MDNS": "1"})
    assert off.values["mdns"] is False


def test_file_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "node.toml"
    conf.parent.mkdir()
    conf.write_text('genesis = "genesis.json"\n')
    r = config.resolve(_flags(["--config", str(conf), "--data-dir", str(tmp_path)]), {})
    assert r.values["genesis"] == tmp_path / "etc" / "genesis.json"


@pytest.mark.parametrize(
    ("text", "key"),
    [("wrokers = 2\n", "wrokers"), ('workers = "two"\n', "workers"), ("arena_mb = 0\n", "arena_mb"),
     ('api = "nope"\n', "api"), ('prefer = "slowest"\n', "prefer"), ("mdns = 1\n", "mdns"),
     ('data_dir = "/x"\n', "data_dir"), ('listen = ["tcp/1"]\n', "listen")],
)
def test_bad_file_names_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        config.resolve({"data_dir": str(tmp_path)}, {})
    assert info.value.key == key
    assert str(tmp_path / "config.toml") in str(info.value) and key in str(info.value)


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [("INOS_WORKERS", "many", "an integer"), ("INOS_MDNS", "maybe", "yes/no"),
     ("INOS_LOG_LEVEL", "loud", "debug, info"), ("INOS_DEFAULT_TIMEOUT_S", "-1", "a number"),
     ("INOS_API_TOKEN", "short", "16 characters")],
)
def test_bad_env_names_variable_and_expectation(tmp_path: Path, var: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.resolve({"data_dir": str(tmp_path)}, {var: value})
    message = str(info.value)
    assert message.startswith(f"env {var}: ") and expected in message
    assert info.value.key == var.removeprefix("INOS_").lower()


def test_bad_file_syntax_and_missing_explicit_file(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("workers = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.resolve({"data_dir": str(tmp_path)}, {})
    with pytest.raises(ConfigError, match="no such file"):
        config.resolve({"data_dir": str(tmp_path)}, {"INOS_CONFIG": str(tmp_path / "absent.toml")})


def test_secrets_are_redacted(tmp_path: Path) -> None:
    r = config.resolve({"data_dir": str(tmp_path)}, {"INOS_API_TOKEN": "s3cret-token-0123456789"})
    assert r.values["api_token"] == "s3cret-token-0123456789"
    assert r.shown()["api_token"] == config.REDACTED
    assert "s3cret" not in repr(r.shown())
    assert [s.key for s in config.SETTINGS if s.secret] == ["api_token"]
    assert all(s.flag is None for s in config.SETTINGS if s.secret)  # never on a command line (ps shows it)


def test_every_setting_is_consistent() -> None:
    assert config.by_key("prefer").choices == decider.POLICIES
    for s in config.SETTINGS:
        assert s.env == "INOS_" + s.key.upper()
        if s.default is not None and s.kind != "path":
            assert config._coerce(s, s.default, "default", from_env=False) == s.default
