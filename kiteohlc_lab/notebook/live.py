"""``LiveCandles``: a DataFrame-like handle on one symbol/timeframe that is always current.

``live.df`` is history + closed + forming candles as the stream has them now; the frame is rebuilt
only when the series' ``version`` changes, so reading it in a loop is cheap. Attribute and item access
go to that frame (``live.close.rolling(20).mean()``, ``live["volume"].sum()``, ``len(live)``).
"""

from __future__ import annotations

import html
import weakref
from typing import Any

import pandas as pd

from ..errors import KiteOHLCError
from . import get_manager

ROWS = 10
_MARK = "forming"
_OWN = frozenset({"df", "series", "version", "closed", "forming", "state", "symbol", "tf", "rows", "pinned",
                  "release"})


def stream_state(manager: Any, symbol: str, tf: str | None = None) -> dict | None:
    """The status row of the stream that carries ``symbol`` (and ``tf``), if any."""
    try:
        rows = manager.status()
    except Exception:
        return None
    key = str(symbol).upper()
    for row in rows:
        names = [str(s).upper() for s in (row.get("symbols") or [])]
        hit = key in names or any(key == n.split(":")[-1] for n in names)
        if hit and (tf is None or not row.get("timeframes") or tf in row.get("timeframes")):
            return row
    return None


def marked_tail(df: pd.DataFrame, rows: int = ROWS) -> pd.DataFrame:
    """The last ``rows`` candles with a ``""`` column marking the forming candle."""
    forming = df.attrs.get("forming")
    tail = df.tail(rows).copy()
    mark = [""] * len(tail)
    if forming is not None and len(tail):
        mark = ["◀ " + _MARK if ts == forming else "" for ts in tail.index]
    tail[""] = mark
    return tail


class LiveCandles:
    """Live candles of one symbol and timeframe (history + closed + forming), always current.

    Parameters
    ----------
    symbol : str
        As given to ``%ohlc_stream`` (``NIFTY``, ``NSE:RELIANCE``, a token).
    tf : str
        Timeframe label (``1m``, ``5m`` ...).
    manager : Manager, optional
        Defaults to the process-wide manager.

    Examples
    --------
    >>> live = kiteohlc_lab.live("NIFTY", "5m")
    >>> live.close.rolling(20).mean().iloc[-1]
    >>> live.view()          # an auto-refreshing widget

    While the object lives it pins its series in the manager (``Manager.pin``): the idle-series LRU
    (``max_idle_series``) never drops what it shows. The pin goes when the object is garbage-collected
    or on ``release()``.
    """

    def __init__(self, symbol: str, tf: str, manager: Any = None, rows: int = ROWS) -> None:
        self.symbol = str(symbol)
        self.tf = str(tf)
        self.rows = rows
        self._manager = manager if manager is not None else get_manager()
        self._key: tuple[int, int] | None = None
        self._df: pd.DataFrame | None = None
        self._pin: weakref.finalize | None = None
        self._released = False
        self._ensure_pin()

    def _ensure_pin(self) -> None:
        """Pin the series (once); an unknown symbol is pinned when it first resolves."""
        if self._pin is not None or self._released:
            return
        pin = getattr(self._manager, "pin", None)
        if pin is None:
            return
        try:
            unpin = pin(self.symbol, self.tf)
        except KiteOHLCError:
            return  # not resolvable yet: reading the series says why; pinned once it reads
        self._pin = weakref.finalize(self, unpin)  # holds the unpin, not self
        self._pin.atexit = False  # nothing to unpin at interpreter exit

    def release(self) -> None:
        """Unpin the series now (idempotent; the object still reads, the LRU may drop its series)."""
        self._released = True
        if self._pin is not None:
            self._pin()

    @property
    def pinned(self) -> bool:
        return self._pin is not None and self._pin.alive

    # -- the current frame
    @property
    def series(self) -> Any:
        """The manager's ``SeriesBuffer`` (``.version``, ``.frame()``)."""
        s = self._manager.series(self.symbol, self.tf)
        if self._pin is None and not self._released:
            self._ensure_pin()
        return s

    @property
    def version(self) -> int:
        return int(self.series.version)

    @property
    def df(self) -> pd.DataFrame:
        """History + closed + forming candles now; ``df.attrs["forming"]`` is the forming row's date."""
        s = self.series
        key = (id(s), int(s.version))  # read before building: a racing update only forces a rebuild
        if key != self._key or self._df is None:
            self._df = s.frame()
            self._key = key
        return self._df

    @property
    def closed(self) -> pd.DataFrame:
        """Final candles only (no forming row)."""
        return self.series.frame(closed_only=True)

    @property
    def forming(self) -> pd.Timestamp | None:
        """Date of the forming (not final) last row, or None."""
        return self.df.attrs.get("forming")

    @property
    def state(self) -> str:
        row = stream_state(self._manager, self.symbol, self.tf)
        if row is None:
            return "not streaming"
        return f"{row.get('state', '?')} ({row.get('source', '?')})"

    # -- delegation to the current frame
    def __getattr__(self, name: str) -> Any:
        # IPython's display probing, pickling, copy, and a property that failed: never the frame
        if name.startswith("_") or name in _OWN:
            raise AttributeError(name)
        return getattr(self.df, name)

    def __getitem__(self, key: Any) -> Any:
        return self.df[key]

    def __len__(self) -> int:
        return len(self.df)

    def __iter__(self) -> Any:
        return iter(self.df)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | {c for c in self.df.columns if str(c).isidentifier()})

    # -- views
    def view(self, last: int = 100, refresh: float | None = None) -> Any:
        """An auto-refreshing widget (chart, status line, latest rows); display it in the cell."""
        from .widgets import LiveView

        return LiveView(self.symbol, self.tf, last=last, refresh=refresh, manager=self._manager)

    def chart(self, rate: float | None = None, height: int = 420, **kwargs: Any) -> Any:
        """An interactive live chart (candles, volume, crosshair, zoom/pan) updated at up to ``rate``
        messages per second (default 10); ``add_line``/``add_histogram``/``add_marker`` on it."""
        from .chart import LiveChart

        return LiveChart(self.symbol, self.tf, manager=self._manager, rate=rate, height=height, **kwargs)

    def plot(self, last: int = 100, volume: bool = True) -> Any:
        """A static mplfinance candlestick figure of the last ``last`` candles."""
        from .plots import plot_candles

        return plot_candles(self.df, last=last, title=f"{self.symbol} {self.tf}", volume=volume)

    def header(self, df: pd.DataFrame | None = None) -> str:
        df = self.df if df is None else df
        forming = df.attrs.get("forming")
        tail = f", forming {forming:%d %b %H:%M}" if forming is not None else ""
        return f"{self.symbol} {self.tf}: {len(df)} candles, {self.state}{tail}"

    def _repr_html_(self) -> str:
        df = self.df
        head = f"<div><b>LiveCandles</b> {html.escape(self.header(df))}</div>"
        if not len(df):
            return head + "<div><i>no candles yet</i></div>"
        return head + marked_tail(df, self.rows).to_html(float_format=lambda x: f"{x:,.2f}")

    def __repr__(self) -> str:
        df = self.df
        head = f"LiveCandles {self.header(df)}"
        if not len(df):
            return head + "\n(no candles yet)"
        return head + "\n" + marked_tail(df, self.rows).to_string(float_format=lambda x: f"{x:.2f}", index_names=False)
