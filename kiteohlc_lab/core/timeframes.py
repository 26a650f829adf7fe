"""Timeframe grammar and bucketing aligned to the exchange session open.

All times inside the core are int64 nanoseconds since the Unix epoch (UTC). A bucket is identified by
its start, also in epoch nanoseconds. Intraday buckets are anchored to the session open of the
instrument's exchange on the IST calendar day of the tick (09:15 for NSE/BSE/NFO, 09:00 for MCX), so a
1h candle starts 09:15, 10:15, ... and a tick at 09:05 falls into the 08:15 bucket (ticks are never
dropped for being outside market hours). A day bucket starts 00:00 IST.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..errors import TimeframeError

NS = 1_000_000_000
IST_OFFSET_NS = 19_800 * NS  # Asia/Kolkata is UTC+05:30 all year (no DST)
DAY_NS = 86_400 * NS
IST = "Asia/Kolkata"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_KITE_NAMES = {
    "minute": "1m",
    "3minute": "3m",
    "5minute": "5m",
    "10minute": "10m",
    "15minute": "15m",
    "30minute": "30m",
    "60minute": "1h",
    "day": "1d",
}
_GRAMMAR = re.compile(r"^\s*(\d+)\s*(s|sec|secs|m|min|mins|h|hr|hrs|d|day|days)\s*$", re.IGNORECASE)
ACCEPTED = (
    "a positive number followed by s, m, h or d (10s, 1m, 5m, 15m, 1h, 1d) "
    "or a Kite interval name (minute, 3minute, 5minute, 10minute, 15minute, 30minute, 60minute, day)"
)

# Session open per exchange, minutes after 00:00 IST.
DEFAULT_SESSION_OPEN: dict[str, str] = {
    "NSE": "09:15",
    "BSE": "09:15",
    "NFO": "09:15",
    "BFO": "09:15",
    "CDS": "09:00",
    "BCD": "09:00",
    "MCX": "09:00",
    "MCXSX": "09:00",
    "INDICES": "09:15",
    "NCO": "09:00",
}
# instrument_token & 0xFF -> exchange segment name
SEGMENTS = {1: "NSE", 2: "NFO", 3: "CDS", 4: "BSE", 5: "BFO", 6: "BCD", 7: "MCX", 8: "MCXSX", 9: "INDICES", 12: "NCO"}


@dataclass(frozen=True, slots=True)
class Timeframe:
    """A candle length. ``label`` is canonical (``5m``, ``1h``, ``1d``); ``seconds`` its length."""

    seconds: int
    label: str

    @property
    def ns(self) -> int:
        return self.seconds * NS

    @property
    def is_day(self) -> bool:
        return self.seconds == 86400

    @property
    def kite_interval(self) -> str | None:
        """Kite's historical interval name for this timeframe, if Kite has one."""
        for name, label in _KITE_NAMES.items():
            if label == self.label:
                return name
        return None

    def __str__(self) -> str:
        return self.label

    def __lt__(self, other: "Timeframe") -> bool:
        return self.seconds < other.seconds


def parse_timeframe(text: "str | Timeframe") -> Timeframe:
    """Parse ``10s``, ``1m``, ``5m``, ``1h``, ``1d`` or Kite's ``minute``/``5minute``/``day``.

    >>> parse_timeframe("60minute").label
    '1h'
    """
    if isinstance(text, Timeframe):
        return text
    if not isinstance(text, str):
        raise TimeframeError(f"timeframe {text!r} is not accepted; use {ACCEPTED}")
    return _parse_text(text)


@functools.lru_cache(maxsize=256)
def _parse_text(text: str) -> Timeframe:
    """``parse_timeframe`` of a string, remembered (a Timeframe is immutable): every ``candles()``
    call and every stream read names its timeframe as text (a regex match, 5% of a reader's
    ``candles()``); a refused text raises again each time (errors are not cached)."""
    raw = text.strip().lower()
    raw = _KITE_NAMES.get(raw, raw)
    m = _GRAMMAR.match(raw)
    if not m:
        raise TimeframeError(f"timeframe {text!r} is not accepted; use {ACCEPTED}")
    n = int(m.group(1))
    unit = m.group(2)[0].lower()
    seconds = n * _UNITS[unit]
    if n <= 0:
        raise TimeframeError(f"timeframe {text!r} must be longer than zero; use {ACCEPTED}")
    if seconds > 86400:
        raise TimeframeError(f"timeframe {text!r} is longer than a day; use {ACCEPTED}")
    if seconds % 86400 == 0:
        label = "1d"
    elif seconds % 3600 == 0:
        label = f"{seconds // 3600}h"
    elif seconds % 60 == 0:
        label = f"{seconds // 60}m"
    else:
        label = f"{seconds}s"
    return Timeframe(seconds, label)


def parse_hhmm(text: str) -> int:
    """``"09:15"`` -> offset from 00:00 in nanoseconds."""
    try:
        hh, mm = text.split(":")
        h, m = int(hh), int(mm)
        if not (0 <= h < 24 and 0 <= m < 60):
            raise ValueError
    except ValueError:
        raise TimeframeError(f"session open {text!r} is not accepted; use HH:MM such as 09:15") from None
    return (h * 3600 + m * 60) * NS


