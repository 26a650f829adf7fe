"""The engine's flat fill (``fill_empty``, README.md "Candle conventions").

``FlatFill`` makes the flat candles (previous close, volume 0) between two candles of one instrument
on the same IST day, remembering per timeframe the last candle emitted per instrument;
``core.engine.Engine`` calls it with its columns.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .candles import Candle, CandleBatch
from .state import NONE, Series
from .timeframes import bucket_end, trading_day


class FlatFill:
    """The flat candles of ``fill_empty``; ``prev[tf][token]`` = (start, close) of the last candle
    emitted (or filled) for the instrument."""

    def __init__(self) -> None:
        self.prev: dict[str, dict[int, tuple[int, float]]] = {}

    def drop(self, label: str) -> None:
        """Forget a timeframe no longer aggregated."""
        self.prev.pop(label, None)

    def fill(self, s: Series, closed: CandleBatch, anchor_of: Callable[[int], int]) -> CandleBatch:
        """``closed`` with flat candles inserted between consecutive candles of one instrument on
        the same IST day."""
        if s.tf.is_day:
            return closed
        prev_bucket = self.prev.setdefault(s.tf.label, {})  # last emitted candle per token
        rows: list[Candle] = []
        for c in closed:
            pb = prev_bucket.get(c.token)
            if pb is not None:
                rows += self.flats(s, c.token, pb, c.start, anchor_of)
            rows.append(c)
            prev_bucket[c.token] = (c.start, c.close)
        return CandleBatch.from_candles(s.tf.label, rows)

    @staticmethod
    def flats(s: Series, token: int, pb: tuple[int, float], until: int,
              anchor_of: Callable[[int], int]) -> list[Candle]:
        """Flat candles (close ``pb[1]``) for the buckets after ``pb[0]`` and before ``until``, same IST day."""
        if trading_day(np.int64(pb[0])) != trading_day(np.int64(until)):
            return []
        anchor = anchor_of(token)
        rows = []
        t = int(bucket_end(np.int64(pb[0]), s.tf, anchor))
        while t < until:
            rows.append(Candle(token, s.tf.label, t, pb[1], pb[1], pb[1], pb[1], 0.0, math.nan, 0))
            t = int(bucket_end(np.int64(t), s.tf, anchor))
        return rows

    def forward(self, s: Series, slots: np.ndarray, slot_tokens: np.ndarray,
                anchor_of: Callable[[int], int]) -> list[Candle]:
        """Flat candles up to each instrument's new forming candle, emitted as soon as it opens (its
        empty buckets are over then); the last of them becomes the instrument's last closed candle."""
        prev_bucket = self.prev.setdefault(s.tf.label, {})
        rows: list[Candle] = []
        for sl in slots.tolist():
            tok = int(slot_tokens[sl])
            pb = prev_bucket.get(tok)
            fb = int(s.f["bucket"][sl])
            if pb is None or fb == NONE or fb <= pb[0]:
                continue
            flats = self.flats(s, tok, pb, fb, anchor_of)
            if flats:
                rows += flats
                last = flats[-1]
                prev_bucket[tok] = (last.start, last.close)
                s.remember_closed(np.array([sl]), np.array([last.start]), np.array([last.open]),
                                  np.array([last.high]), np.array([last.low]), np.array([last.close]),
                                  np.zeros(1), np.full(1, np.nan), np.zeros(1, np.int64),
                                  np.array([NONE]))
        return rows

    def amended(self, label: str, token: int, bucket: int, close: float) -> None:
        """An amended candle: the flat candles after it carry its new close."""
        prev = self.prev.get(label, {})
        if token in prev and prev[token][0] == bucket:
            prev[token] = (prev[token][0], close)
