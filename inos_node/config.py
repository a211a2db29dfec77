"""A node's settings: one table, four sources, one precedence.

    flag (--listen)  >  environment (INOS_LISTEN)  >  config file (listen = [...])  >  default

``SETTINGS`` is the single list of what an operator can set.  Each ``Setting`` names its key
(the TOML key), its type, default and help, its environment variable (``INOS_`` + the key in
upper case) and its command-line flag; ``secret`` settings are never printed.  The same table
builds the flags of ``inos node run`` and ``inos config show`` (``add_flags``), parses the
environment and the file, and produces the ``DaemonConfig`` the node runs with.

Where the file is: ``--config FILE``, else ``$INOS_CONFIG``, else ``DATA_DIR/config.toml`` if it
exists.  It is flat TOML with the keys below (``inos config show`` lists them)::

    listen = ["/ip4/0.0.0.0/tcp/4001"]
    bootstrap = ["/ip4/10.0.0.2/tcp/4001/p2p/12D3KooW..."]
    api = "127.0.0.1:5050"
    workers = 2
    log_format = "json"

``data_dir`` cannot be set in the file (it is where the file is looked for).  Relative paths in
the file (``genesis``) are taken relative to the file's folder.  In the environment, lists are
comma-separated and booleans are 1/0, true/false, yes/no or on/off.

Rules:
  1. Every value passes the same check whatever its source; a bad one is a ``ConfigError`` that
     names the key, the source (flag, environment variable or file path) and what is expected.
  2. An unknown key in the file is an error (a typo must not be silently ignored); unknown
     ``INOS_*`` variables are not (clients and tests read some of their own).
  3. ``resolve`` reads the file and nothing else; it never creates anything.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inos_node.errors import ConfigError

__all__ = ["SETTINGS", "Resolved", "Setting", "add_flags", "by_key", "flag_values", "resolve"]

REDACTED = "<redacted>"
MIB = 1024 * 1024
PRECEDENCE_HELP = """\
configuration (see `inos config show`): every flag above has an environment variable INOS_<KEY>
(e.g. --arena-mb: INOS_ARENA_MB) and a key in the TOML file (arena_mb = 64).  Precedence:
  flags > environment > config file (--config FILE, $INOS_CONFIG, else DATA_DIR/config.toml) > defaults
