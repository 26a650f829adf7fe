"""``LiveCandles``: a DataFrame-like handle on one symbol/timeframe that is always current.

``live.df`` is history + closed + forming candles as the stream has them now; the frame is rebuilt
only when the series' ``version`` changes, so reading it in a loop is cheap. Attribute and item access
go to that frame (``live.close.rolling(20).mean()``, ``live["volume"].sum()``, ``len(live)``).
"""

from __future__ import annotations

import html
from typing import Any

from .handle import ROWS, SeriesHandle, marked_tail, stream_state

__all__ = ["LiveCandles", "ROWS", "marked_tail", "stream_state"]

_OWN = frozenset({"df", "series", "version", "closed", "forming", "state", "symbol", "tf", "rows", "pinned",
                  "release", "manager"})


class LiveCandles(SeriesHandle):
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
