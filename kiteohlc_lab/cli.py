"""``kiteohlc-lab``: the command line.

Sub-commands::

    kiteohlc-lab collect SYMBOLS TF [TF ...] [--source kite|sim|replay] [--tape PATH] [--speed X]
    kiteohlc-lab sim [--ws-port N --http-port N --tape PATH ...]     (the Kite-protocol simulator)
    kiteohlc-lab status [--json]          running collectors: symbols, ticks/s, last tick age, health
    kiteohlc-lab history SYMBOL TF [--from T] [--to T] [--csv]
    kiteohlc-lab ticks [SYMBOLS] [--from T] [--to T] [--export PATH.parquet|PATH.csv]   the tick store
    kiteohlc-lab config                    effective configuration, secrets masked, with origins
    kiteohlc-lab serve [--host H] [--port N]   read-only HTTP API (key from $KITEOHLC_SERVE_API_KEY)

Every ``KiteOHLC`` option is a flag on every sub-command except ``sim`` (which takes the
simulator's own flags): ``--redis-url``, ``--data-dir``, ``--api-key``, ``--access-token`` ...
(``kiteohlc-lab config --help`` lists them). Where a value comes from, first match wins:

1. the flag;
2. the environment: ``KITEOHLC_<OPTION>`` (``KITEOHLC_REDIS_URL``), and for credentials also
   ``KITE_API_KEY`` / ``KITE_ACCESS_TOKEN`` / ``KITE_API_SECRET``;
3. a ``.env`` file in the current directory (same names);
4. the config file given with ``--config FILE``: TOML (``*.toml``; options at the top level or in a
   ``[kiteohlc]`` table) or JSON (``*.json``, one object), keys are option names
   (``redis_url = "redis://127.0.0.1:6379/0"``);
5. the default.

Bad input prints one line on stderr naming the problem and what is accepted, and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import SECRETS, KiteOHLC, from_sources, mask_url
from .errors import KiteOHLCError

PROG = "kiteohlc-lab"
COMMANDS = ("collect", "sim", "status", "history", "ticks", "config", "serve")


class UsageError(Exception):
    """Bad command-line input: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, no usage dump
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration (flag > env KITEOHLC_* > .env > --config file > default)")
    g.add_argument("--config", metavar="FILE", dest="config_file",
                   help="TOML or JSON file of options (keys are option names)")
    for name in KiteOHLC.option_names():
        trait = KiteOHLC.class_traits()[name]
        text = (trait.help or "").replace("%", "%%")
        g.add_argument(_flag(name), dest=name, default=None, metavar=name.upper(),
                       help=f"{text} [env {', '.join(_env_names(name))}]")


def _env_names(name: str) -> tuple[str, ...]:
    from .config import env_names

    return env_names(name)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="kiteohlc_lab: Kite ticks to OHLCV candles, headless.")
    sub = p.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}",
                           parser_class=_Parser)
    c = sub.add_parser("collect", help="stream instruments headless into the stores",
                       description="Stream SYMBOLS into Redis and the history store until SIGTERM/Ctrl-C.")
    c.add_argument("symbols", help="comma-separated symbols or tokens, e.g. NIFTY,RELIANCE")
    c.add_argument("timeframes", nargs="+", metavar="TF", help="timeframes, e.g. 10s 1m 5m 1h")
    c.add_argument("--source", choices=("kite", "sim", "replay"), default=None,
                   help="default: replay with --tape, kite with credentials, else sim")
    c.add_argument("--tape", default=None, help="CSV/Parquet tape for --source replay")
    c.add_argument("--from", dest="start", default=None,
                   help="--source replay without --tape: replay the tick store from this time (IST)")
    c.add_argument("--to", dest="end", default=None, help="... up to this time (exclusive)")
    c.add_argument("--no-warm-start", action="store_true",
                   help="start from now: no candles of the day so far (same as --warm-start off)")
    c.add_argument("--speed", type=float, default=1.0, help="replay speed factor (0: as fast as possible)")
    c.add_argument("--heartbeat", type=float, default=1.0, help="seconds between registry updates")
    c.add_argument("--lease-ttl", type=float, default=5.0, help="seconds an instrument lease lives")
    c.add_argument("--quiet", action="store_true", help="log to the file only, not stderr")
    c.add_argument("--reconcile", action="store_true",
                   help="check each closed minute against Kite's historical candle; record mismatches")
    c.add_argument("--reconcile-replace", action="store_true",
                   help="with --reconcile: replace mismatching candles by Kite's (source kept)")
    _add_options(c)
    sub.add_parser("sim", help="run the Kite-protocol simulator (kiteohlc-lab sim --help)", add_help=False)
    s = sub.add_parser("status", help="list running collectors")
    s.add_argument("--json", action="store_true", help="one JSON object per collector")
    _add_options(s)
    h = sub.add_parser("history", help="closed candles from the history store")
    h.add_argument("symbol")
    h.add_argument("timeframe", metavar="TF")
    h.add_argument("--from", dest="start", default=None, help="start (IST wall-clock unless zoned)")
    h.add_argument("--to", dest="end", default=None, help="end (exclusive)")
    h.add_argument("--csv", action="store_true", help="CSV on stdout")
    _add_options(h)
    from .cli_ticks import add_parser as add_ticks_parser

    add_ticks_parser(sub, _add_options)
    g = sub.add_parser("config", help="print the effective configuration and where each value came from")
    _add_options(g)
    v = sub.add_parser("serve", help="read-only HTTP API over candles and status (kiteohlc_lab.serve)")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8765)
    _add_options(v)
    return p