"""


def _api_check(value: str) -> str | None:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        return "HOST:PORT (e.g. 127.0.0.1:5050)"
    return None


def _multiaddr_check(value: str) -> str | None:
    return None if value.startswith("/") else "multiaddrs like /ip4/127.0.0.1/tcp/4001"


def _token_check(value: str) -> str | None:
    return None if len(value) >= 16 and value.isprintable() and " " not in value \
        else "a printable token of at least 16 characters without spaces"


@dataclass(frozen=True, slots=True)
class Setting:
    """One operator setting.  ``kind``: str, int, float, bool, list (of str) or path."""

    key: str
    kind: str
    default: Any
    help: str
    flag: str | None = None  # None: environment and file only (secrets never go on a command line)
    secret: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    check: Callable[[str], str | None] | None = None  # per string: None, or what is expected
    in_file: bool = True
    metavar: str | None = None

    @property
    def env(self) -> str:
        return "INOS_" + self.key.upper()

    def expected(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        bounds = ""
        if self.minimum is not None and self.maximum is not None:
            bounds = f" in [{_bound(self.minimum)}, {_bound(self.maximum)}]"
        elif self.minimum is not None:
            bounds = f" >= {_bound(self.minimum)}"
        return {"int": "an integer", "float": "a number", "bool": "true or false", "path": "a file path",
                "list": "a list of strings (env: comma-separated)", "str": "a string"}[self.kind] + bounds


_POLICIES = ("local", "remote", "fastest", "cheapest")  # == protocols.decider.POLICIES (a test checks)

SETTINGS: tuple[Setting, ...] = (
    Setting("data_dir", "path", "~/.inos", "identity, token, lock and config.toml live here",
            "--data-dir", in_file=False, metavar="DIR"),
    Setting("listen", "list", ("/ip4/0.0.0.0/tcp/4001",), "libp2p listen address, repeatable", "--listen",
            check=_multiaddr_check, metavar="MULTIADDR"),
    Setting("announce", "list", (), "address to tell peers (default: the listen addresses), repeatable",
            "--announce", check=_multiaddr_check, metavar="MULTIADDR"),
    Setting("bootstrap", "list", (), "a peer to join through: /ip4/.../tcp/.../p2p/<peer id>, repeatable",
            "--bootstrap", check=_multiaddr_check, metavar="MULTIADDR"),
    Setting("api", "str", "127.0.0.1:5050", "control API address", "--api", check=_api_check,
            metavar="HOST:PORT"),
    Setting("api_token", "str", None, "the control API token (default: DATA_DIR/api.token, created on "
            "first run); if set, the node writes it to DATA_DIR/api.token (0600) and uses it", secret=True,
            check=_token_check),
    Setting("name", "str", None, "a human name for this node (default: the data dir's name)", "--name"),
    Setting("prefer", "str", "fastest", "default placement policy for submitted capsules", "--prefer",
            choices=_POLICIES),
    Setting("workers", "int", 1, "worker processes for CPU-bound capsules", "--workers",
            minimum=0, maximum=256),
    Setting("arena_mb", "int", 64, "shared arena size in MiB", "--arena-mb", minimum=1, maximum=65536),
    Setting("max_jobs", "int", 64, "jobs running at once on this node", "--max-jobs",
            minimum=1, maximum=100_000),
    Setting("default_timeout_s", "float", 60.0, "deadline of a job that asks for none, in seconds",
            "--default-timeout-s", minimum=0.001),
    Setting("advert_interval_s", "float", 5.0, "seconds between this node's gossip adverts",
            "--advert-interval-s", minimum=0.05),
    Setting("hedge_after", "float", 0.5, "fraction of a job's time after which a silent peer gets a backup "
            "(0: never)", "--hedge-after", minimum=0.0, maximum=1.0),
    Setting("verify_sample", "float", 0.0, "probability of re-running a remote result locally before paying "
            "for it (deterministic capsules this node serves; a mismatch is not paid)", "--verify-sample",
            minimum=0.0, maximum=1.0),
    Setting("escrow_credit", "int", 100, "paid networks, as a worker: a requester whose escrow this node "
            "already checked may have one more job of up to this many credits answered before its lock is "
            "checked (the check follows the answer; a lock that fails it loses the requester that trust; "
            "0: every lock is checked before the job runs)", "--escrow-credit", minimum=0, maximum=10**12),
    Setting("mdns", "bool", False, "also discover peers with mDNS", "--mdns"),
    Setting("genesis", "path", None, "a genesis file: join its paid network (default: the free dev "
            "network, no ledger)", "--genesis", metavar="FILE"),
    Setting("log_format", "str", "text", "log lines on stderr: readable text or one JSON object per line",
            "--log-format", choices=("text", "json")),
    Setting("log_level", "str", "info", "log verbosity", "--log-level",
            choices=("debug", "info", "warning", "error")),
)

_BY_KEY = {s.key: s for s in SETTINGS}
# argparse dests are prefixed: `inos --log-level` (all commands) must not collide with `node run --log-level`
_DEST = "setting_"


def by_key(key: str) -> Setting:
    return _BY_KEY[key]


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add a flag for every setting that has one (and ``--config``), all defaulting to None."""
    for s in SETTINGS:
        if s.flag is None:
            continue
        default = "" if s.default in (None, ()) else f" (default {_show(s, s.default)})"
        kw: dict[str, Any] = {"dest": _DEST + s.key, "default": None,
                              "help": s.help + default + f"; ${s.env}"}
        if s.kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["metavar"] = s.metavar or ("{" + ",".join(s.choices) + "}" if s.choices else s.kind.upper())
            if s.kind == "list":
                kw["action"] = "append"
            elif s.kind in ("int", "float"):
                kw["type"] = int if s.kind == "int" else float
        parser.add_argument(s.flag, **kw)
    parser.add_argument("--config", metavar="FILE", dest=_DEST + "config",
                        help="a TOML file of these settings (default $INOS_CONFIG, "
                             "else DATA_DIR/config.toml)")


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags in ``args`` (parsed with ``add_flags``), by key, plus "config"."""
    ns = vars(args)
    out = {s.key: ns.get(_DEST + s.key) for s in SETTINGS}
    out["config"] = ns.get(_DEST + "config")
    return out


def _bound(x: float) -> str:
    """A setting's bound as written: an int in digits (10**12, not 1e+12), a float short."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def _show(s: Setting, value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(value) or "none"
    return str(value)


def _bad(s: Setting, where: str, value: Any, expected: str | None = None) -> ConfigError:
    return ConfigError(f"{where}: {s.key} must be {expected or s.expected()}, got {value!r}", key=s.key)


def _coerce(s: Setting, raw: Any, where: str, *, from_env: bool, base: Path | None = None) -> Any:
    """Turn ``raw`` (a string from the environment, a TOML value or a parsed flag) into the
    setting's type, checking it; ``base`` resolves relative paths from a file."""
    value: Any = raw
    if s.kind == "bool":
        if from_env:
            low = raw.strip().lower()
            if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise _bad(s, where, raw, "1/0, true/false, yes/no or on/off")
            value = low in ("1", "true", "yes", "on")
        elif not isinstance(raw, bool):
            raise _bad(s, where, raw)
    elif s.kind in ("int", "float"):
        if from_env:
            try:
                value = int(raw) if s.kind == "int" else float(raw)
            except ValueError:
                raise _bad(s, where, raw) from None
        elif isinstance(raw, bool) or not isinstance(raw, int if s.kind == "int" else int | float):
            raise _bad(s, where, raw)
        value = float(value) if s.kind == "float" else value
        if (s.minimum is not None and value < s.minimum) or (s.maximum is not None and value > s.maximum):
            raise _bad(s, where, raw)
    elif s.kind == "list":
        if from_env:
            value = tuple(p.strip() for p in raw.split(",") if p.strip())
        elif isinstance(raw, str):
            value = (raw,)
        elif isinstance(raw, list | tuple) and all(isinstance(v, str) for v in raw):
            value = tuple(raw)
        else:
            raise _bad(s, where, raw)
    elif s.kind == "path":
        if not isinstance(raw, str | os.PathLike) or not str(raw):
            raise _bad(s, where, raw)
        value = Path(raw).expanduser()
        if base is not None and not value.is_absolute():
            value = base / value
    else:
        if not isinstance(raw, str):
            raise _bad(s, where, raw)
        if s.choices and raw not in s.choices:
            raise _bad(s, where, raw)
    if s.check is not None:
        for item in value if s.kind == "list" else (value,):
            expected = s.check(item)
            if expected:
                raise _bad(s, where, item, expected)
    return value


