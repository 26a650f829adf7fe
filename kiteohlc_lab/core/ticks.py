"""Tick batches: the columnar unit that flows from feeds into the engine.

One ``TickBatch`` is one WebSocket frame's packets or one chunk of a replay tape. Arrays, not objects:
the engine works on whole batches. Times are int64 epoch nanoseconds (UTC).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from .timeframes import IST_OFFSET_NS, NS


@dataclass(slots=True)
class TickBatch:
    """Columnar ticks in arrival order.

    Attributes
    ----------
    token : int64 instrument tokens
    ts : int64 epoch nanoseconds (exchange timestamp, else receive time)
    price : float64 last traded price in rupees
    volume : float64 cumulative day volume (``volume_traded``); NaN where the packet has none
    oi : float64 open interest; NaN where the packet has none
    """

    token: np.ndarray
    ts: np.ndarray
    price: np.ndarray
    volume: np.ndarray
    oi: np.ndarray

    def __post_init__(self) -> None:
        self.token = np.asarray(self.token, dtype=np.int64)
        self.ts = np.asarray(self.ts, dtype=np.int64)
        self.price = np.asarray(self.price, dtype=np.float64)
        n = len(self.token)
        self.volume = (
            np.full(n, np.nan) if self.volume is None else np.asarray(self.volume, dtype=np.float64)
        )
        self.oi = np.full(n, np.nan) if self.oi is None else np.asarray(self.oi, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.token)

    @classmethod
    def empty(cls) -> "TickBatch":
        z = np.empty(0)
        return cls(z.astype(np.int64), z.astype(np.int64), z, z, z)

    @classmethod
    def concat(cls, batches: Iterable["TickBatch"]) -> "TickBatch":
        bs = [b for b in batches if len(b)]
        if not bs:
            return cls.empty()
        return cls(*(np.concatenate([getattr(b, f) for b in bs]) for f in cls.__slots__))

    def take(self, idx: Any) -> "TickBatch":
        return TickBatch(*(getattr(self, f)[idx] for f in self.__slots__))

    @classmethod
    def from_ticks(cls, ticks: list[dict], receive_ns: int | None = None) -> "TickBatch":
        """Build from kiteconnect-style tick dicts (``on_ticks`` payload).

        ``exchange_timestamp`` (or ``timestamp``/``last_trade_time``) is a naive datetime in the
        machine's local zone, as kiteconnect makes it; ticks without one take ``receive_ns``.
        """
        recv = time.time_ns() if receive_ns is None else receive_ns
        n = len(ticks)
        token = np.empty(n, np.int64)
        ts = np.empty(n, np.int64)
        price = np.empty(n)
        vol = np.full(n, np.nan)
        oi = np.full(n, np.nan)
        for i, t in enumerate(ticks):
            token[i] = t["instrument_token"]
            price[i] = t.get("last_price", np.nan)
            stamp = t.get("exchange_timestamp") or t.get("timestamp")
            ts[i] = to_epoch_ns(stamp) if stamp is not None else recv
            v = t.get("volume_traded", t.get("volume"))
            if v is not None:
                vol[i] = v
            o = t.get("oi")
            if o is not None:
                oi[i] = o
        return cls(token, ts, price, vol, oi)


def to_epoch_ns(value: Any) -> int:
    """Convert a timestamp to epoch ns.

    Naive ``datetime`` objects are taken in the machine's local zone (kiteconnect builds them with
    ``datetime.fromtimestamp``); tz-aware ones are exact; numbers are epoch seconds.
    """
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            # datetime.timestamp() on a naive value interprets it in the local zone (like
            # fromtimestamp did when kiteconnect built it), so the round trip is exact.
            return int(round(value.timestamp() * 1e6)) * 1000
        return int(round(value.timestamp() * 1e6)) * 1000
    if isinstance(value, (int, float, np.integer, np.floating)):
        return int(value * NS)
    raise TypeError(f"cannot read a timestamp from {value!r}")


def ist_naive_to_epoch_ns(values: np.ndarray) -> np.ndarray:
    """datetime64 values holding IST wall-clock times -> epoch ns."""
    return values.astype("datetime64[ns]").astype(np.int64) - IST_OFFSET_NS