def exchange_of_token(token: int) -> str:
    """Exchange segment name from ``instrument_token & 0xFF`` (Kite's convention)."""
    return SEGMENTS.get(int(token) & 0xFF, "NSE")


def anchor_for_tokens(tokens: npt.ArrayLike, session_open: dict[str, str] | None = None) -> np.ndarray:
    """Session-open offset (ns after 00:00 IST) for each token, by its exchange segment."""
    opens = {**DEFAULT_SESSION_OPEN, **(session_open or {})}
    seg_anchor = np.full(256, parse_hhmm(opens["NSE"]), dtype=np.int64)
    for code, name in SEGMENTS.items():
        if name in opens:
            seg_anchor[code] = parse_hhmm(opens[name])
    return seg_anchor[np.asarray(tokens, dtype=np.int64) & 0xFF]


def bucket_start(ts: npt.ArrayLike, tf: Timeframe, anchor: npt.ArrayLike, cut_free: bool = False) -> np.ndarray:
    """Start (epoch ns) of the bucket holding each timestamp.

    ``anchor`` is the session-open offset in ns after 00:00 IST (scalar or per tick). Intraday
    buckets are the grid ``open + k * size`` of the tick's IST day, cut at midnight: a bucket never
    starts before 00:00 IST of its tick's day (a timeframe that does not divide the day gets a short
    first bucket there, and never a bucket of the day before). ``cut_free=True`` promises that no
    timestamp lies within ``size`` of midnight (the caller checked the batch's range): the cut is skipped.
    """
    local = np.asarray(ts, dtype=np.int64) + IST_OFFSET_NS
    day = (local // DAY_NS) * DAY_NS
    if tf.is_day:
        return day - IST_OFFSET_NS
    size = tf.ns
    a = np.asarray(anchor, dtype=np.int64)
    start = day + a + ((local - day - a) // size) * size
    if not cut_free and (start < day).any():
        np.maximum(start, day, out=start)
    return start - IST_OFFSET_NS


def day_grid(ts: np.ndarray, anchors: np.ndarray) -> tuple[int, np.ndarray] | None:
    """For a batch whose ticks all lie on one IST day and whose instruments share one session
    open (``anchors``: the anchors of the engine's instruments): (the origin of that day's grid,
    epoch ns; each tick's offset from it). ``grid_start`` then gives ``bucket_start`` for any
    intraday timeframe in three array operations. None otherwise."""
    if not len(ts) or not len(anchors) or int(anchors.min()) != int(anchors.max()):
        return None
    lo, hi = int(ts.min()) + IST_OFFSET_NS, int(ts.max()) + IST_OFFSET_NS
    if lo // DAY_NS != hi // DAY_NS:
        return None
    origin = (lo // DAY_NS) * DAY_NS + int(anchors[0]) - IST_OFFSET_NS
    return origin, ts - origin


def grid_start(grid: tuple[int, np.ndarray], tf: Timeframe) -> np.ndarray:
    """``bucket_start`` of an intraday timeframe from a ``day_grid``, for a batch no tick of which
    lies within ``tf``'s size of midnight (so no bucket is cut there)."""
    origin, rel = grid
    start = rel // tf.ns  # floor, before the open too (numpy's // by a scalar is ~15x its %)
    start *= tf.ns
    start += origin
    return start


def bucket_end(start: npt.ArrayLike, tf: Timeframe, anchor: npt.ArrayLike) -> np.ndarray:
    """End (epoch ns, exclusive) of the buckets starting at ``start``: the next grid point of the
    bucket's IST day, or 24:00 IST, whichever comes first."""
    local = np.asarray(start, dtype=np.int64) + IST_OFFSET_NS
    day = (local // DAY_NS) * DAY_NS
    if tf.is_day:
        return day + DAY_NS - IST_OFFSET_NS
    size = tf.ns
    a = np.asarray(anchor, dtype=np.int64)
    end = day + a + ((local - day - a) // size + 1) * size
    nxt = day + DAY_NS
    if (end > nxt).any():
        np.minimum(end, nxt, out=end)
    return end - IST_OFFSET_NS


def is_weekday(day: int | np.ndarray) -> bool | np.ndarray:
    """Monday..Friday for an IST day number (days since 1970-01-01, a Thursday), or an array of
    them: weekends hold no session (holidays are not known here)."""
    return (day + 3) % 7 < 5


def trading_day(ts: npt.ArrayLike) -> np.ndarray:
    """IST calendar day number (days since epoch) of each timestamp."""
    return (np.asarray(ts, dtype=np.int64) + IST_OFFSET_NS) // DAY_NS


def bound_ns(value: object) -> int | None:
    """A date/time bound (``start=``/``end=``) -> epoch ns; naive values are IST wall-clock."""
    if value is None or value == "":
        return None
    import pandas as pd

    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        ts = ts.tz_localize(IST)
    return int(ts.value)
