"""Hypothesis strategies for tick tapes with the mess real Kite feeds send.

A tape is ``(rows, cuts)``: rows are ``(token, ts_ns, price, volume, oi)`` in arrival order, cuts are
sorted row positions where the tape is split into batches. ``to_batch`` / ``batches`` turn them into
``TickBatch`` objects (the only thing taken from the package).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from hypothesis import strategies as st

from kiteohlc_lab.core.ticks import TickBatch

S = 1_000_000_000
DAY = 86_400 * S
YEAR = 365 * DAY

EQ = 738561        # RELIANCE, NSE equity (segment 1)
EQ2 = 408065       # INFY, NSE equity
IDX = 256265       # NIFTY 50, index (segment 9): no volume
MCX = 53505799     # an MCX future (segment 7): trades across IST midnight, has OI
NCO = 4267276      # an NCO contract (segment 12)
TOKENS = [EQ, EQ2, IDX, MCX, NCO]
HAS_OI = {MCX, NCO}

TFS = ["10s", "1m", "5m", "7m", "15m", "1h", "1d"]


def ist(s: str) -> int:
    return pd.Timestamp(s, tz="Asia/Kolkata").value


STARTS = [ist("2026-11-25 09:14:30"), ist("2026-11-25 15:25:00"), ist("2026-11-25 23:50:00"),
          ist("2026-11-25 08:59:00")]


def to_batch(rows) -> TickBatch:
    if not rows:
        return TickBatch.empty()
    rows = [tuple(r) + (math.nan,) * (5 - len(r)) for r in rows]  # (token, ts, price[, volume[, oi]])
    tok, ts, price, vol, oi = zip(*rows)
    return TickBatch(np.array(tok, dtype=np.int64), np.array(ts, dtype=np.int64), np.array(price, dtype=float),
                     np.array(vol, dtype=float), np.array(oi, dtype=float))


def batches(rows, cuts) -> list[TickBatch]:
    b = to_batch(rows)
    bounds = [0, *cuts, len(rows)]
    return [b.take(slice(a, z)) for a, z in zip(bounds, bounds[1:])]


def _volume_step(draw, fractional: bool) -> float:
    if fractional and draw(st.booleans()):
        return draw(st.integers(0, 50_000)) / 100  # 0.01 lots (MCX/NCO quantities can be fractional)
    return float(draw(st.integers(0, 500)))


@st.composite
def messy_tapes(draw, max_rows: int = 120, bogus: bool = True):
    """Several instruments, out-of-order and late ticks, duplicates, volume glitches (a 0, a stale
    lower snapshot, a same-second pair swapped), fractional volumes, absent volumes, day changes,
    MCX across midnight, and (``bogus``) bad prices, bad volumes and bad stamps (0, 10 years ahead,
    a lone jump the tape does not follow)."""
    n = draw(st.integers(1, max_rows))
    t = draw(st.sampled_from(STARTS)) + draw(st.integers(0, 120)) * S
    tokens = draw(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=5, unique=True))
    fractional = draw(st.booleans())
    cum = {k: float(draw(st.integers(0, 10_000))) for k in tokens}
    kinds = ["step"] * 8 + ["same", "back", "late", "dup", "jump", "day", "zero_vol", "stale_vol", "swap",
                            "nan_vol", "midnight"]
    if bogus:
        kinds += ["bad_price", "bad_volume", "stamp_zero", "stamp_future", "lone_jump"]
    rows: list[tuple] = []

    def price():
        return draw(st.integers(1000, 1100)) / 10

    def oi_for(tok):
        if tok in HAS_OI and draw(st.booleans()):
            return float(draw(st.integers(1, 10**6)))
        return math.nan

    def vol_for(tok):
        return math.nan if tok == IDX else cum[tok]

    while len(rows) < n:
        kind = draw(st.sampled_from(kinds))
        tok = draw(st.sampled_from(tokens))
        if kind == "dup" and rows:
            rows.append(rows[-1])
            continue
        if kind == "step":
            t += draw(st.integers(0, 40)) * S + draw(st.integers(0, 999)) * 1_000_000
        elif kind == "back":
            rows.append((tok, t - draw(st.integers(1, 400)) * S, price(), vol_for(tok), oi_for(tok)))
            continue
        elif kind == "late":  # a few seconds late: around the grace
            rows.append((tok, t - draw(st.integers(1, 12)) * S, price(), vol_for(tok), oi_for(tok)))
            continue
        elif kind == "jump":
            t += draw(st.integers(61, 4000)) * S
        elif kind == "day":
            t += DAY if draw(st.booleans()) else DAY - draw(st.integers(0, 3600)) * S
            for k in cum:
                cum[k] = float(draw(st.integers(0, 300)))
        elif kind == "midnight":  # to just before the next IST midnight, then time goes on
            local = (t + 19_800 * S) % DAY
            t += DAY - local - draw(st.integers(1, 300)) * S
        elif kind == "zero_vol" and tok != IDX:
            rows.append((tok, t, price(), 0.0, oi_for(tok)))
            continue
        elif kind == "stale_vol" and tok != IDX:
            rows.append((tok, t, price(), max(0.0, cum[tok] - draw(st.integers(1, 2000))), oi_for(tok)))
            continue
        elif kind == "swap" and tok != IDX:
            a = cum[tok] + _volume_step(draw, fractional)
            b = a + _volume_step(draw, fractional)
            cum[tok] = b
            rows.append((tok, t, price(), b, oi_for(tok)))
            rows.append((tok, t, price(), a, oi_for(tok)))
            continue
        elif kind == "nan_vol":
            rows.append((tok, t, price(), math.nan, oi_for(tok)))
            continue
        elif kind == "bad_price":
            p = draw(st.sampled_from([math.nan, 0.0, -draw(st.integers(1, 1000)) / 10, math.inf, -math.inf]))
            rows.append((tok, t, p, vol_for(tok), oi_for(tok)))
            continue
        elif kind == "bad_volume" and tok != IDX:
            v = draw(st.sampled_from([-1.0, -float(draw(st.integers(1, 10**6))), math.inf]))
            rows.append((tok, t, price(), v, oi_for(tok)))
            continue
        elif kind == "stamp_zero":
            rows.append((tok, draw(st.sampled_from([0, S, ist("1999-12-31 23:59:59")])), price(), vol_for(tok),
                         oi_for(tok)))
            continue
        elif kind == "stamp_future":
            rows.append((tok, t + 10 * YEAR + draw(st.integers(0, 10**6)) * S, price(), vol_for(tok), oi_for(tok)))
            continue
        elif kind == "lone_jump":
            rows.append((tok, t + draw(st.integers(61, 3 * 86_400)) * S, price(), vol_for(tok), oi_for(tok)))
            continue
        if tok != IDX:
            cum[tok] += _volume_step(draw, fractional)
        rows.append((tok, int(t), price(), vol_for(tok), oi_for(tok)))
    rows = rows[:n]
    cuts = sorted(draw(st.lists(st.integers(0, len(rows)), max_size=8)))
    return rows, cuts


@st.composite
def in_order_tapes(draw, max_rows: int = 150):
    """Ticks in time order, as a live feed mostly delivers them, with the odd day change and the odd
    volume glitch; random batch cuts. No bad ticks."""
    n = draw(st.integers(1, max_rows))
    t = draw(st.sampled_from(STARTS))
    tokens = draw(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=5, unique=True))
    cum = {k: float(draw(st.integers(0, 10_000))) for k in tokens}
    rows = []
    for _ in range(n):
        t += draw(st.integers(0, 30)) * S
        if draw(st.integers(0, 60)) == 0:
            t += DAY
            for k in cum:
                cum[k] = float(draw(st.integers(0, 300)))
        tok = draw(st.sampled_from(tokens))
        cum[tok] += draw(st.integers(0, 500))
        vol = math.nan if tok == IDX else cum[tok]
        if tok != IDX and draw(st.integers(0, 30)) == 0:
            vol = 0.0  # a glitch
        oi = float(draw(st.integers(1, 10**6))) if tok in HAS_OI and draw(st.booleans()) else math.nan
        rows.append((tok, int(t), draw(st.integers(1000, 1100)) / 10, vol, oi))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=8)))
    return rows, cuts
