"""IPython magics: ``%ohlc_stream``, ``%ohlc_stop``, ``%ohlc_status``, ``%ohlc_plot``, ``%ohlc_history``,
``%ohlc_chart``
(``%ohlc_reconcile`` lives in ``reconcile_magic``).

Each magic parses its arguments and calls the core's ``Manager``; nothing here knows about ticks or
candles. Bad arguments and every ``KiteOHLCError`` become a one-line ``UsageError`` (no traceback).
A stream that fails in its background thread shows in ``%ohlc_status`` and, once, as a warning after
the next cell that runs.
"""

from __future__ import annotations

import atexit
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from ..config import KiteOHLC
from . import get_manager, prewarm

from .args import MODES, SOURCES, friendly
from .args import one_line as _one_line
from .args import speed as _speed
from .args import symbols as _symbols
from .args import when as _when
from .progress import progress_bar
from .status import StatusTable  # noqa: F401 - %ohlc_status's result (tests import it from here)

@magics_class
class KiteOHLCMagics(Magics):
    """Magics of kiteohlc_lab; ``%ohlc_stream?`` etc. show each one's arguments."""

    def __init__(self, shell: Any, cfg: KiteOHLC) -> None:
        super().__init__(shell)
        self.cfg = cfg
        self._configured = False
        self._seen_errors: dict[str, str] = {}
        self._error_index = 0

    @property
    def manager(self) -> Any:
        m = get_manager()
        if not self._configured:
            m.configure(self.cfg)
            self._configured = True
        return m

    # -- %ohlc_stream
    @magic_arguments()
    @argument("symbols", help="Comma-separated symbols: NIFTY, NSE:RELIANCE, BANKNIFTY, or a token.")
    @argument("timeframes", nargs="+", metavar="TF", help="Timeframes, e.g. 1m 5m 15m 1h 1d 10s.")
    @argument("--source", choices=SOURCES, default=None,
              help="Where ticks come from (default: kite with credentials, else the simulator).")
    @argument("--tape", default=None, help="Tape file (CSV/Parquet) for --source replay.")
    @argument("--speed", type=_speed, default=0.0,
              help="Replay speed factor: 0 = as fast as possible, 1 = real time, 60 = a minute per second.")
    @argument("--mode", choices=MODES, default=None, help="Kite subscription mode (default KiteOHLC.mode).")
    @argument("--backfill", default=None,
              help="Load Kite's history first: 5d (the last 5 weekdays), 6h (hours of weekdays) "
                   "or 2w (calendar weeks).")
    @argument("--record", default=None, help="Record received ticks to this tape file.")
    @argument("--from", dest="start", default=None,
              help="--source replay without --tape: replay the tick store from this time (IST).")
    @argument("--to", dest="end", default=None, help="... up to this time (exclusive).")
    @argument("--no-warm-start", action="store_true",
              help="Start from now: no candles of the day so far (KiteOHLC.warm_start).")
    @line_magic
    @friendly
    def ohlc_stream(self, line: str) -> Any:
        """Stream SYMBOLS and build candles for each TF in a background thread.

        Returns a live DataFrame-like object (``LiveCandles``) for the first symbol and timeframe.
        """
        args = parse_argstring(self.ohlc_stream, line)
        symbols = _symbols(args.symbols)
        m = get_manager()
        m.configure(self.cfg)  # %config changes take effect at each new stream
        self._configured = True
        from ..runtime.tickreplay import start_from_store, wants_store

        start, end = (None if v is None else v.strip("\"'") for v in (args.start, args.end))  # quoted
        store = wants_store(args.source, args.tape, start, end)  # a range of the tick store
        if not args.tape and args.source not in ("replay", "redis"):
            prewarm.wait(None)  # a Kite or simulator feed: kiteconnect's imports, made by %load_ext's thread
        warm = m.cfg.warm_start
        if args.no_warm_start:  # for this start only (decided while it runs)
            m.cfg.warm_start = "off"
        try:
            if store:
                info = start_from_store(m, symbols, list(args.timeframes), start, end, args.speed)
            else:
                info = m.start(symbols, list(args.timeframes), source=args.source, tape=args.tape,
                               speed=args.speed, mode=args.mode, backfill=args.backfill, record=args.record,
                               progress=progress_bar("backfill") if args.backfill else None)
        finally:
            m.cfg.warm_start = warm
        if getattr(info, "message", ""):
            print(" ".join(str(info.message).split()))
        from .progress import show_replay_progress

        show_replay_progress(m.streams.get(getattr(info, "name", None)))  # a big replay: ticks/s, ETA
        from .live import LiveCandles

        tf = (getattr(info, "timeframes", None) or args.timeframes)[0]
        symbol = symbols[0]
        if symbol.upper() in ("ALL", "*"):  # every instrument of a tape: the first one it streams
            streamed = getattr(info, "instruments", None) or []
            if not streamed:
                return None
            symbol = streamed[0][0]
        return LiveCandles(symbol, tf, manager=m)

    # -- %ohlc_stop
    @magic_arguments()
    @argument("symbols", nargs="?", default=None,
              help="Comma-separated symbols whose streams to stop (default: every stream).")
    @line_magic
    @friendly
    def ohlc_stop(self, line: str) -> None:
        """Stop streams (all, or those carrying SYMBOLS); stores are flushed, history stays."""
        args = parse_argstring(self.ohlc_stop, line)
        symbols = _symbols(args.symbols) if args.symbols else None
        stopped = self.manager.stop(symbols)
        print(f"Stopped: {', '.join(stopped)}" if stopped else "No stream was running.")

    # -- %ohlc_status
    @magic_arguments()
    @line_magic
    @friendly
    def ohlc_status(self, line: str) -> StatusTable:
        """Streams: source, state, ticks/s, last tick age, reconnects, late ticks, store health."""
        parse_argstring(self.ohlc_status, line)
        m = self.manager
        rows = m.status()
        for r in rows:  # shown here: not repeated as a warning
            if r.get("error"):
                self._seen_errors[str(r.get("stream"))] = str(r["error"])
        log = getattr(m, "errors", None)
        if isinstance(log, list):  # a bounded log counts every entry in ``total``
            self._error_index = getattr(log, "total", len(log))
        return StatusTable(rows)

    # -- %ohlc_plot
    @magic_arguments()
    @argument("symbol", help="Symbol, e.g. NIFTY.")
    @argument("tf", metavar="TF", help="Timeframe, e.g. 5m.")
    @argument("--last", type=int, default=100, help="Number of candles (default 100).")
    @argument("--live", action="store_true", help="An auto-refreshing widget instead of a static chart.")
    @line_magic
    @friendly
    def ohlc_plot(self, line: str) -> Any:
        """Candlestick + volume chart (mplfinance) of SYMBOL TF; ``--live`` keeps it refreshing."""
        args = parse_argstring(self.ohlc_plot, line)
        if args.last <= 0:
            raise UsageError(f"--last {args.last} is not accepted; use a positive number of candles")
        m = self.manager
        if args.live:
            from .widgets import LiveView

            return LiveView(args.symbol, args.tf, last=args.last, refresh=self.cfg.refresh_interval,
                            manager=m)
        from .plots import plot_candles

        df = m.candles(args.symbol, args.tf)
        return plot_candles(df, last=args.last, title=f"{args.symbol} {args.tf}")

    # -- %ohlc_chart
    @magic_arguments()
    @argument("symbol", help="Symbol, e.g. NIFTY.")
    @argument("tf", metavar="TF", help="Timeframe, e.g. 1m.")
    @argument("--rate", type=float, default=None, help="Most updates per second sent (default 10).")
    @argument("--height", type=int, default=420, help="Height in pixels (default 420).")
    @line_magic
    @friendly
    def ohlc_chart(self, line: str) -> Any:
        """Interactive live candlestick + volume chart of SYMBOL TF (zoom, pan, crosshair)."""
        args = parse_argstring(self.ohlc_chart, line)
        if args.rate is not None and not args.rate > 0:
            raise UsageError(f"--rate {args.rate:g} is not accepted; use a positive number per second")
        from .chart import LiveChart

        return LiveChart(args.symbol, args.tf, manager=self.manager, rate=args.rate, height=args.height)

    # -- %ohlc_history
    @magic_arguments()
    @argument("symbol", help="Symbol, e.g. NIFTY.")
    @argument("tf", metavar="TF", help="Timeframe, e.g. 5m.")
    @argument("--from", dest="start", type=_when, default=None,
              help="First candle start (IST if no zone), e.g. 2024-05-02 or '2024-05-02 09:15'.")
    @argument("--to", dest="end", type=_when, default=None, help="Last candle start (IST if no zone).")
    @line_magic
    @friendly
    def ohlc_history(self, line: str) -> Any:
        """Stored candles of SYMBOL TF (no stream needed), as a DataFrame."""
        args = parse_argstring(self.ohlc_history, line)
        return self.manager.history(args.symbol, args.tf, start=args.start, end=args.end)

    # -- background failures, surfaced once
    def check_errors(self, *_: Any) -> list[str]:
        """After each cell: ONE warning line if a stream failed since (also shown in %ohlc_status).

        Reads the Manager's error log (a list, no I/O); a manager without one is asked for status().
        """
        if not self._configured:
            return []
        m = get_manager()
        new: list[tuple[str, str]] = []
        log = getattr(m, "errors", None)
        if isinstance(log, list):
            if hasattr(log, "since"):  # bounded (core.bounded.ErrorLog): the last N, total counted
                fresh, self._error_index = log.since(self._error_index)
            else:
                fresh, self._error_index = log[self._error_index:], len(log)
            new = [(str(n), str(e)) for n, e in fresh]
        else:
            try:
                rows = m.status()
            except Exception:
                return []
            for r in rows:
                err, name = r.get("error"), str(r.get("stream"))
                if err and self._seen_errors.get(name) != str(err):
                    self._seen_errors[name] = str(err)
                    new.append((name, str(err)))
        if not new:
            return []
        name, err = new[0]
        more = f" (+{len(new) - 1} more)" if len(new) > 1 else ""
        msg = (f"kiteohlc_lab: stream {name} failed: {_one_line(Exception(err))}{more}; "
               "see %ohlc_status")
        print(msg, file=sys.stderr)
        return [msg]


