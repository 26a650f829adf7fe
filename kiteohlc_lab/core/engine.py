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

import threading
from collections.abc import Mapping
from typing import Iterable

import numpy as np

from . import state as _state
from .candles import Candle, CandleBatch
from .fill import FlatFill
from .groups import Groups, in_order_pieces, tick_groups
from .late import amend_late, batch_clock, lateness
from .state import NONE, Series, StateColumns, alloc_volume, grow_columns
from .ticks import SlotTable, TickBatch, distinct, is_nan_column, lookup, nan_column, run_starts, token_array
from .timeframes import (
    NS,
    Timeframe,
    anchor_for_tokens,
    bucket_end,
    day_grid,
    parse_timeframe,
)
from .volume import volume_increments

# the state (NONE, Series, StateColumns: core.state), the volume rule (core.volume), late ticks and
# amends (core.late) and flat fill (core.fill) live in their modules; NONE and StateColumns are
# still importable from here


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
        self._v = alloc_volume(0)
        self.series: dict[str, Series] = {}
        self.stats = {"ticks": 0, "batches": 0, "late": 0, "amended": 0, "closed": 0,
                      "volume_glitches": 0}
        self._flat = FlatFill()  # fill_empty: tf -> token -> (start, close) of the last candle
        # guards the state between the stream thread and readers in other threads (core.stream)
        self.lock = threading.RLock()
        self._hash = SlotTable()  # token -> slot, for most lookups (core.ticks)
        self._seq = np.zeros(0, np.int64)  # per slot: batch number of its last change
        self.last_tokens = np.empty(0, np.int64)
        self._batch_no = 0
        for tf in timeframes:
            self.add_timeframe(tf)

    # ------------------------------------------------------------------ setup
    @property
    def timeframes(self) -> list[Timeframe]:
        return [s.tf for s in self.series.values()]

    def add_timeframe(self, tf: str | Timeframe) -> Timeframe:
        t = parse_timeframe(tf)
        if t.label not in self.series:
            self.series[t.label] = Series(t, self._cap)
        return t

    def remove_timeframe(self, tf: str | Timeframe) -> bool:
        """Stop aggregating ``tf`` (its forming candles are dropped); True if it was there. The last
        timeframe stays (an engine needs one)."""
        label = parse_timeframe(tf).label
        if label not in self.series or len(self.series) <= 1:
            return False
        del self.series[label]
        self._flat.drop(label)
        return True

    def _slots(self, tokens: np.ndarray) -> np.ndarray:
        """Slot index of each token, registering new ones.

        A multiplicative-hash table answers almost every lookup in a few vector operations; tokens
        it cannot answer (new ones, the rare hash collision) go through the sorted-token search.
        """
        if self._n:
            guess, hit = self._hash.guess(tokens)
            if hit.all():
                return guess
            miss = ~hit
            guess[miss] = self._search(tokens[miss])
            return guess
        return self._search(tokens)

    def _search(self, tokens: np.ndarray) -> np.ndarray:
        if len(self._tokens):
            pos, known = lookup(self._tokens, tokens)
            if known.all():
                return self._slot_of_sorted[pos]
            self._register(distinct(tokens[~known]))
        else:
            self._register(distinct(tokens))
        pos = np.searchsorted(self._tokens, tokens)
        return self._slot_of_sorted[pos]

    def _register(self, new: np.ndarray) -> None:
        start = self._n
        need = start + len(new)
        if need > self._cap:
            cap = max(need, self._cap * 2, 64)
            for s in self.series.values():
                s.grow(cap)
            grow_columns(self._v, alloc_volume(cap))
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
        self._hash.add(self._slot_tokens[:need], new, slots)
        allt = np.concatenate([self._tokens, new])
        alls = np.concatenate([self._slot_of_sorted, slots])
        order = np.argsort(allt, kind="stable")
        self._tokens, self._slot_of_sorted = allt[order], alls[order]

    def add_instruments(self, tokens: Iterable[int]) -> None:
        """Know ``tokens`` ahead of their first tick (no candle, no volume baseline yet): their first
        batch takes the hash path, not a sort and search of the whole batch (4 ms of 65k ticks)."""
        toks = token_array(tokens)
        if len(toks):
            self._slots(toks)

    def slot(self, token: int) -> int | None:
        i = np.searchsorted(self._tokens, token)
        if i < len(self._tokens) and self._tokens[i] == token:
            return int(self._slot_of_sorted[i])
        return None

    def anchor_of(self, token: int) -> int | None:
        """The session-open anchor of ``token``'s intraday buckets, or None for an unknown token."""
        sl = self.slot(token)
        return None if sl is None else int(self._anchor[sl])

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
                self.last_tokens = distinct(batch.token)
                return out
        return self._process(batch)

    def _prepare(self, batch: TickBatch) -> tuple:
        slots_arr = self._slots(batch.token)
        # clock seen by each tick (arrival order; in order: none late), then slot-grouped order
        clock_arr, in_order = batch_clock(batch.ts, self.clock)
        # stable sort by instrument; an 8- or 16-bit key lets numpy use its linear-time radix sort
        # (one pass of it for up to 256 instruments: 568 -> 389 us per 65k ticks)
        n = self._n
        key = slots_arr.astype(np.uint8 if n <= 256 else np.uint16) if n <= 65_536 else slots_arr
        order = np.argsort(key, kind="stable")
        slot = np.take(slots_arr, order)
        return clock_arr, order, slot, run_starts(slot), in_order

    def _late_mask(self, batch: TickBatch) -> np.ndarray:
        """Arrival-order mask of ticks late for any timeframe (no state is changed)."""
        if batch_clock(batch.ts, self.clock)[1]:  # in order: none (and no sort for nothing)
            return np.zeros(len(batch), bool)
        clock_arr, order, slot, gstart, _ = self._prepare(batch)
        ts, clock = batch.ts[order], clock_arr[order]
        late = np.zeros(len(batch), bool)
        anchor, grid = self._anchor[slot], self._grid(ts)
        for s in self.series.values():
            late |= lateness(s, anchor, slot, ts, clock, gstart, self.grace_ns, grid)[1]
        out = np.empty(len(batch), bool)
        out[order] = late
        return out

    def _process(self, batch: TickBatch) -> list[CandleBatch]:
        n = len(batch)
        self.stats["ticks"] += n
        self.stats["batches"] += 1
        clock_arr, order, slot, gstart, in_order = self._prepare(batch)
        self._batch_no += 1
        self._seq[slot[gstart]] = self._batch_no
        self.last_tokens = self._slot_tokens[slot[gstart]]  # instruments of this batch (sorted once)
        take = np.take  # a third faster than fancy indexing for these whole-batch gathers
        ts = take(batch.ts, order)
        price = take(batch.price, order)
        clock = ts if in_order else take(clock_arr, order)
        oi = nan_column(n) if is_nan_column(batch.oi) else take(batch.oi, order)
        inc, glitches = volume_increments(self._v, slot, ts, take(batch.volume, order), gstart)
        self.stats["volume_glitches"] += glitches
        out: list[CandleBatch] = []
        late_any = np.zeros(n, bool)
        anchor, grid = self._anchor[slot], self._grid(ts)  # the same for every timeframe
        pieces = (in_order_pieces([s.tf for s in self.series.values()], slot, ts, price, inc, oi, gstart,
                                  anchor, grid) if in_order else {})
        for s in self.series.values():
            late = self._aggregate(s, slot, ts, price, inc, oi, clock, gstart, out, anchor, grid,
                                   pieces.get(s.tf.label))
            if late is not None:
                late_any |= late
        self.clock = int(clock_arr[-1])
        out.extend(self._sweep())
        self.stats["late"] += int(late_any.sum())
        return out

    def _aggregate(
        self,
        s: Series,
        slot: np.ndarray,
        ts: np.ndarray,
        price: np.ndarray,
        inc: np.ndarray,
        oi: np.ndarray,
        clock: np.ndarray,
        gstart: np.ndarray,
        out: list[CandleBatch],
        anchor: np.ndarray,
        grid: tuple | None,
        g: Groups | None = None,
    ) -> np.ndarray | None:
        """One timeframe's candles of a batch (``g``: its pieces, of an in-order batch); returns
        the late ticks' mask (None: none)."""
        tf = s.tf
        F = s.f
        late, any_late = None, False
        if g is None:
            b, late = lateness(s, anchor, slot, ts, clock, gstart, self.grace_ns, grid)
            any_late = bool(late.any())
            if not any_late:  # the usual case: no copies
                g = tick_groups(slot, b, price, inc, ts, oi, gstart)
            else:
                ok = np.flatnonzero(~late)
                if len(ok) == 0:
                    self._late(s, np.flatnonzero(late), slot, b, ts, price, inc, oi, out)
                    return late
                so = slot[ok]
                g = tick_groups(so, b[ok], price[ok], inc[ok], ts[ok], oi[ok],
                                run_starts(so))
        g_slot, g_bucket, g_open, g_high, g_low, g_close = g.slot, g.bucket, g.open, g.high, g.low, g.close
        g_vol, g_ticks, g_last_ts, g_oi, starts = g.vol, g.ticks, g.last_ts, g.oi, g.starts
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
        g_first = run_starts(g_slot)
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
            s.remember_closed(g_slot[inner], g_bucket[inner], g_open[inner], g_high[inner],
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
        if any_late and late is not None:
            self._late(s, np.flatnonzero(late), slot, b, ts, price, inc, oi, out)
        return late

    def _grid(self, ts: np.ndarray) -> tuple | None:
        """The batch's ``timeframes.day_grid`` (its ticks on one IST day, one session open)."""
        return day_grid(ts, self._anchor[: self._n])

    def _take_forming(self, s: Series, slots: np.ndarray) -> CandleBatch:
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
        s.remember_closed(slots, F["bucket"][slots], F["open"][slots], F["high"][slots],
                          F["low"][slots], F["close"][slots], F["vol"][slots], F["oi"][slots],
                          F["ticks"][slots], F["last_ts"][slots])
        F["bucket"][slots] = NONE
        self._batch_no += 1
        self._seq[slots] = self._batch_no
        return batch

    def _emit(self, s: Series, closed: CandleBatch) -> list[CandleBatch]:
        if len(closed) == 0:
            return []
        order = np.lexsort((closed.start, closed.token))
        closed = closed.select(order)
        self.stats["closed"] += len(closed)
        if self.fill_empty:
            closed = self._fill(s, closed)
        return [closed]

    def _fill(self, s: Series, closed: CandleBatch) -> CandleBatch:
        """Insert flat candles between consecutive candles of one instrument on the same IST day."""
        return self._flat.fill(s, closed, self._anchor_known)

    def _anchor_known(self, token: int) -> int:
        return int(self._anchor[self.slot(token)])

    def _fill_forward(self, s: Series, slots: np.ndarray) -> list[CandleBatch]:
        """Flat candles up to each instrument's new forming candle (``FlatFill.forward``)."""
        rows = self._flat.forward(s, slots, self._slot_tokens, self._anchor_known)
        if not rows:
            return []
        self.stats["closed"] += len(rows)
        return [CandleBatch.from_candles(s.tf.label, rows)]

    def _late(self, s, idx, slot, b, ts, price, inc, oi, out) -> None:
        if self.late_policy != "amend":
            return
        amended = amend_late(s, idx, slot, b, ts, price, inc, oi, self._slot_tokens,
                             self._flat if self.fill_empty else None)
        if amended:
            self.stats["amended"] += len(amended)
            out.append(CandleBatch.from_candles(s.tf.label, amended))

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
        toks = token_array(tokens)
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

    def _known_slots(self, tokens: Iterable[int] | None) -> np.ndarray:
        """Slots of the known ``tokens`` (all: None), registering none."""
        if tokens is None:
            return np.arange(self._n)
        toks = token_array(tokens)
        if not len(self._tokens) or not len(toks):
            return np.empty(0, np.int64)
        pos, known = lookup(self._tokens, toks)
        return self._slot_of_sorted[pos][known]

    def export_columns(self, tokens: Iterable[int] | None = None) -> StateColumns:
        """The same state as ``export_state``, as columns (the live store ships them as they are)."""
        return _state.export_columns(self._known_slots(tokens), self._slot_tokens, self._v, self.series,
                                     self.clock)

    def export_state(self, tokens: Iterable[int] | None = None) -> dict[int, dict]:
        """JSON-able state per instrument: volume baseline and forming candles (live store);
        see ``core.state``."""
        return _state.export_state(self._known_slots(tokens), self._slot_tokens, self._v, self.series,
                                   self.clock)

    def import_state(self, states: "Mapping[int, dict] | Mapping[str, dict]") -> None:
        """Continue from exported state (a kernel that died mid-candle is continued by the next)."""
        if not states:
            return
        slots, clock = _state.import_state(states, self._slots, lambda: self._v, self.series)
        if clock > self.clock:
            self.clock = clock
        self._batch_no += 1
        self._seq[slots] = self._batch_no
