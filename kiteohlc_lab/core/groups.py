"""A batch's candle pieces: the runs of ticks of one instrument and one bucket (core.engine).

``tick_groups`` makes them from a batch's ticks in slot-grouped order (every tick read once per
column); ``coarsen`` makes a coarser timeframe's from a finer one's when every bucket of the finer
one lies inside one of the coarser (``nests``): 5m and 15m candles from the 1m pieces of the same
batch, with a pass over the ticks only for the volume (summed over the same ticks in the same order
as ``tick_groups`` would, so the floats are the same). Both give the raw pieces, before the engine
merges the first of each instrument into its forming candle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .late import buckets
from .ticks import is_nan_column, run_starts
from .timeframes import Timeframe


@dataclass
class Groups:
    """One row per piece; ``starts``/``ends``: its first and last tick (indices into the ticks)."""

    slot: np.ndarray
    bucket: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    vol: np.ndarray
    ticks: np.ndarray
    last_ts: np.ndarray
    oi: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


def nests(fine: Timeframe, coarse: Timeframe) -> bool:
    """Whether every bucket of ``fine`` lies inside one bucket of ``coarse`` (same session-open grid:
    a multiple of an intraday size; any intraday bucket inside its IST day, as buckets are cut at
    midnight)."""
    return not fine.is_day and fine.seconds < coarse.seconds and (
        coarse.is_day or coarse.seconds % fine.seconds == 0)


def _last_valid(oi: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The last non-NaN value of ``oi`` in each run ``starts..ends`` (NaN where there is none)."""
    if is_nan_column(oi) or np.isnan(oi).all():
        return np.full(len(starts), np.nan)
    valid = np.where(np.isnan(oi), -1, np.arange(len(oi)))
    lastv = np.maximum.accumulate(valid)[ends]
    return np.where(lastv >= starts, oi[np.maximum(lastv, 0)], np.nan)


def runs(first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, last index) of each run of a mask that is True where a run starts."""
    starts = np.flatnonzero(first)
    ends = np.empty(len(starts), np.int64)
    ends[:-1] = starts[1:] - 1
    ends[-1] = len(first) - 1
    return starts, ends


def tick_groups(slot: np.ndarray, b: np.ndarray, p: np.ndarray, inc: np.ndarray, ts: np.ndarray,
                oi: np.ndarray, inst_start: np.ndarray) -> Groups:
    """The pieces of ticks in slot-grouped order: ``b`` each tick's bucket, ``p`` price, ``inc`` its
    volume increment, ``inst_start`` True at each instrument's first tick."""
    st = run_starts(b)
    st[1:] |= inst_start[1:]
    starts, ends = runs(st)
    return Groups(slot[starts], b[starts], p[starts], np.maximum.reduceat(p, starts),
                  np.minimum.reduceat(p, starts), p[ends], np.add.reduceat(inc, starts),
                  (ends - starts + 1).astype(np.int64), ts[ends], _last_valid(oi, starts, ends),
                  starts, ends)


def coarsen(fine: Groups, bucket: np.ndarray, inc: np.ndarray) -> Groups:
    """A coarser timeframe's pieces from ``fine``'s (``nests``): ``bucket`` is the coarser bucket of
    each fine piece; ``inc`` the ticks' volume increments."""
    first = run_starts(bucket)
    first[1:] |= fine.slot[1:] != fine.slot[:-1]
    cs, ce = runs(first)
    starts, ends = fine.starts[cs], fine.ends[ce]
    return Groups(fine.slot[cs], bucket[cs], fine.open[cs], np.maximum.reduceat(fine.high, cs),
                  np.minimum.reduceat(fine.low, cs), fine.close[ce], np.add.reduceat(inc, starts),
                  (ends - starts + 1).astype(np.int64), fine.last_ts[ce], _last_valid(fine.oi, cs, ce),
                  starts, ends)


def in_order_pieces(tfs: list[Timeframe], slot, ts, price, inc, oi, gstart, anchor,
                    grid) -> dict[str, Groups]:
    """Every timeframe's pieces of an in-order batch (no late ticks: ``late.batch_clock``), ticks
    in slot-grouped order: finest first, each from the ticks or from the pieces of a finer one it
    ``nests``. ``anchor`` per tick; ``grid`` the batch's ``timeframes.day_grid`` or None."""
    done: list[tuple[Timeframe, Groups]] = []
    for tf in sorted(tfs, key=lambda t: t.seconds):
        fine = next((g for f, g in reversed(done) if nests(f, tf)), None)
        if fine is None:
            g = tick_groups(slot, buckets(tf, anchor, ts, grid)[0], price, inc, ts, oi, gstart)
        else:
            at = fine.starts  # a fine piece's first tick lies in the coarse bucket of all of it
            sub = None if grid is None else (grid[0], grid[1][at])
            g = coarsen(fine, buckets(tf, anchor[at], ts[at], sub)[0], inc)
        done.append((tf, g))
    return {tf.label: g for tf, g in done}