def read_config_file(path: str) -> dict[str, Any]:
    """Options from a TOML or JSON file (see the module docstring)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"--config {path}: no such file; give a .toml or .json file of options")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        elif p.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
            data = data.get("kiteohlc", data)
        else:
            raise UsageError(f"--config {path}: {p.suffix or 'no suffix'} is not accepted; use .toml or .json")
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"--config {path} is not valid {p.suffix[1:].upper()}: "
                         f"{str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a table/object of options")
    unknown = sorted(set(data) - set(KiteOHLC.option_names()))
    if unknown:
        raise UsageError(f"--config {path}: unknown option(s) {', '.join(unknown)}; accepted: "
                         f"{', '.join(KiteOHLC.option_names())}")
    return data


def config_from_args(args: argparse.Namespace, env: Any = None, dotenv: Any = None,
                     origins: dict[str, str] | None = None) -> KiteOHLC:
    flags = {n: getattr(args, n, None) for n in KiteOHLC.option_names()}
    cfg_file = read_config_file(args.config_file) if getattr(args, "config_file", None) else None
    return from_sources(flags, env=env, dotenv=dotenv, config_file=cfg_file, origins=origins)


def _shown(name: str, value: Any) -> str:
    if name in SECRETS:
        return "***" if value else "(not set)"
    if name in ("redis_url", "mongo_uri") and value:
        return mask_url(str(value))
    return json.dumps(value) if isinstance(value, dict) else str(value)


# ---------------------------------------------------------------------- commands
def cmd_config(args: argparse.Namespace) -> int:
    origins: dict[str, str] = {}
    cfg = config_from_args(args, origins=origins)
    width = max(len(n) for n in KiteOHLC.option_names())
    for name in KiteOHLC.option_names():
        print(f"{name:<{width}} = {_shown(name, getattr(cfg, name)):<40} ({origins.get(name, 'default')})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .collector import list_collectors

    cfg = config_from_args(args)
    entries = list_collectors(cfg)
    if args.json:
        for e in entries:
            print(json.dumps(e))
        return 0
    if not entries:
        print("no collector running")
        return 0
    print(f"{'COLLECTOR':<24} {'SOURCE':<7} {'TICKS/S':>8} {'AGE':>6}  {'STARTED':<25} SYMBOLS / TFS / HEALTH")
    for e in entries:
        age = "-" if e.get("last_tick_age") is None else f"{e['last_tick_age']:.1f}s"
        print(f"{e['id']:<24} {e.get('source', '?'):<7} {e.get('ticks_per_s', 0):>8} {age:>6}  "
              f"{e.get('started', ''):<25} {','.join(e.get('symbols', []))} "
              f"{' '.join(e.get('tfs', []))}  {e.get('health', '?')}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from .core.timeframes import parse_timeframe
    from .runtime import Manager

    cfg = config_from_args(args)
    tf = parse_timeframe(args.timeframe).label
    m = Manager(cfg)
    try:
        symbol: Any = args.symbol
        if symbol.isdigit():
            symbol = int(symbol)
        else:
            try:
                from .attach import published_tokens

                symbol = published_tokens(m.stores()[0], [symbol]).get(symbol.upper(), symbol)
            except Exception:  # noqa: BLE001 - Redis away: resolve locally
                pass
        df = m.history(symbol, tf, args.start, args.end)
        if args.csv:
            df.to_csv(sys.stdout)
        elif len(df):
            print(df.to_string())
        else:
            print(f"no {tf} candles of {args.symbol} in the history store", file=sys.stderr)
    finally:
        m.shutdown()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import main as serve_main

    serve_main(config_from_args(args), host=args.host, port=args.port)
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from .collector import Collector, setup_logging
    from .core.timeframes import parse_timeframe
    from .feeds.auth import guard_logging
    from .runtime import split_symbols

    cfg = config_from_args(args)
    if args.no_warm_start:
        cfg.warm_start = "off"
    split_symbols(args.symbols)
    tfs = [parse_timeframe(t).label for t in args.timeframes]
    if args.speed < 0:
        raise UsageError(f"--speed {args.speed} is not accepted; use 0 (as fast as possible) or a positive factor")
    if args.heartbeat <= 0 or args.lease_ttl <= 0:
        raise UsageError("--heartbeat and --lease-ttl take a positive number of seconds")
    from .runtime.tickreplay import wants_store

    wants_store(args.source, args.tape, args.start, args.end)  # a tape, or a range of the tick store
    guard_logging(cfg.access_token, cfg.api_secret)
    setup_logging(cfg.data_dir, stderr=not args.quiet)
    col = Collector(cfg, args.symbols, tfs, source=args.source, tape=args.tape, speed=args.speed,
                    heartbeat=args.heartbeat, lease_ttl=args.lease_ttl,
                    reconcile=args.reconcile or args.reconcile_replace,
                    reconcile_replace=args.reconcile_replace, start=args.start, end=args.end)
    return col.run()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kiteohlc-lab``; returns the exit code (2 for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "sim":
        from .feeds.simulator import main as sim_main

        try:
            return sim_main(argv[1:])
        except SystemExit as exc:
            return int(exc.code or 0)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not args.command:
            raise UsageError(f"{PROG}: a command is needed: {', '.join(COMMANDS)} (see {PROG} --help)")
        from .cli_ticks import cmd_ticks

        return {"collect": cmd_collect, "status": cmd_status, "history": cmd_history,
                "ticks": lambda a: cmd_ticks(a, config_from_args(a)),
                "config": cmd_config, "serve": cmd_serve}[args.command](args)
    except SystemExit as exc:  # --help
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KiteOHLCError as exc:
        print(f"{PROG}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
