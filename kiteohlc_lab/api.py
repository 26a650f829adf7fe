"""The Python API: ``kiteohlc_lab.candles()``, ``wait()``, ``status()`` ... over one process-wide Manager."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable


if TYPE_CHECKING:  # pandas loads where a frame is made: a replay never needs it
    import pandas as pd

from . import current
from .runtime import Manager, StreamInfo


def manager() -> Manager:
    """The process-wide Manager (created on first use, shut down at exit)."""
    return current.manager()


def reset() -> None:
    """Shut the current Manager down and forget it (tests, ``%unload_ext``)."""
    current.reset()


def stream(symbols: str | list[str], *timeframes: str, source: str | None = None, tape: str | None = None,
           speed: float = 0.0, mode: str | None = None, backfill: str | None = None,
           record: str | None = None, start: Any = None, end: Any = None) -> StreamInfo:
    """Start streaming ``symbols`` at ``timeframes`` (what ``%ohlc_stream`` does).

    ``source="replay"`` with ``start``/``end`` and no ``tape`` replays that range of the tick store.
    ``backfill="5d"`` first loads Kite's candles of the last five weekdays (``Nd`` and ``Nh`` count
    weekday time, ``Nw`` calendar weeks: ``feeds.historical.span_start``).

    >>> kiteohlc_lab.stream("NIFTY,BANKNIFTY", "1m", "5m")   # doctest: +SKIP
    >>> kiteohlc_lab.stream("NIFTY", "10s", source="replay", start="2026-11-25 09:15")  # doctest: +SKIP
    """
    tfs: list[str] = []
    for t in timeframes:
        tfs.extend([t] if isinstance(t, str) else list(t))
    from .runtime.tickreplay import start_from_store, wants_store

    if wants_store(source, tape, start, end):
        return start_from_store(manager(), symbols, tfs, start, end, speed)
    return manager().start(symbols, tfs, source=source, tape=tape, speed=speed, mode=mode,
                           backfill=backfill, record=record)


def stop(symbols: str | list[str] | None = None) -> list[str]:
    """Stop all streams, or the given symbols."""
    return manager().stop(symbols)


def candles(symbol: str | int, tf: str, closed_only: bool = False, start: Any = None, end: Any = None,
            frame: str = "pandas") -> Any:
    """Candles of ``symbol`` at ``tf``: index ``date`` (tz-aware Asia/Kolkata, candle start), columns
    ``open high low close volume`` (+ ``oi`` where the feed has it). History from earlier sessions is
    included; the last row may be the forming candle (``df.attrs['forming']`` gives its date) unless
    ``closed_only``. ``start``/``end`` bound the dates (naive values are IST). ``frame="polars"`` or
    ``"arrow"`` returns a polars DataFrame / pyarrow Table (``date`` the first column).
    """
    from .tickapi import check_frame, convert

    check_frame(frame)
    return convert(manager().candles(symbol, tf, closed_only=closed_only, start=start, end=end), frame)


def history(symbol: str | int, tf: str, start: Any = None, end: Any = None, frame: str = "pandas") -> Any:
    """Closed candles from the history store, without a running stream (``frame=`` as ``candles``)."""
    from .tickapi import check_frame, convert

    check_frame(frame)
    return convert(manager().history(symbol, tf, start=start, end=end), frame)


def ticks(symbols: Any = None, start: Any = None, end: Any = None, columns: list[str] | None = None,
          frame: str = "pandas") -> Any:
    """The recorded ticks of ``symbols`` (all when None) with exchange time in ``[start, end)``
    (naive values are IST; integers are epoch ns), from the tick store (``KiteOHLC.record_ticks``,
    ``tick_store``).

    pandas: index ``exchange_time`` (tz-aware Asia/Kolkata), columns ``token receive_time last_price
    volume oi bid ask bid_qty ask_qty`` (``columns=`` picks some; the top of the book is NaN where a
    tick carried no depth: ltp/quote mode, indices); rows in the order the live stream processed them.
    ``frame="polars"`` / ``"arrow"``: the same with ``exchange_time`` as the first column.

    >>> kiteohlc_lab.ticks("NIFTY", "2026-11-25 10:00", "2026-11-25 10:05")   # doctest: +SKIP
    """
    from .tickapi import ticks as _ticks

    return _ticks(manager(), symbols, start, end, columns=columns, frame=frame)


def wait(timeout: float | None = None) -> bool:
    """Block until every replay stream is consumed; False if ``timeout`` seconds passed first."""
    return manager().wait(timeout)


def status() -> list[dict]:
    """One dict per stream: source, state, ticks/s, last tick age, reconnects, store health, error."""
    return manager().status()


def on_candle(symbol: str | int, tf: str, fn: Callable | None = None) -> Any:
    """Call ``fn(candle)`` for each closed candle; usable as a decorator. Returns an unsubscribe."""
    if fn is None:
        def deco(f: Callable) -> Callable:
            manager().on_candle(symbol, tf, f)
            return f

        return deco
    return manager().on_candle(symbol, tf, fn)


def live(symbol: str | int, tf: str) -> Any:
    """A ``LiveCandles`` object: ``.df`` is always the current frame."""
    from .notebook.live import LiveCandles

    return LiveCandles(symbol, tf)


def reconcile(symbol: str | int, tf: str = "1m", start: Any = None, end: Any = None, *,
              volume_tolerance: float = 0.02, **kw: Any) -> pd.DataFrame:
    """Tick-built candles next to Kite's historical ones (``open_live``/``open_kite`` ...,
    ``match``); see ``kiteohlc_lab.reconcile.reconcile``."""
    from .reconcile import reconcile as _reconcile

    kw.setdefault("manager", manager())
    return _reconcile(symbol, tf, start, end, volume_tolerance=volume_tolerance, **kw)


def login(request_token: str, api_key: str | None = None, api_secret: str | None = None) -> str:
    """Turn a Kite login ``request_token`` into today's access token and use it from now on.

    ``api_key``/``api_secret`` default to ``KiteOHLC.api_key``/``api_secret`` (env ``KITE_API_KEY``,
    ``KITE_API_SECRET``, ``.env``). The token is stored in the configuration, never printed; the
    return value is a one-line confirmation (tokens expire daily around 06:00 IST).
    """
    from .errors import CredentialsError
    from .feeds.auth import login as _login

    m = manager()
    key = api_key or m.cfg.api_key
    secret = api_secret or m.cfg.api_secret
    if not key or not secret:
        raise CredentialsError("login needs the API key and API secret: pass them, or set "
                               "KITE_API_KEY and KITE_API_SECRET (or KiteOHLC.api_key/api_secret)")
    m.cfg.api_key = key
    m.cfg.access_token = _login(key, secret, request_token, api_url=m.cfg.api_url or None)
    return "logged in: the access token is set for this session (it expires around 06:00 IST)"
