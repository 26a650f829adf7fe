"""The aggregation engine: whole tick batches in, closed candles out, for many instruments and timeframes.

The rules are README.md "Candle conventions" (tests/oracle.py restates them one tick at a time, sharing
no code with this module). In short:

* A tick belongs to the bucket holding its timestamp (``timeframes.bucket_start``: intraday buckets on
  the session-open grid of the tick's IST day, cut at midnight; day buckets at 00:00 IST).
* open/high/low/close come from ``last_price`` in arrival order among the ticks accepted into a candle.
* Volume: per instrument, M is the running maximum of the cumulative day volume ``volume_traded`` over
  the current IST day; a tick adds ``max(0, v - M)``. A lower figure is a glitch (adds 0, counted in
  ``stats['volume_glitches']``); only a later IST day resets M to 0. The first tick ever, and the first
  after ``resume()`` (a gap of unknown length), adds 0 and sets the baseline. Indices have volume 0.
* ``oi`` is the last open interest seen in the candle (NaN where the feed has none).
* Lifecycle: a candle is forming until a tick of the same instrument for a later bucket arrives, or the
  clock passes ``end + grace``; then it is closed and emitted once. The clock is event time (the
  highest tick timestamp seen, any instrument) and, for live sources, also the exchange clock through
  ``advance``. A replay therefore yields exactly what a live run would.
* Late ticks (for a bucket older than the instrument's newest candle, or whose candle the clock has
  already closed) follow ``late_policy``: ``"drop"`` (default) counts them in ``stats['late']``;
  ``"amend"`` folds them into the instrument's most recently closed candle when it is that bucket
  (high/low, close if not older than its last tick, volume) and re-emits it with ``amended=True``;
  older ones are dropped and counted. Duplicates change nothing (same price; no volume increment).
* Empty buckets produce no candle unless ``fill_empty=True``: then flat candles (previous close,
  volume 0) fill the gaps between two candles of the same instrument on the same IST day.

Bad ticks (NaN/zero/negative prices, bogus stamps) never reach the engine: ``core.sanity.TickFilter``
rejects them first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Iterable

import numpy as np

from .candles import Candle, CandleBatch
from .ticks import TickBatch
from .timeframes import (
    DAY_NS,
    IST_OFFSET_NS,
    NS,
    Timeframe,
    anchor_for_tokens,
    bucket_end,
    bucket_start,
    parse_timeframe,
    trading_day,
)

NONE = np.iinfo(np.int64).min
_HASH_BITS = 20
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _hash(tokens: np.ndarray) -> np.ndarray:
    """Fibonacci hashing of instrument tokens into _HASH_BITS bits."""
    return ((tokens.astype(np.uint64) * _GOLDEN) >> np.uint64(64 - _HASH_BITS)).astype(np.intp)
_VOL_BITS = 42  # cumulative volumes below 2**42 (4.4e12 shares) per instrument per day


class _Series:
    """Forming and last-closed candle state of every instrument for one timeframe (columnar)."""

    FIELDS = ("bucket", "open", "high", "low", "close", "vol", "oi", "ticks", "last_ts")

    def __init__(self, tf: Timeframe, capacity: int) -> None:
        self.tf = tf
        self.f = self._alloc(capacity)  # forming
        self.c = self._alloc(capacity)  # last closed (for amend and fill_empty)

    @staticmethod
    def _alloc(n: int) -> dict[str, np.ndarray]:
        return {
            "bucket": np.full(n, NONE, np.int64),
            "open": np.full(n, np.nan),
            "high": np.full(n, np.nan),
            "low": np.full(n, np.nan),
            "close": np.full(n, np.nan),
            "vol": np.zeros(n),
            "oi": np.full(n, np.nan),
            "ticks": np.zeros(n, np.int64),
            "last_ts": np.full(n, NONE, np.int64),
        }

    def grow(self, n: int) -> None:
        for store in (self.f, self.c):
            fresh = self._alloc(n)
            for k, arr in store.items():
                fresh[k][: len(arr)] = arr
            store.update(fresh)


class Engine:
    """Aggregates tick batches into candles for any number of instruments and timeframes.

    Parameters
    ----------
    timeframes : labels or ``Timeframe`` objects (``"1m"``, ``"5m"``, ``"1h"``, ``"1d"``, ``"10s"``)
    grace : seconds after a candle's end before the clock closes it (ticks arrive ~1-3 s late)
    late_policy : ``"drop"`` or ``"amend"`` (see the module docstring)
    fill_empty : emit flat candles for empty buckets between two candles of the same day
    session_open : per-exchange session open overrides, e.g. ``{"MCX": "09:00"}``

    Examples
    --------
    >>> eng = Engine(["1m", "5m"])
    >>> closed = eng.process(batch)          # doctest: +SKIP
    >>> closed += eng.flush()                # doctest: +SKIP
    """

    def __init__(
        self,
        timeframes: Iterable[str | Timeframe],
        *,
        grace: float = 5.0,
        late_policy: str = "drop",
        fill_empty: bool = False,
        session_open: dict[str, str] | None = None,
    ) -> None:
        if late_policy not in ("drop", "amend"):
            raise ValueError(f"late_policy {late_policy!r} is not accepted; use 'drop' or 'amend'")
        self.grace_ns = int(grace * NS)
        self.late_policy = late_policy
        self.fill_empty = fill_empty
        self.session_open = dict(session_open or {})
        self.clock = NONE
        self._tokens = np.empty(0, np.int64)  # sorted known tokens
        self._slot_of_sorted = np.empty(0, np.int64)  # slot of each sorted token
        self._slot_tokens = np.empty(0, np.int64)  # token of each slot
        self._anchor = np.empty(0, np.int64)
        self._cap = 0
        self._n = 0
        # per-instrument volume state
        self._v = self._alloc_v(0)
        self.series: dict[str, _Series] = {}
        self.stats = {"ticks": 0, "batches": 0, "late": 0, "amended": 0, "closed": 0,
                      "volume_glitches": 0}
        self._fill_prev: dict[str, dict[int, tuple[int, float]]] = {}  # tf -> token -> (start, close)
        self._table = np.full(1 << _HASH_BITS, -1, np.int32)  # hash(token) -> slot
        self._seq = np.zeros(0, np.int64)  # per slot: batch number of its last change
        self.last_tokens = np.empty(0, np.int64)
        self._batch_no = 0
        for tf in timeframes:
            self.add_timeframe(tf)

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _alloc_v(n: int) -> dict[str, np.ndarray]:
        return {
            "prev": np.full(n, np.nan),  # previous cumulative volume (NaN: none yet)
            "prev_ts": np.full(n, NONE, np.int64),
            "segmax": np.zeros(n),  # highest cumulative since the last reset
            "day": np.full(n, NONE, np.int64),
            "resume": np.zeros(n, bool),  # the next tick follows a gap of unknown length (adds 0)
            "glitches": np.zeros(n, np.int64),  # volume figures below the day's running maximum
        }

    @property
    def timeframes(self) -> list[Timeframe]:
        return [s.tf for s in self.series.values()]

    def add_timeframe(self, tf: str | Timeframe) -> Timeframe:
        t = parse_timeframe(tf)
        if t.label not in self.series:
            self.series[t.label] = _Series(t, self._cap)
        return t

    def _slots(self, tokens: np.ndarray) -> np.ndarray:
        """Slot index of each token, registering new ones.

        A multiplicative-hash table answers almost every lookup in a few vector operations; tokens
        it cannot answer (new ones, the rare hash collision) go through the sorted-token search.
        """
        if self._n:
            guess = self._table[_hash(tokens)]
            safe = np.maximum(guess, 0)
            hit = (guess >= 0) & (self._slot_tokens[safe] == tokens)
            if hit.all():
                return guess.astype(np.int64)
            miss = ~hit
            out = guess.astype(np.int64)
            out[miss] = self._search(tokens[miss])
            return out
        return self._search(tokens)

    def _search(self, tokens: np.ndarray) -> np.ndarray:
        if len(self._tokens):
            pos = np.searchsorted(self._tokens, tokens)
            np.minimum(pos, len(self._tokens) - 1, out=pos)
            known = self._tokens[pos] == tokens
            if known.all():
                return self._slot_of_sorted[pos]
            self._register(np.unique(tokens[~known]))
        else:
            self._register(np.unique(tokens))
        pos = np.searchsorted(self._tokens, tokens)
        return self._slot_of_sorted[pos]

    def _register(self, new: np.ndarray) -> None:
        start = self._n
        need = start + len(new)
        if need > self._cap:
            cap = max(need, self._cap * 2, 64)
            for s in self.series.values():
                s.grow(cap)
            fresh = self._alloc_v(cap)
            for k, arr in self._v.items():
                fresh[k][: len(arr)] = arr
            self._v = fresh
            anchor = np.zeros(cap, np.int64)
            anchor[: self._n] = self._anchor[: self._n]
            self._anchor = anchor
            st = np.zeros(cap, np.int64)
            st[: self._n] = self._slot_tokens[: self._n]
            self._slot_tokens = st
            seq = np.zeros(cap, np.int64)
            seq[: self._n] = self._seq[: self._n]
            self._seq = seq
            self._cap = cap
        slots = np.arange(start, need, dtype=np.int64)
        self._anchor[slots] = anchor_for_tokens(new, self.session_open)
        self._slot_tokens[slots] = new
        self._n = need
        h = _hash(new)
        free = self._table[h] < 0
        self._table[h[free]] = slots[free]  # colliding tokens are found by _search instead
        allt = np.concatenate([self._tokens, new])
        alls = np.concatenate([self._slot_of_sorted, slots])
        order = np.argsort(allt, kind="stable")
        self._tokens, self._slot_of_sorted = allt[order], alls[order]

    def slot(self, token: int) -> int | None:
        i = np.searchsorted(self._tokens, token)
        if i < len(self._tokens) and self._tokens[i] == token:
            return int(self._slot_of_sorted[i])
        return None

    # ------------------------------------------------------------------ hot path
    def process(self, batch: TickBatch) -> list[CandleBatch]:
        """Aggregate one batch (arrival order). Returns the candles it closed (and amended)."""
        if len(batch) == 0:
            return []
        if self.late_policy == "amend":
            late = self._late_mask(batch)
            if late.any():
                # a late tick amends the candle closed last *at its arrival*: cut the batch there
                out: list[CandleBatch] = []
                cuts = np.flatnonzero(late)
                bounds = np.unique(np.concatenate([[0], cuts, cuts + 1, [len(batch)]]))
                for a, z in zip(bounds[:-1], bounds[1:]):
                    out += self._process(batch.take(slice(int(a), int(z))))
                self.last_tokens = np.unique(batch.token)
                return out
        return self._process(batch)

    def _prepare(self, batch: TickBatch) -> tuple:
        slots_arr = self._slots(batch.token)
        # clock seen by each tick (arrival order), then everything in slot-grouped order
        clock_arr = np.maximum.accumulate(batch.ts)
        if self.clock != NONE:
            np.maximum(clock_arr, self.clock, out=clock_arr)
        # stable sort by instrument; a 16-bit key lets numpy use its linear-time radix sort
        key = slots_arr.astype(np.uint16) if self._n < 65_536 else slots_arr
        order = np.argsort(key, kind="stable")
        slot = slots_arr[order]
        gstart = np.empty(len(slot), bool)
        gstart[0] = True
        np.not_equal(slot[1:], slot[:-1], out=gstart[1:])
        gid = np.cumsum(gstart) - 1
        return clock_arr, order, slot, gstart, gid

    def _late_mask(self, batch: TickBatch) -> np.ndarray:
        """Arrival-order mask of ticks late for any timeframe (no state is changed)."""
        clock_arr, order, slot, gstart, gid = self._prepare(batch)
        ts, clock = batch.ts[order], clock_arr[order]
        late = np.zeros(len(batch), bool)
        for s in self.series.values():
            late |= self._lateness(s, slot, ts, clock, gstart, gid)[1]
        out = np.empty(len(batch), bool)
        out[order] = late
        return out

    def _process(self, batch: TickBatch) -> list[CandleBatch]:
        n = len(batch)
        self.stats["ticks"] += n
        self.stats["batches"] += 1
        clock_arr, order, slot, gstart, gid = self._prepare(batch)
        self._batch_no += 1
        self._seq[slot[gstart]] = self._batch_no
        self.last_tokens = self._slot_tokens[slot[gstart]]  # instruments of this batch (sorted once)
        ts = batch.ts[order]
        price = batch.price[order]
        clock = clock_arr[order]
        oi = batch.oi[order]
        inc = self._volume_increments(slot, ts, batch.volume[order], gstart, gid)
        out: list[CandleBatch] = []
        late_any = np.zeros(n, bool)
        for s in self.series.values():
            late = self._aggregate(s, slot, ts, price, inc, oi, clock, gstart, gid, out)
            late_any |= late
        self.clock = int(clock_arr[-1])
        out.extend(self._sweep())
        self.stats["late"] += int(late_any.sum())
        return out

    def _volume_increments(
        self, slot: np.ndarray, ts: np.ndarray, vol: np.ndarray, gstart: np.ndarray, gid: np.ndarray
    ) -> np.ndarray:
        """Each tick's contribution to its candle's volume (README "Candle conventions", rule 4).

        Per instrument, M is the running maximum of the cumulative day volume over the current IST
        day; a tick adds ``max(0, v - M)``. A lower figure is a glitch (adds 0, counted); a later IST
        day starts from M = 0; a tick of an earlier day adds 0 and changes nothing; the first tick
        ever, or the first after ``resume``, adds 0 and sets the baseline.
        """
        inc = np.zeros(len(slot))
        has = ~np.isnan(vol)
        if not has.any():
            return inc
        idx = np.flatnonzero(has)
        s, t, v = slot[idx], ts[idx], vol[idx]
        day = trading_day(t)
        m = len(idx)
        first = np.empty(m, bool)  # first volume tick of its instrument in this batch
        first[0] = True
        np.not_equal(s[1:], s[:-1], out=first[1:])
        V = self._v
        fs = s[first]
        last = np.empty(m, bool)
        last[-1] = True
        last[:-1] = first[1:]
        ls = s[last]
        # the usual case, ticks of one day, each figure at least the one before (the first at least
        # the running maximum): each tick adds its increase over the previous one
        seg_first = V["segmax"][fs]
        prev = np.empty(m)
        prev[1:] = v[:-1]
        prev[first] = seg_first
        if (not np.isnan(V["prev"][fs]).any() and not V["resume"][fs].any()
                and (day[first] == V["day"][fs]).all() and (day[1:] == day[:-1]).all()
                and (v >= prev).all()):
            inc[idx] = v - prev
            V["prev"][ls] = V["segmax"][ls] = v[last]
            V["prev_ts"][ls] = t[last]
            V["day"][ls] = day[last]
            return inc
        return self._volume_slow(inc, idx, s, t, v, day, first, last)

    def _volume_slow(self, inc, idx, s, t, v, day, first, last) -> np.ndarray:
        V = self._v
        g = np.cumsum(first) - 1  # group (instrument) number of each volume tick
        fs = s[first]
        never = np.isnan(V["prev"][fs])  # per group: no tick of this instrument yet
        resumed = V["resume"][fs] & ~never
        state_day = np.where(never, NONE, V["day"][fs])
        # running IST day per instrument (seeded with its state's day): a tick of an earlier day is stale
        known = state_day[~never]
        dmin = int(min(day.min(), known.min() if len(known) else day.min())) - 1
        span = int(max(day.max(), known.max() if len(known) else day.max())) - dmin + 2
        key = g * span + (day - dmin)
        seed = np.where(never, 0, state_day - dmin)
        gi = np.flatnonzero(first)
        key[gi] = np.maximum(key[gi], g[gi] * span + seed)
        run_day = np.maximum.accumulate(key) - g * span + dmin  # inclusive running day
        stale = day < run_day
        ok = ~stale
        if not ok.any():
            return inc
        # among non-stale ticks: the first of each instrument, and new days
        sel = np.flatnonzero(ok)
        s2, v2, d2, g2 = s[sel], v[sel], day[sel], g[sel]
        n2 = len(sel)
        gfirst = np.empty(n2, bool)
        gfirst[0] = True
        np.not_equal(g2[1:], g2[:-1], out=gfirst[1:])
        prev_day = np.empty(n2, np.int64)
        prev_day[1:] = d2[:-1]
        gg = g2[gfirst]
        prev_day[gfirst] = state_day[gg]
        newday = d2 > prev_day
        segstart = gfirst | newday
        base = np.zeros(n2)  # running maximum before a segment's first tick
        cont = gfirst & ~newday  # continues the state's day
        base[cont] = V["segmax"][s2[cont]]
        # the first tick ever, or the first after a resume, adds 0: its figure becomes the baseline
        blind = np.zeros(n2, bool)
        fpos = np.flatnonzero(gfirst)
        blind[fpos] = never[gg] | resumed[gg]
        base[blind] = np.where(newday[blind] | never[g2[blind]], v2[blind],
                               np.maximum(V["segmax"][s2[blind]], v2[blind]))
        a = v2.copy()
        a[segstart] = np.maximum(a[segstart], base[segstart])
        seg = np.cumsum(segstart) - 1
        # segmented running maximum, exact for any float: on order-preserving integer codes
        uniq, code = np.unique(a, return_inverse=True)
        k2 = (seg.astype(np.int64) << _VOL_BITS) + code.astype(np.int64)
        incl = uniq[np.maximum.accumulate(k2) - (seg.astype(np.int64) << _VOL_BITS)]
        excl = np.empty(n2)
        excl[1:] = incl[:-1]
        excl[segstart] = base[segstart]
        inc[idx[sel]] = np.maximum(0.0, v2 - excl)
        glitch = (v2 < excl) & ~blind
        if glitch.any():
            gs = s2[glitch]
            np.add.at(V["glitches"], gs, 1)
            self.stats["volume_glitches"] += int(glitch.sum())
        glast = np.empty(n2, bool)
        glast[-1] = True
        glast[:-1] = gfirst[1:]
        ls = s2[glast]
        V["prev"][ls] = v2[glast]
        V["prev_ts"][ls] = t[sel][glast]
        V["segmax"][ls] = incl[glast]
        V["day"][ls] = d2[glast]
        V["resume"][ls] = False
        return inc

    def _aggregate(
        self,
        s: _Series,
        slot: np.ndarray,
        ts: np.ndarray,
        price: np.ndarray,
        inc: np.ndarray,
        oi: np.ndarray,
        clock: np.ndarray,
        gstart: np.ndarray,
        gid: np.ndarray,
        out: list[CandleBatch],
    ) -> np.ndarray:
        tf = s.tf
        F = s.f
        b, late = self._lateness(s, slot, ts, clock, gstart, gid)
        any_late = bool(late.any())
        if any_late:
            ok = np.flatnonzero(~late)
            if len(ok) == 0:
                self._late(s, np.flatnonzero(late), slot, b, ts, price, inc, oi, out)
                return late
            slot_ok, b_ok, p, inc_ok, ts_ok, o = slot[ok], b[ok], price[ok], inc[ok], ts[ok], oi[ok]
        else:  # the usual case: no copies
            slot_ok, b_ok, p, inc_ok, ts_ok, o = slot, b, price, inc, ts, oi
        m = len(slot_ok)
        st = np.empty(m, bool)
        st[0] = True
        np.not_equal(b_ok[1:], b_ok[:-1], out=st[1:])
        st[1:] |= gstart[1:] if not any_late else (slot_ok[1:] != slot_ok[:-1])
        starts = np.flatnonzero(st)
        ends = np.empty(len(starts), np.int64)
        ends[:-1] = starts[1:] - 1
        ends[-1] = m - 1
        g_slot = slot_ok[starts]
        g_bucket = b_ok[starts]
        g_open = p[starts]
        g_close = p[ends]
        g_high = np.maximum.reduceat(p, starts)
        g_low = np.minimum.reduceat(p, starts)
        g_vol = np.add.reduceat(inc_ok, starts)
        g_ticks = (ends - starts + 1).astype(np.int64)
        g_last_ts = ts_ok[ends]
        if np.isnan(o).all():
            g_oi = np.full(len(starts), np.nan)
        else:
            valid = np.where(np.isnan(o), -1, np.arange(m))
            lastv = np.maximum.accumulate(valid)[ends]
            g_oi = np.where(lastv >= starts, o[np.maximum(lastv, 0)], np.nan)
        # merge the first group of an instrument into its forming candle when the bucket matches
        f_b = F["bucket"][g_slot]
        merge = f_b == g_bucket
        if merge.any():
            ms = g_slot[merge]
            g_open[merge] = F["open"][ms]
            g_high[merge] = np.maximum(g_high[merge], F["high"][ms])
            g_low[merge] = np.minimum(g_low[merge], F["low"][ms])
            g_vol[merge] += F["vol"][ms]
            g_ticks[merge] += F["ticks"][ms]
            g_oi[merge] = np.where(np.isnan(g_oi[merge]), F["oi"][ms], g_oi[merge])
        # previous forming candles replaced by a later bucket are closed
        g_first = np.empty(len(starts), bool)
        g_first[0] = True
        g_first[1:] = g_slot[1:] != g_slot[:-1]
        g_last = np.empty(len(starts), bool)
        g_last[-1] = True
        g_last[:-1] = g_first[1:]
        prev_close = g_first & ~merge & (f_b != NONE)
        parts: list[CandleBatch] = []
        if prev_close.any():
            parts.append(self._take_forming(s, g_slot[prev_close]))
        inner = ~g_last
        if inner.any():
            parts.append(
                CandleBatch(
                    tf.label,
                    self._slot_tokens[g_slot[inner]],
                    g_bucket[inner],
                    g_open[inner],
                    g_high[inner],
                    g_low[inner],
                    g_close[inner],
                    g_vol[inner],
                    g_oi[inner],
                    g_ticks[inner],
                )
            )
            self._remember_closed(s, g_slot[inner], g_bucket[inner], g_open[inner], g_high[inner],
                                  g_low[inner], g_close[inner], g_vol[inner], g_oi[inner],
                                  g_ticks[inner], g_last_ts[inner])
        # the last group of each instrument is its forming candle now
        ls = g_slot[g_last]
        F["bucket"][ls] = g_bucket[g_last]
        F["open"][ls] = g_open[g_last]
        F["high"][ls] = g_high[g_last]
        F["low"][ls] = g_low[g_last]
        F["close"][ls] = g_close[g_last]
        F["vol"][ls] = g_vol[g_last]
        F["oi"][ls] = g_oi[g_last]
        F["ticks"][ls] = g_ticks[g_last]
        F["last_ts"][ls] = g_last_ts[g_last]
        if parts:
            closed = CandleBatch.concat(parts)
            out.extend(self._emit(s, closed))
        if self.fill_empty and not tf.is_day:
            out.extend(self._fill_forward(s, ls))
        if any_late:
            self._late(s, np.flatnonzero(late), slot, b, ts, price, inc, oi, out)
        return late

    def _lateness(self, s: _Series, slot, ts, clock, gstart, gid) -> tuple[np.ndarray, np.ndarray]:
        """Bucket of each tick, and whether it is late (older than its instrument's newest bucket,
        or its candle already closed by the clock)."""
        tf = s.tf
        anchor = self._anchor[slot]
        b = bucket_start(ts, tf, anchor)
        late_clock = b + (tf.ns + self.grace_ns) <= clock
        if not tf.is_day and self._may_be_cut(b, tf):
            # a bucket cut at midnight ends before start + size: only those near 00:00 IST can be
            tod = (b + IST_OFFSET_NS) % DAY_NS
            near = (tod > DAY_NS - tf.ns) | (tod < tf.ns)
            if near.any():
                late_clock[near] = bucket_end(b[near], tf, anchor[near]) + self.grace_ns <= clock[near]
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
        key = gid * span + (bs - lo)
        gs = np.flatnonzero(gstart)
        key[gs] = np.maximum(key[gs], gid[gs] * span + (sbs[gs] - lo))
        run = np.maximum.accumulate(key) - gid * span + lo
        return b, (bs < run) | late_clock

    @staticmethod
    def _may_be_cut(b: np.ndarray, tf: Timeframe) -> bool:
        """Whether any bucket in ``b`` might be one cut at midnight (ending before ``start + size``):
        two reductions instead of a per-tick modulo, as tapes of a session never come near 00:00."""
        lo, hi = int(b.min()) + IST_OFFSET_NS, int(b.max()) + IST_OFFSET_NS
        day = (lo // DAY_NS) * DAY_NS
        return lo - day < tf.ns or hi - day > DAY_NS - tf.ns

    def _take_forming(self, s: _Series, slots: np.ndarray) -> CandleBatch:
        """Close the forming candles of ``slots`` (remembering them as last closed)."""
        F = s.f
        batch = CandleBatch(
            s.tf.label,
            self._slot_tokens[slots],
            F["bucket"][slots].copy(),
            F["open"][slots].copy(),
            F["high"][slots].copy(),
            F["low"][slots].copy(),
            F["close"][slots].copy(),
            F["vol"][slots].copy(),
            F["oi"][slots].copy(),
            F["ticks"][slots].copy(),
        )
        self._remember_closed(s, slots, F["bucket"][slots], F["open"][slots], F["high"][slots],
                              F["low"][slots], F["close"][slots], F["vol"][slots], F["oi"][slots],
                              F["ticks"][slots], F["last_ts"][slots])
        F["bucket"][slots] = NONE
        self._batch_no += 1
        self._seq[slots] = self._batch_no
        return batch

    def _remember_closed(self, s: _Series, slots, bucket, o, h, l, c, v, oi, ticks, last_ts) -> None:
        C = s.c
        # a slot may appear several times (several candles closed in one batch): last one wins,
        # which numpy fancy assignment guarantees for repeated indices in order
        for k, arr in zip(_Series.FIELDS, (bucket, o, h, l, c, v, oi, ticks, last_ts)):
            C[k][slots] = arr

    def _emit(self, s: _Series, closed: CandleBatch) -> list[CandleBatch]:
        if len(closed) == 0:
            return []
        order = np.lexsort((closed.start, closed.token))
        closed = closed.select(order)
        self.stats["closed"] += len(closed)
        if self.fill_empty:
            closed = self._fill(s, closed)
        return [closed]

    def _fill(self, s: _Series, closed: CandleBatch) -> CandleBatch:
        """Insert flat candles between consecutive candles of one instrument on the same IST day."""
        if s.tf.is_day:
            return closed
        prev_bucket = self._fill_prev.setdefault(s.tf.label, {})  # last emitted candle per token
        rows: list[Candle] = []
        for c in closed:
            pb = prev_bucket.get(c.token)
            if pb is not None:
                rows += self._flats(s, c.token, pb, c.start)
            rows.append(c)
            prev_bucket[c.token] = (c.start, c.close)
        return CandleBatch.from_candles(s.tf.label, rows)

    def _flats(self, s: _Series, token: int, pb: tuple[int, float], until: int) -> list[Candle]:
        """Flat candles (close ``pb[1]``) for the buckets after ``pb[0]`` and before ``until``, same IST day."""
        if trading_day(np.int64(pb[0])) != trading_day(np.int64(until)):
            return []
        anchor = self._anchor[self.slot(token)]
        rows = []
        t = int(bucket_end(np.int64(pb[0]), s.tf, anchor))
        while t < until:
            rows.append(Candle(token, s.tf.label, t, pb[1], pb[1], pb[1], pb[1], 0.0, math.nan, 0))
            t = int(bucket_end(np.int64(t), s.tf, anchor))
        return rows

    def _fill_forward(self, s: _Series, slots: np.ndarray) -> list[CandleBatch]:
        """Flat candles up to each instrument's new forming candle, emitted as soon as it opens (its
        empty buckets are over then); the last of them is the instrument's last closed candle."""
        prev_bucket = self._fill_prev.setdefault(s.tf.label, {})
        rows: list[Candle] = []
        for sl in slots.tolist():
            tok = int(self._slot_tokens[sl])
            pb = prev_bucket.get(tok)
            fb = int(s.f["bucket"][sl])
            if pb is None or fb == NONE or fb <= pb[0]:
                continue
            flats = self._flats(s, tok, pb, fb)
            if flats:
                rows += flats
                last = flats[-1]
                prev_bucket[tok] = (last.start, last.close)
                one = np.array([sl])
                self._remember_closed(s, one, np.array([last.start]), np.array([last.open]),
                                      np.array([last.high]), np.array([last.low]), np.array([last.close]),
                                      np.zeros(1), np.full(1, np.nan), np.zeros(1, np.int64),
                                      np.array([NONE]))
        if not rows:
            return []
        self.stats["closed"] += len(rows)
        return [CandleBatch.from_candles(s.tf.label, rows)]

    def _late(self, s, idx, slot, b, ts, price, inc, oi, out) -> None:
        if self.late_policy != "amend":
            return
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
            if self.fill_empty:  # flat candles after it carry its amended close
                prev = self._fill_prev.get(s.tf.label, {})
                tok = int(self._slot_tokens[sl])
                if tok in prev and prev[tok][0] == int(C["bucket"][sl]):
                    prev[tok] = (prev[tok][0], float(C["close"][sl]))
            amended[sl] = Candle(
                int(self._slot_tokens[sl]), s.tf.label, int(C["bucket"][sl]), float(C["open"][sl]),
                float(C["high"][sl]), float(C["low"][sl]), float(C["close"][sl]), float(C["vol"][sl]),
                float(C["oi"][sl]), int(C["ticks"][sl]), True, True,
            )
        if amended:
            self.stats["amended"] += len(amended)
            out.append(CandleBatch.from_candles(s.tf.label, list(amended.values())))

    # ------------------------------------------------------------------ clock
    def _sweep(self, everything: bool = False) -> list[CandleBatch]:
        out: list[CandleBatch] = []
        n = self._n
        for s in self.series.values():
            fb = s.f["bucket"][:n]
            have = fb != NONE
            if not everything:
                due = np.flatnonzero(have)
                end = bucket_end(fb[due], s.tf, self._anchor[due])
                have[due] = end + self.grace_ns <= self.clock
            if have.any():
                out.extend(self._emit(s, self._take_forming(s, np.flatnonzero(have))))
        return out

    def advance(self, now_ns: int) -> list[CandleBatch]:
        """Move the clock (live sources: the wall clock) and close candles past ``end + grace``."""
        if now_ns > self.clock:
            self.clock = int(now_ns)
        return self._sweep()

    def flush(self) -> list[CandleBatch]:
        """Close every forming candle (a replay tape has ended: its clock runs on forever)."""
        return self._sweep(everything=True)

    def resume(self, tokens: Iterable[int] | None = None) -> None:
        """The next tick of ``tokens`` (all known instruments: None) follows a gap of unknown length
        (a live restart, a reconnect after an outage): it adds no volume and sets the baseline, so
        the gap's volume is never lumped into one candle."""
        if tokens is None:
            self._v["resume"][: self._n] = True
            return
        toks = np.fromiter((int(t) for t in tokens), np.int64)
        if len(toks):
            slots = self._slots(toks)  # may grow the arrays: index them afterwards
            self._v["resume"][slots] = True

    def glitches(self) -> dict[int, int]:
        """Volume glitches per instrument token (only those with any)."""
        g = self._v["glitches"][: self._n]
        nz = np.flatnonzero(g)
        return dict(zip(self._slot_tokens[nz].tolist(), g[nz].tolist()))

    # ------------------------------------------------------------------ views and state
    def forming(self, tf: str | Timeframe, token: int | None = None) -> CandleBatch:
        """Forming candles of ``tf`` (all instruments, or one)."""
        s = self.series[parse_timeframe(tf).label]
        n = self._n
        mask = s.f["bucket"][:n] != NONE
        if token is not None:
            mask &= self._slot_tokens[:n] == token
        sl = np.flatnonzero(mask)
        F = s.f
        return CandleBatch(
            s.tf.label, self._slot_tokens[sl], F["bucket"][sl], F["open"][sl], F["high"][sl],
            F["low"][sl], F["close"][sl], F["vol"][sl], F["oi"][sl], F["ticks"][sl], closed=False,
        )

    def version_of(self, token: int) -> int:
        """Batch number of the last change to ``token``'s forming candles (0: never)."""
        sl = self.slot(token)
        return 0 if sl is None else int(self._seq[sl])

    def forming_candle(self, token: int, tf: str) -> Candle | None:
        """The forming candle of one instrument and timeframe, or None."""
        sl = self.slot(token)
        s = self.series.get(tf)
        if sl is None or s is None or s.f["bucket"][sl] == NONE:
            return None
        F = s.f
        return Candle(int(token), tf, int(F["bucket"][sl]), float(F["open"][sl]), float(F["high"][sl]),
                      float(F["low"][sl]), float(F["close"][sl]), float(F["vol"][sl]), float(F["oi"][sl]),
                      int(F["ticks"][sl]), closed=False)

    def export_columns(self, tokens: Iterable[int] | None = None) -> "StateColumns":
        """The same state as ``export_state``, as columns (the live store ships them as they are)."""
        if tokens is None:
            slots = np.arange(self._n)
        else:
            toks = np.fromiter((int(t) for t in tokens), np.int64)
            if not len(self._tokens) or not len(toks):
                slots = np.empty(0, np.int64)
            else:
                pos = np.minimum(np.searchsorted(self._tokens, toks), len(self._tokens) - 1)
                slots = self._slot_of_sorted[pos][self._tokens[pos] == toks]
        V = self._v
        forming = {}
        for label, s in self.series.items():
            have = s.f["bucket"][slots] != NONE
            idx = np.flatnonzero(have)
            sl = slots[idx]
            forming[label] = {"index": idx, **{k: s.f[k][sl] for k in _Series.FIELDS}}
        return StateColumns(
            tokens=self._slot_tokens[slots], prev=V["prev"][slots], prev_ts=V["prev_ts"][slots],
            segmax=V["segmax"][slots], day=V["day"][slots], clock=int(self.clock), forming=forming,
        )

    def export_state(self, tokens: Iterable[int] | None = None) -> dict[int, dict]:
        """JSON-able state per instrument: volume baseline and forming candles (live store).

        Columns are read once per call (``tolist``), not per element: thousands of instruments
        per write stay cheap.
        """
        if tokens is None:
            slots = np.arange(self._n)
        else:
            toks = np.fromiter((int(t) for t in tokens), np.int64)
            if not len(self._tokens) or not len(toks):
                return {}
            pos = np.minimum(np.searchsorted(self._tokens, toks), len(self._tokens) - 1)
            slots = self._slot_of_sorted[pos][self._tokens[pos] == toks]
        if not len(slots):
            return {}
        V = self._v
        prev = [None if math.isnan(x) else x for x in V["prev"][slots].tolist()]
        vol = zip(prev, V["prev_ts"][slots].tolist(), V["segmax"][slots].tolist(), V["day"][slots].tolist())
        clock = int(self.clock)
        out: dict[int, dict] = {
            tok: {"vol": {"prev": p, "prev_ts": t, "segmax": m, "day": d}, "forming": {}, "clock": clock}
            for tok, (p, t, m, d) in zip(self._slot_tokens[slots].tolist(), vol)
        }
        for label, s in self.series.items():
            F = s.f
            have = F["bucket"][slots] != NONE
            if not have.any():
                continue
            sl = slots[have]
            cols: list[list] = []
            for k in _Series.FIELDS:
                vals = F[k][sl].tolist()
                if F[k].dtype.kind == "f":
                    vals = [None if math.isnan(x) else x for x in vals]
                cols.append(vals)
            for tok, row in zip(self._slot_tokens[sl].tolist(), zip(*cols)):
                out[int(tok)]["forming"][label] = dict(zip(_Series.FIELDS, row))
        return out

    def import_state(self, states: "Mapping[int, dict] | Mapping[str, dict]") -> None:
        """Continue from exported state (a kernel that died mid-candle is continued by the next)."""
        if not states:
            return
        toks = np.array([int(t) for t in states], np.int64)
        slots = self._slots(toks)
        for tok, sl in zip(toks, slots):
            st = states.get(int(tok)) or states.get(str(tok)) or {}  # type: ignore[call-overload]
            v = st.get("vol") or {}
            if v.get("prev") is not None:
                self._v["prev"][sl] = v["prev"]
                self._v["prev_ts"][sl] = v.get("prev_ts", NONE)
                self._v["segmax"][sl] = v.get("segmax", v["prev"])
                self._v["day"][sl] = v.get("day", NONE)
            for label, f in (st.get("forming") or {}).items():
                s = self.series.get(label)
                if s is None:
                    continue
                for k in _Series.FIELDS:
                    val = f.get(k)
                    s.f[k][sl] = np.nan if val is None else val
            clock = st.get("clock")
            if clock is not None and clock > self.clock:
                self.clock = int(clock)
        self._batch_no += 1
        self._seq[slots] = self._batch_no


