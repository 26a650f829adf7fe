"""SeriesBuffer: the candles of one instrument and timeframe as the researcher sees them.

History (from the store), closed candles (from the engine) and the forming candle, kept as growing
numpy columns. Writers (the stream thread) and readers (the notebook) share it under a short lock: a
reader copies arrays (microseconds for 100k rows) and builds the DataFrame outside the lock, so a
snapshot never blocks the stream for long.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas loads where a frame is made: a replay never needs it
    import pandas as pd

from .candles import Candle, CandleBatch, frame_from_arrays

_COLS = ("start", "open", "high", "low", "close", "volume", "oi")


class SeriesBuffer:
    """Sorted, de-duplicated candles of one (token, tf) plus its forming candle."""

    def __init__(self, token: int, tf: str, capacity: int = 0) -> None:
        # no room until the first candles come (then what they need, doubling from 64): a replay of
        # 50 instruments at three timeframes made 1050 arrays of 1024 up front, 5 ms of its start
        self.token = token
        self.tf = tf
        self._lock = threading.Lock()
        self._n = 0
        self._cols: dict[str, np.ndarray] = {
            k: np.empty(capacity, np.int64 if k == "start" else np.float64) for k in _COLS
        }
        self._forming: Candle | None = None
        self._version = 0
        # forming candle read from a running engine on demand (no per-tick push to every series)
        self._engine: Any = None
        self._engine_lock: Any = None  # held by the engine's stream thread while it changes
        self._cache: tuple[int, bool, pd.DataFrame] | None = None
        self.gaps: list[tuple[int, int]] = []  # marked, unrepaired outages (epoch ns)
        # readers that follow the store (runtime.Manager): when it was last brought up to date from
        # the stores (monotonic seconds), and the lock of the one reader doing it
        self.refreshed = time.monotonic()
        self.refresh_lock = threading.Lock()

    def tail_columns(self, keep: int | None = None) -> tuple[int, dict[str, np.ndarray]]:
        """(closed candles held, copies of the columns of the last ``keep`` of them; all with None),
        taken under the buffer's lock: a reader in another thread gets a consistent slice."""
        with self._lock:
            n = self._n
            lo = 0 if keep is None else max(0, n - keep)
            return n, {k: v[lo:n].copy() for k, v in self._cols.items()}

    def __len__(self) -> int:
        return self._n + (self.forming is not None)

    @property
    def version(self) -> int:
        """Changes whenever the frame would: closed candles, the forming candle, gaps."""
        return self._version + self._engine_version()

    def _engine_version(self) -> int:
        eng, lock = self._engine, self._engine_lock
        if eng is None:
            return 0
        if lock is None:
            return eng.version_of(self.token)
        with lock:
            return eng.version_of(self.token)

    def bind_engine(self, engine: Any, lock: Any = None) -> None:
        """Take the forming candle from ``engine`` (the stream writing this series) from now on.

        ``lock``: the lock its stream thread holds while the engine changes
        (``kiteohlc_lab.core.stream.engine_lock``); the forming candle is copied under it.
        """
        with self._lock:
            self._engine_lock = lock  # before the engine: a reader never sees it without its lock
            self._engine = engine
            self._forming = None
            self._version += 1

    @property
    def engine_bound(self) -> bool:
        """True when the forming candle comes from a running engine (``bind_engine``)."""
        return self._engine is not None

    # -- writers
    def upsert(self, batch: CandleBatch | Any) -> None:
        """Insert closed candles; a candle with an existing start replaces it (amend, repair)."""
        if len(batch) == 0:
            return
        start = np.asarray(batch.start, np.int64)
        order = np.argsort(start, kind="stable")
        new = {
            "start": start[order],
            "open": np.asarray(batch.open, float)[order],
            "high": np.asarray(batch.high, float)[order],
            "low": np.asarray(batch.low, float)[order],
            "close": np.asarray(batch.close, float)[order],
            "volume": np.asarray(batch.volume, float)[order],
            "oi": np.asarray(batch.oi, float)[order],
        }
        # keep the last of duplicate starts within the batch
        s = new["start"]
        if len(s) > 1 and (s[1:] == s[:-1]).any():
            keep = np.append(s[1:] != s[:-1], True)
            new = {k: v[keep] for k, v in new.items()}
        self.upsert_sorted(new)

    def upsert_sorted(self, new: dict[str, np.ndarray]) -> None:
        """``upsert`` of columns (``start open high low close volume oi``) already sorted by a
        strictly increasing ``start`` (views are fine: they are copied in)."""
        if len(new["start"]) == 0:
            return
        with self._lock:
            n = self._n
            cur = self._cols["start"]
            if n == 0 or new["start"][0] > cur[n - 1]:
                self._append(new)
            else:
                # rare: overlap with existing rows; merge and let the new rows win
                merged = {k: np.concatenate([self._cols[k][:n], new[k]]) for k in _COLS}
                idx = np.argsort(merged["start"], kind="stable")
                merged = {k: v[idx] for k, v in merged.items()}
                ms = merged["start"]
                keep = np.append(ms[1:] != ms[:-1], True)
                merged = {k: v[keep] for k, v in merged.items()}
                self._n = 0
                self._append(merged)
            f = self._forming
            if f is not None and f.start <= self._cols["start"][self._n - 1]:
                self._forming = None
            self._version += 1

    def _append(self, new: dict[str, np.ndarray]) -> None:
        m = len(new["start"])
        need = self._n + m
        if need > len(self._cols["start"]):
            cap = max(need, 2 * len(self._cols["start"]), 64)
            for k in _COLS:
                arr = np.empty(cap, self._cols[k].dtype)
                arr[: self._n] = self._cols[k][: self._n]
                self._cols[k] = arr
        for k in _COLS:
            self._cols[k][self._n : need] = new[k]
        self._n = need

    def set_forming(self, candle: Candle | None) -> None:
        with self._lock:
            if candle is not None and self._n and candle.start <= self._cols["start"][self._n - 1]:
                candle = None
            if candle != self._forming:
                self._forming = candle
                self._version += 1

    def mark_gap(self, start_ns: int, end_ns: int) -> None:
        with self._lock:
            self.gaps.append((start_ns, end_ns))
            self._version += 1

    # -- readers
    @property
    def forming(self) -> Candle | None:
        eng, lock = self._engine, self._engine_lock
        if eng is None:
            candle = self._forming
        elif lock is None:
            candle = eng.forming_candle(self.token, self.tf)
        else:
            with lock:  # a consistent copy: never half of a batch's update
                candle = eng.forming_candle(self.token, self.tf)
        if candle is not None and self._n and candle.start <= self._cols["start"][self._n - 1]:
            return None  # stale: the candle has been closed (or repaired) meanwhile
        return candle

    def last_start(self) -> int | None:
        with self._lock:
            return int(self._cols["start"][self._n - 1]) if self._n else None

    def frame(self, closed_only: bool = False, start: int | None = None, end: int | None = None) -> pd.DataFrame:
        """The public DataFrame; ``df.attrs['forming']`` is the forming candle's date or None."""
        cached = self._cache
        if cached is not None and start is None and end is None and cached[0] == self.version and cached[1] == closed_only:
            return cached[2].copy(deep=False)  # copy-on-write: the caller may add columns
        # the engine's part first: its lock is never taken while this buffer's lock is held
        # (the stream thread binds buffers while it holds the engine's lock)
        engine_part = self._engine_version()
        with self._lock:
            version = self._version + engine_part
            n = self._n
            cols = {k: self._cols[k][:n].copy() for k in _COLS}
        forming = None if closed_only else self.forming
        if forming is not None:
            for k, v in zip(_COLS, (forming.start, forming.open, forming.high, forming.low,
                                    forming.close, forming.volume, forming.oi)):
                cols[k] = np.append(cols[k], v)
        if start is not None or end is not None:
            s = cols["start"]
            mask = np.ones(len(s), bool)
            if start is not None:
                mask &= s >= start
            if end is not None:
                mask &= s < end
            cols = {k: v[mask] for k, v in cols.items()}
            if forming is not None and not mask[-1]:
                forming = None
        df = frame_from_arrays(cols["start"], cols["open"], cols["high"], cols["low"],
                               cols["close"], cols["volume"], cols["oi"])
        df.attrs["forming"] = forming.date if forming is not None else None
        if start is None and end is None:
            self._cache = (version, closed_only, df)
            return df.copy(deep=False)
        return df
