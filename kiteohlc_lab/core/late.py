"""Late ticks (README.md "Candle conventions"): which ticks are late, and amends.

A tick is late for a timeframe when its bucket is older than its instrument's newest bucket, or its
candle was already closed by the clock (``end + grace``). ``lateness`` finds them for a batch (ticks
grouped by instrument slot); with ``late_policy="amend"``, ``amend_late`` folds them into their
instrument's last closed candle. ``core.engine.Engine`` calls both with its columns.
"""

from __future__ import annotations

import math

import numpy as np

from .candles import Candle
from .fill import FlatFill
from .state import NONE, Series
from .timeframes import DAY_NS, IST_OFFSET_NS, NS, Timeframe, bucket_end, bucket_start, grid_start


def lateness(s: Series, anchor: np.ndarray, slot, ts, clock, gstart, grace_ns: int,
             grid: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bucket of each tick, and whether it is late (older than its instrument's newest bucket,
    or its candle already closed by the clock ``grace_ns`` after its end). Ticks grouped by slot;
    ``anchor`` per tick; ``grid``: the batch's ``timeframes.day_grid`` (or None); no state is
    changed. An in-order batch (``batch_clock``) has none: its buckets are ``buckets``'."""
    tf = s.tf
    b, near_midnight = buckets(tf, anchor, ts, grid)
    late_clock = b + (tf.ns + grace_ns) <= clock
    if near_midnight:
        # a bucket cut at midnight ends before start + size: only those near 00:00 IST can be
        tod = (b + IST_OFFSET_NS) % DAY_NS
        near = (tod > DAY_NS - tf.ns) | (tod < tf.ns)
        if near.any():
            late_clock[near] = bucket_end(b[near], tf, anchor[near]) + grace_ns <= clock[near]
    # the usual case: buckets never go back within an instrument, nor behind its forming candle
    up = np.empty(len(b), bool)
    up[0] = True
    np.greater_equal(b[1:], b[:-1], out=up[1:])
    up |= gstart
    if up.all():
        gs = np.flatnonzero(gstart)
        if (b[gs] >= s.f["bucket"][slot[gs]]).all():
            return b, late_clock
    sb = s.f["bucket"][slot]
    # running max bucket per instrument (incl. its forming candle), via an offset key in seconds
    bs = b // NS
    lo = int(bs.min()) - 1
    sbs = np.where(sb == NONE, lo, sb // NS)
    span = int(max(bs.max(), sbs.max()) - lo + 2)
    gid = np.cumsum(gstart) - 1  # each tick's instrument group
    key = gid * span + (bs - lo)
    gs = np.flatnonzero(gstart)
    key[gs] = np.maximum(key[gs], gid[gs] * span + (sbs[gs] - lo))
    run = np.maximum.accumulate(key) - gid * span + lo
    return b, (bs < run) | late_clock


def batch_clock(ts: np.ndarray, clock: int) -> tuple[np.ndarray, bool]:
    """(the clock each tick of a batch sees, arrival order: the running maximum of the stamps from
    ``clock`` on; whether the batch is in order). A batch whose stamps never go back, from the clock
    on (a sorted tape's), is its own clock, and no tick of it can be late: each is at or after every
    earlier tick of its instrument, and inside its own bucket, which its own stamp cannot have
    closed (``lateness`` need not run: the engine takes ``buckets`` and core.groups)."""
    if bool(ts[0] >= clock) and bool((ts[1:] >= ts[:-1]).all()):
        return ts, True
    out = np.maximum.accumulate(ts)
    if clock != NONE:
        np.maximum(out, clock, out=out)
    return out, False


def buckets(tf: Timeframe, anchor: np.ndarray, ts: np.ndarray, grid: tuple | None = None) -> tuple[np.ndarray, bool]:
    """(the bucket start of each tick, whether any tick lies near 00:00 IST, where buckets are cut)."""
    near_midnight = not tf.is_day and _near_midnight(ts, tf)
    if grid is not None and not tf.is_day and not near_midnight:
        return grid_start(grid, tf), near_midnight
    return bucket_start(ts, tf, anchor, cut_free=not near_midnight), near_midnight


def _near_midnight(ts: np.ndarray, tf: Timeframe) -> bool:
    """Whether any tick lies within ``size`` of 00:00 IST (only then can its bucket be cut there):
    two reductions instead of a per-tick modulo, as tapes of a session never come near midnight."""
    lo, hi = int(ts.min()) + IST_OFFSET_NS, int(ts.max()) + IST_OFFSET_NS
    day = (lo // DAY_NS) * DAY_NS
    return lo - day < tf.ns or hi - day >= DAY_NS - tf.ns


def amend_late(s: Series, idx, slot, b, ts, price, inc, oi, slot_tokens: np.ndarray,
               fill: FlatFill | None) -> list[Candle]:
    """Fold the late ticks ``idx`` into their instrument's last closed candle where it is their
    bucket (high/low, close if not older than its last tick, volume, oi); the amended candles
    (``amended=True``), one per instrument. ``fill``: the engine's flat fill, if on."""
    C = s.c
    amended: dict[int, Candle] = {}
    for i in idx:
        sl = int(slot[i])
        if C["bucket"][sl] != b[i]:
            continue
        if ts[i] >= C["last_ts"][sl]:
            C["close"][sl] = price[i]
            C["last_ts"][sl] = ts[i]
        C["high"][sl] = max(C["high"][sl], price[i])
        C["low"][sl] = min(C["low"][sl], price[i])
        C["vol"][sl] += inc[i]
        C["ticks"][sl] += 1
        if not math.isnan(oi[i]):
            C["oi"][sl] = oi[i]
        if fill is not None:  # flat candles after it carry its amended close
            fill.amended(s.tf.label, int(slot_tokens[sl]), int(C["bucket"][sl]), float(C["close"][sl]))
        amended[sl] = Candle(
            int(slot_tokens[sl]), s.tf.label, int(C["bucket"][sl]), float(C["open"][sl]),
            float(C["high"][sl]), float(C["low"][sl]), float(C["close"][sl]), float(C["vol"][sl]),
            float(C["oi"][sl]), int(C["ticks"][sl]), True, True,
        )
    return list(amended.values())