@dataclass(frozen=True)
class Resolved:
    """The effective settings: ``values[key]`` and where each came from, ``sources[key]``
    ("flag --x", "env INOS_X", "file PATH", "default")."""

    values: dict[str, Any]
    sources: dict[str, str]
    config_file: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return Path(self.values["data_dir"])

    def shown(self) -> dict[str, Any]:
        """Values fit to print: paths as strings, lists as lists, secrets redacted."""
        out: dict[str, Any] = {}
        for s in SETTINGS:
            v = self.values[s.key]
            if s.secret and v is not None:
                v = REDACTED
            elif isinstance(v, Path):
                v = str(v)
            elif isinstance(v, tuple):
                v = list(v)
            out[s.key] = v
        return out

    def daemon_config(self, **overrides: Any) -> Any:
        """The ``DaemonConfig`` these settings describe (``overrides``: test-only fields)."""
        from inos_node.daemon import DaemonConfig

        v = self.values
        return DaemonConfig(
            data_dir=self.data_dir, listen=v["listen"], announce=v["announce"], bootstrap=v["bootstrap"],
            api=v["api"], name=v["name"], prefer=v["prefer"], process_workers=v["workers"],
            max_jobs=v["max_jobs"], default_timeout_s=v["default_timeout_s"], mdns=v["mdns"],
            advert_interval_s=v["advert_interval_s"], arena_size=v["arena_mb"] * MIB,
            hedge_after=v["hedge_after"], genesis=v["genesis"], log_format=v["log_format"],
            verify_sample=v["verify_sample"], escrow_credit=v["escrow_credit"], **overrides,
        )


def _read_file(path: Path, explicit: str) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{explicit} {path}: no such file", key="config") from None
    except OSError as exc:
        raise ConfigError(f"{explicit} {path}: cannot read it: {exc.strerror}", key="config") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", key="config") from None
    for key in doc:
        s = _BY_KEY.get(key)
        if s is None:
            known = ", ".join(x.key for x in SETTINGS if x.in_file)
            raise ConfigError(f"{path}: unknown key {key!r}; the keys are: {known}", key=key)
        if not s.in_file:
            raise ConfigError(f"{path}: {key} cannot be set in the config file (use {s.flag} or ${s.env})",
                              key=key)
    return doc


def resolve(flags: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Resolved:
    """The effective settings from parsed flags (``vars(args)``: None or [] means "not given";
    ``flags["config"]`` is --config), the environment and the config file.

    Raises:
        ConfigError: an unknown key in the file, a bad value from any source, or a config file
            that was asked for and cannot be read; the message names the key and the source.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def given(key: str) -> Any:
        v = flags.get(key)
        return None if v in (None, []) else v

    def from_flag_or_env(s: Setting) -> bool:
        if given(s.key) is not None:
            values[s.key] = _coerce(s, given(s.key), f"flag {s.flag}", from_env=False)
            sources[s.key] = f"flag {s.flag}"
            return True
        if env.get(s.env):
            values[s.key] = _coerce(s, env[s.env], f"env {s.env}", from_env=True)
            sources[s.key] = f"env {s.env}"
            return True
        return False

    dd = _BY_KEY["data_dir"]
    if not from_flag_or_env(dd):
        values["data_dir"], sources["data_dir"] = Path(dd.default).expanduser(), "default"

    if given("config"):
        path, explicit = Path(given("config")).expanduser(), "--config"
    elif env.get("INOS_CONFIG"):
        path, explicit = Path(env["INOS_CONFIG"]).expanduser(), "INOS_CONFIG"
    else:
        path, explicit = values["data_dir"] / "config.toml", ""
    config_file: Path | None = path
    doc: dict[str, Any] = {}
    if explicit or path.exists():
        doc = _read_file(path, explicit or "config file")
    else:
        config_file = None

    for s in SETTINGS:
        if s.key == "data_dir" or from_flag_or_env(s):
            continue
        if s.key in doc:
            values[s.key] = _coerce(s, doc[s.key], str(path), from_env=False, base=path.parent)
            sources[s.key] = f"file {path}"
        else:
            values[s.key], sources[s.key] = s.default, "default"
    if values["name"] is None:
        values["name"], sources["name"] = values["data_dir"].name, "default (the data dir's name)"
    return Resolved(values, sources, config_file)