# -- extension entry points
_STATE: dict[str, Any] = {}


def _register_figure_png(ip: Any) -> None:
    """Show matplotlib Figures as PNG even when pyplot/the inline backend was never set up."""
    fmt = getattr(getattr(ip, "display_formatter", None), "formatters", {}).get("image/png")
    if fmt is None:
        return
    if fmt.for_type_by_name("matplotlib.figure", "Figure") is None:
        def _png(fig: Any) -> bytes:
            from .plots import png_bytes

            return png_bytes(fig)

        fmt.for_type_by_name("matplotlib.figure", "Figure", _png)


def shutdown(forget: bool = False) -> None:
    """Close live views, stop every stream, flush stores; ``forget`` also drops the Manager.

    ``%unload_ext`` forgets (the next ``%load_ext`` starts clean, history comes back from the store);
    interpreter exit only shuts down.
    """
    for views in ("kiteohlc_lab.notebook.widgets", "kiteohlc_lab.notebook.chart"):
        if views in sys.modules:  # not imported: no view of that kind was made
            try:
                sys.modules[views].close_all()
            except Exception:
                pass
    from . import _override

    if _override is None and "kiteohlc_lab.api" not in sys.modules:
        return  # no manager was ever made: nothing to stop
    try:
        if _override is None and forget:
            from ..current import reset

            reset()
        else:
            get_manager().shutdown()
    except Exception as exc:
        print(f"kiteohlc_lab: shutdown: {_one_line(exc)}", file=sys.stderr)