class StateColumns(Mapping):
    """Per-instrument engine state as columns; also a read-only mapping token -> state dict.

    The mapping view builds the same dicts as ``Engine.export_state`` lazily, so any store can
    treat it as ``dict[int, dict]``; a store that understands columns ships them as they are.
    """

    def __init__(self, tokens, prev, prev_ts, segmax, day, clock, forming) -> None:
        self.tokens, self.prev, self.prev_ts, self.segmax, self.day = tokens, prev, prev_ts, segmax, day
        self.clock = clock
        self.forming = forming  # tf -> {"index": rows of tokens, bucket/open/.../last_ts arrays}
        self._row = {int(t): i for i, t in enumerate(tokens.tolist())}
        self._frow = {tf: {i: j for j, i in enumerate(f["index"].tolist())} for tf, f in forming.items()}

    def __len__(self) -> int:
        return len(self.tokens)

    def __iter__(self):
        return iter(self._row)

    def chunks(self, size: int) -> "list[StateColumns]":
        """Split by instrument into parts of at most ``size`` (smaller server-side writes)."""
        n = len(self.tokens)
        if n <= size:
            return [self]
        out = []
        for a in range(0, n, size):
            b = min(n, a + size)
            forming = {}
            for tf, f in self.forming.items():
                sel = (f["index"] >= a) & (f["index"] < b)
                forming[tf] = {k: (v[sel] - a if k == "index" else v[sel]) for k, v in f.items()}
            out.append(StateColumns(self.tokens[a:b], self.prev[a:b], self.prev_ts[a:b], self.segmax[a:b],
                                    self.day[a:b], self.clock, forming))
        return out

    def __getitem__(self, token: int) -> dict:
        i = self._row[int(token)]
        prev = float(self.prev[i])
        st: dict = {"vol": {"prev": None if math.isnan(prev) else prev, "prev_ts": int(self.prev_ts[i]),
                            "segmax": float(self.segmax[i]), "day": int(self.day[i])},
                    "forming": {}, "clock": self.clock}
        for label, f in self.forming.items():
            j = self._frow[label].get(i)
            if j is not None:
                row = {k: f[k][j].item() for k in _Series.FIELDS}
                st["forming"][label] = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                        for k, v in row.items()}
        return st
