"""What the live chart draws, as data: the columnar snapshot of a series, chart times, the built
JavaScript module's location. No widget library here: the notebook widget (``chart``) and the web
page (``serve_chart``) both read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..errors import KiteOHLCError
from .handle import carries

IST_SHIFT = 19_800  # seconds: UTC -> IST wall clock on the chart's UTC axis
DEFAULT_RATE = 10.0
DEFAULT_TICK = 0.05
WINDOW = 64  # recent rows compared for amendments; more new rows than this at once -> full sync
STATIC = Path(__file__).resolve().parents[1] / "static" / "chart.js"
COLS = ("time", "open", "high", "low", "close", "volume")


class ChartUnavailable(KiteOHLCError, RuntimeError):
    """The chart's JavaScript was not built (no Node.js/npm when the package was installed)."""


def _base():
    try:
        import anywidget
    except ImportError as exc:  # pragma: no cover - a dependency
        raise ChartUnavailable(f"the live chart needs anywidget ({exc}); pip install anywidget") from None
    return anywidget.AnyWidget


def _seconds(start_ns: np.ndarray) -> np.ndarray:
    return (np.asarray(start_ns, np.int64) // 1_000_000_000 + IST_SHIFT).astype(np.float64)


def chart_time(when: Any) -> int:
    """A time (Timestamp, datetime, ISO string; naive = IST, or epoch ns) as chart seconds."""
    if isinstance(when, (int, np.integer)) and abs(int(when)) > 10**14:
        ts = pd.Timestamp(int(when), unit="ns", tz="UTC")
    else:
        ts = pd.Timestamp(when)
        ts = ts.tz_localize("Asia/Kolkata") if ts.tzinfo is None else ts
    return int(ts.value // 1_000_000_000) + IST_SHIFT


class Snapshot:
    """The last rows of a series (closed rows + the forming one) and how many rows it has."""

    __slots__ = ("key", "total", "closed", "rows")

    def __init__(self, key: tuple[int, int], total: int, closed: int, rows: np.ndarray) -> None:
        self.key, self.total, self.closed, self.rows = key, total, closed, rows  # rows: (k, 6)


def snapshot(series: Any, keep: int | None) -> Snapshot:
    """The last ``keep`` rows of ``series`` (all with None) as chart rows [t, o, h, l, c, v].

    A ``SeriesBuffer`` is read directly (a copy of its last rows under its short lock, the forming
    candle from the engine as ``frame()`` reads it: microseconds at any length); anything else with
    ``version`` and ``frame()`` through its frame.
    """
    key = (id(series), int(series.version))  # before reading: a racing change only forces a poll
    if hasattr(series, "tail_columns") and hasattr(series, "forming"):
        n, cols = series.tail_columns(keep)
        lo = n - len(cols["start"])
        part = [cols[k] for k in ("start", "open", "high", "low", "close", "volume")]
        forming = series.forming  # the engine's lock is never taken under the buffer's
        rows = np.empty((n - lo + (forming is not None), 6))
        rows[: n - lo, 0] = _seconds(part[0])
        for j in range(1, 6):
            rows[: n - lo, j] = part[j]
        if forming is not None:
            rows[-1] = (forming.start // 1_000_000_000 + IST_SHIFT, forming.open, forming.high,
                        forming.low, forming.close, forming.volume)
        return Snapshot(key, n + (forming is not None), n, rows)
    df = series.frame()
    total = len(df)
    closed = total - (df.attrs.get("forming") is not None)
    tail = df if keep is None else df.iloc[max(0, total - keep):]
    rows = np.empty((len(tail), 6))
    rows[:, 0] = _seconds(tail.index.asi8)
    for j, c in enumerate(("open", "high", "low", "close", "volume"), 1):
        rows[:, j] = tail[c].to_numpy(np.float64)
    return Snapshot(key, total, closed, rows)


class Overlay:
    """A line or histogram series computed from the candles, re-evaluated when a candle closes."""

    def __init__(self, name: str, fn: Callable[[pd.DataFrame], Any], type: str = "line",
                 color: str | None = None, pane: int | None = None, width: int = 2) -> None:
        self.name, self.fn, self.type, self.color, self.pane, self.width = name, fn, type, color, pane, width
        self.sent: np.ndarray | None = None  # values the front end has, aligned with the candles
        self.error: str | None = None

    def spec(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "width": self.width}
        if self.color:
            out["color"] = self.color
        if self.pane is not None:
            out["pane"] = self.pane
        return out

    def values(self, df: pd.DataFrame) -> np.ndarray:
        """``fn(df)`` aligned with ``df``'s rows (a Series is aligned by index, NaN elsewhere)."""
        try:
            out = self.fn(df)
            if isinstance(out, pd.DataFrame):
                out = out.iloc[:, 0]
            if isinstance(out, pd.Series):
                vals = out.reindex(df.index).to_numpy(np.float64, na_value=np.nan)
            else:
                vals = np.asarray(out, np.float64).reshape(-1)
                if len(vals) != len(df):
                    raise ValueError(f"{len(vals)} values for {len(df)} candles")
            self.error = None
            return vals
        except Exception as exc:  # a broken overlay never stops the chart: it shows as empty
            self.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return np.full(len(df), np.nan)


def _tf_ns(label: str) -> int:
    from ..core.timeframes import parse_timeframe

    return parse_timeframe(label).ns


def stream_choices(manager: Any, symbol: str) -> tuple[list[str], list[str]]:
    """(symbols streaming now, the timeframes streamed for ``symbol``), as the picker lists them."""
    try:
        rows = manager.status()
    except Exception:  # noqa: BLE001 - a picker with fewer entries, never a failed chart
        return [], []
    symbols: list[str] = []
    tfs: set[str] = set()
    for row in rows:
        if row.get("state") in ("stopped", "failed"):
            continue
        names = [str(n) for n in (row.get("symbols") or [])]
        for n in names:
            if n not in symbols:
                symbols.append(n)
        if carries(row, symbol):
            tfs.update(str(x) for x in (row.get("timeframes") or []))
    return symbols, sorted(tfs, key=_tf_ns)