def load_ipython_extension(ip: Any) -> None:
    """``%load_ext kiteohlc_lab``: config object, magics, error hook, exit hook."""
    if _STATE.get("shell") is ip:
        return
    cfg = KiteOHLC(config=ip.config)
    if not any(isinstance(c, KiteOHLC) for c in ip.configurables):
        ip.configurables.append(cfg)
    else:
        cfg = next(c for c in ip.configurables if isinstance(c, KiteOHLC))
    magics = KiteOHLCMagics(ip, cfg)
    ip.register_magics(magics)
    from .reconcile_magic import ReconcileMagics

    ip.register_magics(ReconcileMagics(ip, magics))
    ip.events.register("post_run_cell", magics.check_errors)
    _register_figure_png(ip)
    prewarm.start()
    if not _STATE.get("atexit"):
        atexit.register(shutdown)
        _STATE["atexit"] = True
    _STATE.update(shell=ip, magics=magics, cfg=cfg)


def unload_ipython_extension(ip: Any) -> None:
    """``%unload_ext kiteohlc_lab``: stop streams and views, flush stores, remove the hooks."""
    magics = _STATE.pop("magics", None)
    cfg = _STATE.pop("cfg", None)
    _STATE.pop("shell", None)
    if magics is not None:
        try:
            ip.events.unregister("post_run_cell", magics.check_errors)
        except ValueError:
            pass
        for name in ("ohlc_stream", "ohlc_stop", "ohlc_status", "ohlc_plot", "ohlc_history",
                     "ohlc_reconcile", "ohlc_chart"):
            ip.magics_manager.magics["line"].pop(name, None)
    if cfg is not None and cfg in ip.configurables:
        ip.configurables.remove(cfg)
    shutdown(forget=True)
