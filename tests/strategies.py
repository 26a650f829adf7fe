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


KINDS = ["step"] * 8 + ["same", "back", "late", "dup", "jump", "day", "zero_vol", "stale_vol", "swap", "nan_vol",
                        "midnight"]
BOGUS = ["bad_price", "bad_volume", "stamp_zero", "stamp_future", "lone_jump"]
BAD_PRICES = [math.nan, 0.0, -1.5, -100.0, math.inf, -math.inf]
BAD_VOLUMES = [-1.0, -12345.0, math.inf]


def _event(kinds):
    """One step of a tape: (kind, token index, a, b, price, oi?) drawn flat, so that shrinking works."""
    return st.tuples(st.sampled_from(kinds), st.integers(0, 4), st.integers(0, 4000), st.integers(0, 999),
                     st.integers(1000, 1100), st.integers(0, 10**6))


@st.composite
def messy_tapes(draw, max_rows: int = 120, bogus: bool = True):
    """Several instruments, out-of-order and late ticks, duplicates, volume glitches (a 0, a stale
    lower snapshot, a same-second pair swapped), fractional volumes, absent volumes, day changes,
    MCX across midnight, and (``bogus``) bad prices, bad volumes and bad stamps (0, 10 years ahead,
    a lone jump the tape does not follow)."""
    t = draw(st.sampled_from(STARTS)) + draw(st.integers(0, 120)) * S
    tokens = draw(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=5, unique=True))
    fractional = draw(st.booleans())
    cum = {k: float(draw(st.integers(0, 10_000))) for k in tokens}
    n = draw(st.integers(1, max_rows))  # a drawn length: long tapes are common, and shrink well
    events = draw(st.lists(_event(KINDS + (BOGUS if bogus else [])), min_size=n, max_size=n))
    rows: list[tuple] = []
    for kind, ti, a, b, p, o in events:
        tok = tokens[ti % len(tokens)]
        price = p / 10
        oi = float(o) if tok in HAS_OI and o % 2 else math.nan
        vol = math.nan if tok == IDX else cum[tok]
        step = (a % 500) / 100 if fractional and b % 2 else float(a % 500)
        if kind == "dup" and rows:
            rows.append(rows[-1])
            continue
        if kind == "step":
            t += (a % 41) * S + b * 1_000_000
        elif kind == "back":
            rows.append((tok, t - (1 + a % 400) * S, price, vol, oi))
            continue
        elif kind == "late":  # a few seconds late: around the grace
            rows.append((tok, t - (1 + a % 12) * S, price, vol, oi))
            continue
        elif kind == "jump":
            t += (61 + a) * S
        elif kind == "day":
            t += DAY if b % 2 else DAY - (a % 3600) * S
            for k in cum:
                cum[k] = float((a + 7 * b + k) % 300)
        elif kind == "midnight":  # to just before the next IST midnight, then time goes on
            local = (t + 19_800 * S) % DAY
            t += DAY - local - (1 + a % 300) * S
        elif kind == "zero_vol" and tok != IDX:
            rows.append((tok, t, price, 0.0, oi))
            continue
        elif kind == "stale_vol" and tok != IDX:
            rows.append((tok, t, price, max(0.0, cum[tok] - 1 - a % 2000), oi))
            continue
        elif kind == "swap" and tok != IDX:
            lo = cum[tok] + step
            hi = lo + 1 + b % 50
            cum[tok] = hi
            rows.append((tok, t, price, hi, oi))
            rows.append((tok, t, price, lo, oi))
            continue
        elif kind == "nan_vol":
            rows.append((tok, t, price, math.nan, oi))
            continue
        elif kind == "bad_price":
            rows.append((tok, t, BAD_PRICES[a % len(BAD_PRICES)], vol, oi))
            continue
        elif kind == "bad_volume" and tok != IDX:
            rows.append((tok, t, price, BAD_VOLUMES[a % len(BAD_VOLUMES)], oi))
            continue
        elif kind == "stamp_zero":
            rows.append((tok, [0, S, ist("1999-12-31 23:59:59")][a % 3], price, vol, oi))
            continue
        elif kind == "stamp_future":
            rows.append((tok, t + 10 * YEAR + a * S, price, vol, oi))
            continue
        elif kind == "lone_jump":
            rows.append((tok, t + (61 + a * 60) * S, price, vol, oi))
            continue
        if tok != IDX:
            cum[tok] += step
            vol = cum[tok]
        rows.append((tok, int(t), price, vol, oi))
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


@st.composite
def live_frames(draw, max_frames: int = 40):
    """A live feed: frames ``(now_ns, rows, resumed_tokens)`` where now_ns is the exchange clock at the
    frame's arrival (monotone), rows stamped 0-3 s before it (sometimes later, sometimes ahead of it by
    more than 10 s, sometimes Kite's cached tick of yesterday, sometimes a bad price), heartbeat frames
    with no rows (a quiet market), outages, and reconnects (``resumed_tokens``: resume before the
    frame) after which the cumulative volumes have moved on."""
    now = draw(st.sampled_from(STARTS)) + draw(st.integers(0, 60)) * S
    tokens = draw(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=4, unique=True))
    cum = {k: float(draw(st.integers(0, 10_000))) for k in tokens}
    frames = []
    n = draw(st.integers(1, max_frames))
    events = draw(st.lists(st.tuples(st.sampled_from(["ticks"] * 6 + ["heartbeat", "quiet", "reconnect"]),
                                     st.integers(0, 5000), st.lists(_event(["step", "step", "step", "step", "late",
                                                                            "ahead", "cached", "bad_price",
                                                                            "zero_vol", "step"]), max_size=6)),
                           min_size=n, max_size=n))
    for kind, a, ticks in events:
        resumed: list[int] = []
        if kind == "quiet":
            now += (30 + a % 600) * S
        elif kind == "reconnect":
            now += (5 + a % 300) * S
            resumed = list(tokens)
            for k in cum:
                cum[k] += float(a % 3000)
        else:
            now += (a % 6) * S + (a % 997) * 1_000_000
        rows = []
        if kind != "heartbeat":
            for tk, ti, x, y, p, o in ticks:
                tok = tokens[ti % len(tokens)]
                if tok != IDX:
                    cum[tok] += float(x % 300)
                vol = math.nan if tok == IDX else cum[tok]
                oi = float(o) if tok in HAS_OI and o % 2 else math.nan
                ts = now - (x % 4) * S - y * 1_000_000
                price = p / 10
                if tk == "late":
                    ts = now - (4 + x % 12) * S
                elif tk == "ahead":
                    ts = now + (10 + x % 90) * S + y * 1_000_000
                elif tk == "cached":
                    ts = now - (ts + 19_800 * S) % DAY - (1 + x % 3600) * S  # before today's 00:00
                elif tk == "bad_price":
                    price = BAD_PRICES[x % len(BAD_PRICES)]
                elif tk == "zero_vol" and tok != IDX:
                    vol = 0.0
                rows.append((tok, int(ts), price, vol, oi))
        frames.append((int(now), rows, resumed))
    return frames
