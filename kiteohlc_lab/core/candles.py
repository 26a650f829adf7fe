"""Candle records and columnar candle batches, and the DataFrame boundary.

Inside the core, candles travel as ``CandleBatch`` (arrays, one timeframe per batch); a ``Candle`` is
the small record for callbacks and reprs. DataFrames are made only on request (``to_frame``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

if TYPE_CHECKING:  # pandas loads where a frame is made: a replay never needs it
    import pandas as pd

from .timeframes import IST

COLUMNS = ("open", "high", "low", "close", "volume")
_ARRAYS = ("token", "start", "open", "high", "low", "close", "volume", "oi", "ticks")


@dataclass(frozen=True, slots=True)
class Candle:
    """One OHLCV candle. ``start`` is epoch ns (UTC) of the candle's start."""

    token: int
    tf: str
    start: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    oi: float = math.nan
    ticks: int = 0
    closed: bool = True
    amended: bool = False

    @property
    def date(self) -> pd.Timestamp:
        """Start of the candle, tz-aware Asia/Kolkata."""
        import pandas as pd

        return pd.Timestamp(self.start, unit="ns", tz="UTC").tz_convert(IST)

    def to_dict(self) -> dict:
        return {
            "token": self.token,
            "tf": self.tf,
            "start": self.start,
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volume": self.volume,
            "oi": self.oi,
            "ticks": self.ticks,
            "closed": self.closed,
            "amended": self.amended,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Candle":
        return cls(
            token=int(d["token"]),
            tf=str(d["tf"]),
            start=int(d["start"]),
            open=float(d["open"]),
            high=float(d["high"]),
            low=float(d["low"]),
            close=float(d["close"]),
            volume=float(d["volume"]),
            oi=float(d.get("oi", math.nan) if d.get("oi") is not None else math.nan),
            ticks=int(d.get("ticks", 0)),
            closed=bool(d.get("closed", True)),
            amended=bool(d.get("amended", False)),
        )


@dataclass(slots=True)
class CandleBatch:
    """Columnar candles of one timeframe (possibly several instruments).

    ``start`` int64 epoch ns; prices/volume/oi float64 (oi NaN where the feed has none); ``ticks``
    int64 count of ticks aggregated. ``closed`` tells final candles from forming ones; ``amended``
    marks re-emitted closed candles that a late tick changed.
    """

    tf: str
    token: np.ndarray
    start: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    oi: np.ndarray
    ticks: np.ndarray
    closed: bool = True
    amended: np.ndarray | None = field(default=None)

    def __len__(self) -> int:
        return len(self.token)

    @classmethod
    def empty(cls, tf: str, closed: bool = True) -> "CandleBatch":
        f = np.empty(0)
        i = np.empty(0, np.int64)
        return cls(tf, i, i, f, f, f, f, f, f, i, closed)

    @classmethod
    def from_candles(cls, tf: str, candles: list[Candle], closed: bool = True) -> "CandleBatch":
        if not candles:
            return cls.empty(tf, closed)
        cols = {k: np.array([getattr(c, k) for c in candles]) for k in _ARRAYS}
        return cls(tf, **_typed(cols), closed=closed,
                   amended=np.array([c.amended for c in candles], dtype=bool))

    @classmethod
    def concat(cls, batches: list["CandleBatch"]) -> "CandleBatch":
        bs = [b for b in batches if len(b)]
        if not bs:
            return cls.empty(batches[0].tf if batches else "", batches[0].closed if batches else True)
        amended = None
        if any(b.amended is not None for b in bs):
            amended = np.concatenate(
                [b.amended if b.amended is not None else np.zeros(len(b), bool) for b in bs]
            )
        cols = {k: np.concatenate([getattr(b, k) for b in bs]) for k in _ARRAYS}
        return cls(bs[0].tf, **cols, closed=bs[0].closed, amended=amended)

    def select(self, mask: np.ndarray) -> "CandleBatch":
        cols = {k: getattr(self, k)[mask] for k in _ARRAYS}
        return CandleBatch(self.tf, **cols, closed=self.closed,
                           amended=None if self.amended is None else self.amended[mask])

    def for_token(self, token: int) -> "CandleBatch":
        return self.select(self.token == token)

    def __iter__(self) -> Iterator[Candle]:
        amended = self.amended if self.amended is not None else np.zeros(len(self), bool)
        for i in range(len(self)):
            yield Candle(
                int(self.token[i]),
                self.tf,
                int(self.start[i]),
                float(self.open[i]),
                float(self.high[i]),
                float(self.low[i]),
                float(self.close[i]),
                float(self.volume[i]),
                float(self.oi[i]),
                int(self.ticks[i]),
                self.closed,
                bool(amended[i]),
            )

    def to_frame(self, with_token: bool = False) -> pd.DataFrame:
        """DataFrame indexed by ``date`` (tz-aware IST candle start) with OHLCV (+ ``oi``)."""
        return frame_from_arrays(
            self.start,
            self.open,
            self.high,
            self.low,
            self.close,
            self.volume,
            self.oi,
            token=self.token if with_token else None,
        )


def combine(batch: CandleBatch, tf: str, bucket: np.ndarray, token: int | None = None) -> CandleBatch:
    """Finer candles into longer ones: ``batch`` sorted by (token, start), ``bucket`` the start of
    the ``tf`` candle each belongs to; one closed candle per run of equal (token, bucket). ``token``:
    the batch is all of that instrument (whatever its token column says).
    (Backfill's reaggregation and gap repair's rebucketing both make candles this way.)"""
    if not len(batch):
        return CandleBatch.empty(tf)
    new = np.ones(len(batch), bool)
    new[1:] = bucket[1:] != bucket[:-1]
    if token is None:
        new[1:] |= batch.token[1:] != batch.token[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, len(batch) - 1)
    toks = batch.token[first] if token is None else np.full(len(first), token, np.int64)
    return CandleBatch(
        tf, toks, bucket[first], batch.open[first],
        np.maximum.reduceat(batch.high, first), np.minimum.reduceat(batch.low, first),
        batch.close[last], np.add.reduceat(batch.volume, first), batch.oi[last],
        np.add.reduceat(batch.ticks, first), True,
    )


def _typed(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Candle columns with their dtypes: int64 token/start/ticks, float64 the rest."""
    ints = ("token", "start", "ticks")
    return {k: v.astype(np.int64 if k in ints else np.float64) for k, v in cols.items()}


_COLUMNS: dict[int, Any] = {}  # number of columns -> the frame's columns Index (made on first use)


def frame_from_arrays(
    start: np.ndarray,
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    oi: np.ndarray | None = None,
    token: np.ndarray | None = None,
) -> pd.DataFrame:
    """The one place candle arrays become the public DataFrame shape.

    ``oi`` is included only when at least one value is present (the feed has it).
    """
    import pandas as pd

    # the int64 nanoseconds viewed as UTC datetimes, then IST: ~40 us less per frame than
    # to_datetime(unit="ns") and ~5 us less than a tz_localize("UTC") step, the same index (a live
    # view rebuilds a frame per closed candle)
    index = pd.DatetimeIndex(np.asarray(start, dtype=np.int64).view("M8[ns]"), tz="UTC", name="date"
                             ).tz_convert(IST)
    names = ["open", "high", "low", "close", "volume"]
    cols = [open_, high, low, close, volume]
    if oi is not None and len(oi) and not np.all(np.isnan(oi)):
        names.append("oi")
        cols.append(oi)
    if token is None:  # one float64 block, filled column by column: no per-column frame assembly
        block = np.empty((len(names), len(index)), np.float64)
        for i, c in enumerate(cols):
            block[i] = c
        columns = _COLUMNS.get(len(names))
        if columns is None:  # an Index is immutable: every frame can share it
            columns = _COLUMNS[len(names)] = pd.Index(names)
        return pd.DataFrame(block.T, index=index, columns=columns, copy=False)
    data: dict[str, np.ndarray] = {"token": np.asarray(token, dtype=np.int64)}
    data.update((k, np.asarray(c, dtype=np.float64)) for k, c in zip(names, cols))
    return pd.DataFrame(data, index=index)


def empty_frame() -> pd.DataFrame:
    e = np.empty(0)
    return frame_from_arrays(e.astype(np.int64), e, e, e, e, e)


def batch_from_frame(token: int, tf: str, df: pd.DataFrame) -> CandleBatch:
    """A public candle frame (``hist.read``) as a closed ``CandleBatch`` of ``token``."""
    n = len(df)
    start = df.index.as_unit("ns").asi8 if hasattr(df.index, "as_unit") else df.index.asi8
    oi = df["oi"].to_numpy(float) if "oi" in df.columns else np.full(n, np.nan)
    return CandleBatch(tf, np.full(n, token, np.int64), np.asarray(start, np.int64),
                       df["open"].to_numpy(float), df["high"].to_numpy(float), df["low"].to_numpy(float),
                       df["close"].to_numpy(float), df["volume"].to_numpy(float), oi,
                       np.zeros(n, np.int64))
