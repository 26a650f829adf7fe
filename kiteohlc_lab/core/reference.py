"""A deliberately simple, one-tick-at-a-time statement of the engine's rules.

Used by the property tests (the engine must agree with it on any tape) and as the "naive per-tick dict
aggregator" baseline of the benchmark. Clarity over speed: no numpy in the loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .candles import Candle
from .ticks import TickBatch
from .timeframes import NS, Timeframe, anchor_for_tokens, bucket_start, parse_timeframe, trading_day


@dataclass
class _C:
    start: int
    open: float
    high: float
    low: float
    close: float
    vol: float = 0.0
    oi: float = math.nan
    ticks: int = 0
    last_ts: int = 0


@dataclass
class _Vol:
    prev: float | None = None
    prev_ts: int = 0
    segmax: float = 0.0
    day: int = 0


@dataclass
class ReferenceAggregator:
    timeframes: list
    grace: float = 5.0
    late_policy: str = "drop"
    session_open: dict | None = None
    closed: list[Candle] = field(default_factory=list)
    late: int = 0

    def __post_init__(self) -> None:
        self.tfs: list[Timeframe] = [parse_timeframe(t) for t in self.timeframes]
        self.clock: int | None = None
        self.forming: dict[tuple[int, str], _C] = {}
        self.last_closed: dict[tuple[int, str], _C] = {}
        self.vol: dict[int, _Vol] = {}
        self.anchor: dict[int, int] = {}

    def _close(self, key: tuple[int, str], c: _C, amended: bool = False) -> None:
        self.closed.append(
            Candle(key[0], key[1], c.start, c.open, c.high, c.low, c.close, c.vol, c.oi, c.ticks,
                   True, amended)
        )

    def _increment(self, token: int, ts: int, v: float) -> float:
        if math.isnan(v):
            return 0.0
        st = self.vol.setdefault(token, _Vol())
        day = int(trading_day(ts))
        if st.prev is None:
            inc, st.segmax = 0.0, v
        elif day != st.day or (v < st.prev and ts >= st.prev_ts):
            inc, st.segmax = v, v
        else:
            inc = max(0.0, v - st.segmax)
            st.segmax = max(st.segmax, v)
        st.prev, st.prev_ts, st.day = v, ts, day
        return inc

    def tick(self, token: int, ts: int, price: float, volume: float = math.nan, oi: float = math.nan) -> None:
        self.clock = ts if self.clock is None else max(self.clock, ts)
        self.advance(self.clock)
        inc = self._increment(token, ts, volume)
        if token not in self.anchor:
            self.anchor[token] = int(anchor_for_tokens([token], self.session_open)[0])
        was_late = False
        for tf in self.tfs:
            key = (token, tf.label)
            b = int(bucket_start(ts, tf, self.anchor[token]))
            cur = self.forming.get(key)
            last = self.last_closed.get(key)
            newest = max(cur.start if cur else -(2**63), last.start if last else -(2**63))
            # late: older than the newest candle, or its candle was already closed by the clock
            if b < newest or (cur is None and b + tf.ns + int(self.grace * NS) <= self.clock):
                was_late = True
                if self.late_policy == "amend" and last is not None and last.start == b:
                    if ts >= last.last_ts:
                        last.close, last.last_ts = price, ts
                    last.high, last.low = max(last.high, price), min(last.low, price)
                    last.vol += inc
                    last.ticks += 1
                    if not math.isnan(oi):
                        last.oi = oi
                    self._close(key, last, amended=True)
                continue
            if cur is not None and b > cur.start:
                self._close(key, cur)
                self.last_closed[key] = cur
                del self.forming[key]
                cur = None
            if cur is None:
                cur = self.forming[key] = _C(b, price, price, price, price)
            cur.high, cur.low, cur.close = max(cur.high, price), min(cur.low, price), price
            cur.vol += inc
            cur.ticks += 1
            cur.last_ts = ts
            if not math.isnan(oi):
                cur.oi = oi
        self.late += was_late

    def advance(self, now: int) -> None:
        self.clock = now if self.clock is None else max(self.clock, now)
        for key, c in list(self.forming.items()):
            tf = parse_timeframe(key[1])
            if c.start + tf.ns + int(self.grace * NS) <= self.clock:
                self._close(key, c)
                self.last_closed[key] = c
                del self.forming[key]

    def flush(self) -> None:
        for key, c in list(self.forming.items()):
            self._close(key, c)
            self.last_closed[key] = c
            del self.forming[key]

    def feed(self, batch: TickBatch) -> None:
        for i in range(len(batch)):
            self.tick(int(batch.token[i]), int(batch.ts[i]), float(batch.price[i]),
                      float(batch.volume[i]), float(batch.oi[i]))
