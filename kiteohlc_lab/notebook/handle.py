"""``SeriesHandle``: one symbol/timeframe of a manager, its current frame cached by version, pinned.

What ``LiveCandles`` (the researcher's object), the live widget and the chart widget share: they build
on it, so none of them needs another's module.
"""

from __future__ import annotations

import weakref
from typing import Any

import pandas as pd

from ..errors import KiteOHLCError
from . import get_manager

ROWS = 10
_MARK = "forming"
def stream_state(manager: Any, symbol: str, tf: str | None = None) -> dict | None:
    """The status row of the stream that carries ``symbol`` (and ``tf``), if any."""
    try:
        rows = manager.status()
    except Exception:
        return None
    for row in rows:
        if carries(row, symbol) and (tf is None or not row.get("timeframes") or tf in row.get("timeframes")):
            return row
    return None


def carries(row: dict, symbol: str) -> bool:
    """Does the status ``row`` stream ``symbol`` (``RELIANCE`` matches ``NSE:RELIANCE``)?"""
    key = str(symbol).upper()
    names = [str(s).upper() for s in (row.get("symbols") or [])]
    return key in names or any(key == n.split(":")[-1] for n in names)


def marked_tail(df: pd.DataFrame, rows: int = ROWS) -> pd.DataFrame:
    """The last ``rows`` candles with a ``""`` column marking the forming candle."""
    forming = df.attrs.get("forming")
    tail = df.tail(rows).copy()
    mark = [""] * len(tail)
    if forming is not None and len(tail):
        mark = ["◀ " + _MARK if ts == forming else "" for ts in tail.index]
    tail[""] = mark
    return tail


class SeriesHandle:
    """The current candles of one symbol and timeframe in ``manager`` (default: the process-wide one).

    While the handle lives it pins its series in the manager (``Manager.pin``): the idle-series LRU
    (``max_idle_series``) never drops what it shows. The pin goes when the handle is garbage-collected
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

    @property
    def manager(self) -> Any:
        """The manager this handle reads from."""
        return self._manager

    def header(self, df: pd.DataFrame | None = None) -> str:
        df = self.df if df is None else df
        forming = df.attrs.get("forming")
        tail = f", forming {forming:%d %b %H:%M}" if forming is not None else ""
        return f"{self.symbol} {self.tf}: {len(df)} candles, {self.state}{tail}"

