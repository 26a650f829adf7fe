"""SeriesRegistry: the candle series the researcher reads, and the stream side that feeds them.

It owns one ``SeriesBuffer`` per (instrument, timeframe), the pins of live views, the idle-series LRU,
the store following of series no stream of this process writes, and the ``on_candle`` callbacks with
the worker thread that calls them. Its ``on_closed``/``on_forming``/``on_gap`` are the Stream
Listener's candle methods (the Manager forwards them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

if TYPE_CHECKING:  # pandas loads where a frame is made: a replay never needs it
    import pandas as pd

from ..config import KiteOHLC
from ..core.bounded import CallbackWorker, ErrorLog
from ..core.candles import Candle, CandleBatch, batch_from_frame
from ..core.series import SeriesBuffer
from ..core.ticks import member
from ..core.timeframes import bound_ns, parse_timeframe

log = logging.getLogger("kiteohlc_lab")

Key = tuple[int, str]  # (token, timeframe label)
# closed candles per batch up to which on_closed works on Python lists (an attached reader's few
# candles a wake: about half the CPU of the array path's small numpy calls); above, on arrays
SMALL_BATCH = 64


class SeriesRegistry:
    """The series in memory, their pins, eviction, store following and on_candle callbacks."""

    # grace an own stream's thread gives an idle callback worker (see CallbackWorker), seconds;
    # an attached stream's thread does not wait (it reads the next candles from Redis meanwhile)
    callback_grace = 0.05

    def __init__(self, config: Callable[[], KiteOHLC], lock: threading.RLock,
                 stores: Callable[[], tuple[Any, Any, str]], streams: Callable[[], Iterable[Any]],
                 token_of: Callable[[str | int], int], errors: ErrorLog) -> None:
        self._config = config  # the Manager's current configuration (it may be replaced)
        self._lock = lock  # the Manager's lock: guards buffers, the LRU, pins and callbacks
        self._stores = stores  # (live, history, description), opened on first use
        self._streams = streams  # the streams of this process now (own and attached)
        self._token_of = token_of  # symbol -> token (SymbolBook.token_of)
        self._errors = errors  # where a failing callback is reported (once)
        self.buffers: dict[Key, SeriesBuffer] = {}
        # False: a stream's series are not loaded (nor kept up to date) until someone reads them
        self.preload_streamed = True
        # series no stream of this process writes: least recently read last, at most
        # cfg.max_idle_series of them kept (those a stream, callback or pin uses are never dropped)
        self._lru: OrderedDict[Key, None] = OrderedDict()
        self.pins: dict[Key, int] = {}  # key -> live views (LiveCandles, charts) showing it
        self.evicted = 0  # series dropped from memory (they reload from the store when read)
        self._follower: Any = None  # stores.follow.StoreFollower over the current stores
        self._callbacks: dict[Key, list[Callable[[Candle], Any]]] = {}
        self._failed_callbacks: set[int] = set()  # id() of callbacks that raised (reported once)
        self._worker: CallbackWorker | None = None  # runs the on_candle calls, started on first use

    # ------------------------------------------------------------------ reading
    def series(self, symbol: str | int, tf: str) -> SeriesBuffer:
        """The series of ``symbol`` at ``tf``; one that no stream of this process writes follows the
        stores (what another process's writer stored shows within ``cfg.follow_interval`` s)."""
        tok = self._token_of(symbol)
        label = parse_timeframe(tf).label
        key = (tok, label)
        with self._lock:
            self.load([tok], label)
            buf = self.buffers[key]
            self._lru[key] = None
            self._lru.move_to_end(key)
            if len(self._lru) > self._config().max_idle_series:
                self._evict()
        self._follow(key, buf)
        return buf

    def candles(self, symbol: str | int, tf: str, closed_only: bool = False,
                start: Any = None, end: Any = None) -> pd.DataFrame:
        """History + closed + forming candles of ``symbol`` at ``tf``."""
        return self.series(symbol, tf).frame(closed_only=closed_only, start=bound_ns(start), end=bound_ns(end))

    def in_use(self, key: Key) -> bool:
        """True while a stream of this process (own or attached), a callback or a pin uses the
        series ``key`` = (token, timeframe label)."""
        return bool(self._callbacks.get(key) or self.pins.get(key)) or self._written_here(key)

    def pin(self, symbol: str | int, tf: str) -> Callable[[], None]:
        """Keep the series of ``symbol`` at ``tf`` in memory (a live view uses it); returns the unpin."""
        key = (self._token_of(symbol), parse_timeframe(tf).label)
        with self._lock:
            self.pins[key] = self.pins.get(key, 0) + 1
        done: list[int] = []

        def unpin() -> None:
            if done:
                return
            done.append(1)
            with self._lock:
                left = self.pins.get(key, 0) - 1
                if left > 0:
                    self.pins[key] = left
                else:
                    self.pins.pop(key, None)

        return unpin

    def _evict(self) -> None:
        """Drop the least recently read series beyond ``cfg.max_idle_series`` (under the lock)."""
        limit = max(0, int(self._config().max_idle_series))
        while len(self._lru) > limit:
            key = next(iter(self._lru))
            del self._lru[key]
            if self.in_use(key):
                continue  # not idle: back in the LRU when it is read again
            if self.buffers.pop(key, None) is not None:
                self.evicted += 1

    def _follow(self, key: Key, buf: SeriesBuffer) -> None:
        """Re-read the stores for a series no stream of this process writes, at most every
        ``cfg.follow_interval`` seconds (new candles and the forming one only)."""
        interval = float(self._config().follow_interval)
        if time.monotonic() - buf.refreshed < interval or self._written_here(key):
            return
        if not buf.refresh_lock.acquire(blocking=False):
            return  # another reader is refreshing it right now
        try:
            if time.monotonic() - buf.refreshed < interval:
                return
            follower = self._store_follower()
            follower.refresh(buf)
            buf.refreshed = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - a read never fails for following
            log.debug("following the stores for %s: %s", key, exc)
        finally:
            buf.refresh_lock.release()

    def _written_here(self, key: Key) -> bool:
        """A stream of this process (own or attached) that has not ended feeds the series ``key``."""
        tok, label = key
        for s in list(self._streams()):
            if s.done.is_set() or tok not in s.tokens:  # done: stopped, failed or finished
                continue
            if any(t.label == label for t in s.timeframes):
                return True
        return False

    def _store_follower(self) -> Any:
        from ..stores.follow import StoreFollower

        live, hist, _ = self._stores()
        f = self._follower
        if f is None or f.hist is not hist or f.live is not live:
            f = self._follower = StoreFollower(live, hist)
        return f

    def load(self, tokens: list[int], tf: str) -> None:
        """Create the series of ``tokens`` at ``tf`` that do not exist yet, with their stored history
        (one query for thousands of instruments where the store can)."""
        new = [tok for tok in tokens if (tok, tf) not in self.buffers]
        if not new:
            return
        hist = self._stores()[1]
        read_many = getattr(hist, "read_many", None)
        try:
            if read_many is not None:
                found = read_many(new, tf)
            else:
                found = {}
                for tok in new:
                    df = hist.read(tok, tf)
                    if len(df):
                        found[tok] = batch_from_frame(tok, tf, df)
        except Exception as exc:
            log.warning("history at %s not readable: %s", tf, exc)
            found = {}
        for tok in new:
            buf = SeriesBuffer(tok, tf)
            if tok in found:
                buf.upsert(found[tok])
            self.buffers[(tok, tf)] = buf

    def load_streamed(self, tokens: list[int], labels: list[str]) -> None:
        """Load the series a stream is about to write; they are never evicted while it runs.
        With ``preload_streamed`` off (a collector: nobody reads in its process) they are made only
        when read, from the store, like any other series."""
        if not self.preload_streamed:
            return
        with self._lock:
            for label in labels:
                self.load(tokens, label)
                for tok in tokens:
                    self._lru.pop((tok, label), None)

    def bind_engine(self, tokens: list[int], engine: Any, lock: Any) -> None:
        """The series of ``tokens`` read their forming candles from ``engine`` (under ``lock``)."""
        for tok in tokens:
            for tf in engine.timeframes:
                buf = self.buffers.get((tok, tf.label))
                if buf is not None:
                    buf.bind_engine(engine, lock)

    def memory_status(self) -> dict:
        """Series in memory (and idle ones), series dropped, pins, on_candle calls."""
        with self._lock:
            kept, idle = len(self.buffers), len(self._lru)
        return {"series": kept, "idle_series": idle, "max_idle_series": int(self._config().max_idle_series),
                "evicted": self.evicted, "pinned": len(self.pins), "callbacks": self.callbacks_status()}

    # ------------------------------------------------------------------ on_candle
    def on_candle(self, symbol: str | int, tf: str, fn: Callable[[Candle], Any]) -> Callable[[], None]:
        """Call ``fn(candle)`` for each closed candle of ``symbol`` at ``tf``; returns an unsubscribe."""
        if not callable(fn):
            raise TypeError("on_candle needs a callable taking one Candle")
        key = (self._token_of(symbol), parse_timeframe(tf).label)
        self._callbacks_worker()  # its thread runs the calls (started here, not on a stream thread)
        with self._lock:
            self._callbacks.setdefault(key, []).append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._callbacks.get(key, []):
                    self._callbacks[key].remove(fn)

        return unsubscribe

    def _callbacks_worker(self) -> CallbackWorker:
        with self._lock:
            w = self._worker
            if w is None:
                w = self._worker = CallbackWorker(self._call, maxsize=self._config().callback_queue)
            return w

    @property
    def callbacks_started(self) -> bool:
        """True once an on_candle callback was registered (its worker runs)."""
        return self._worker is not None

    def callbacks_status(self) -> dict:
        """on_candle calls: queued (backlog now), called, dropped (queue full), max_backlog, limit."""
        w = self._worker
        if w is None:
            return {"queued": 0, "called": 0, "dropped": 0, "max_backlog": 0,
                    "limit": int(self._config().callback_queue)}
        return w.status()

    def wait_callbacks(self, timeout: float | None) -> bool:
        """Block until the on_candle calls queued so far have run (True) or ``timeout`` passes."""
        w = self._worker
        return True if w is None else w.wait_idle(timeout)

    def stop_callbacks(self, timeout: float) -> None:
        """Stop the worker; what is queued is called for up to ``timeout`` seconds."""
        w, self._worker = self._worker, None
        if w is not None:
            w.stop(timeout)

    def _call(self, fn: Callable, candle: Candle) -> None:
        try:
            fn(candle)
        except Exception as exc:  # a user's callback never stops the stream; reported once
            if id(fn) not in self._failed_callbacks:
                self._failed_callbacks.add(id(fn))
                name = getattr(fn, "__name__", repr(fn))
                msg = f"on_candle callback {name} raised {type(exc).__name__}: {exc} (reported once; the stream goes on)"
                log.warning(msg)
                self._errors.append(("callback", msg))

    # ------------------------------------------------------------------ Listener (stream threads)
    def on_closed(self, stream: Any, batches: list[CandleBatch]) -> None:
        jobs: list[tuple[Callable, Candle]] = []
        for b in batches:
            if len(b) <= SMALL_BATCH:
                self._closed_small(b, jobs)
                continue
            # only instruments someone holds a series or a callback for: a collector streaming
            # thousands that nobody reads in this process does no per-instrument work here
            wanted = [t for (t, tf) in list(self.buffers) + list(self._callbacks) if tf == b.tf]
            if not wanted:
                continue
            keep = member(b.token, wanted)
            if not keep.all():
                if not keep.any():
                    continue
                b = b.select(keep)
            # sorted by (instrument, start) once; each series takes its slice (no copy per series)
            order = np.lexsort((b.start, b.token))  # stable: the later of two equal starts last
            toks, starts = b.token[order], b.start[order]
            last = np.ones(len(order), bool)  # the last of each (instrument, start)
            last[:-1] = (toks[1:] != toks[:-1]) | (starts[1:] != starts[:-1])
            if not last.all():
                order, toks, starts = order[last], toks[last], starts[last]
            cols = {"start": starts, "open": b.open[order], "high": b.high[order], "low": b.low[order],
                    "close": b.close[order], "volume": b.volume[order], "oi": b.oi[order]}
            cuts = np.flatnonzero(toks[1:] != toks[:-1]) + 1
            los, his = np.concatenate(([0], cuts)).tolist(), np.append(cuts, len(toks)).tolist()
            for lo, hi in zip(los, his):
                tok = int(toks[lo])
                buf = self.buffers.get((tok, b.tf))
                if buf is not None:
                    buf.upsert_sorted({k: v[lo:hi] for k, v in cols.items()})
                fns = self._callbacks.get((tok, b.tf))
                if fns:
                    fns = list(fns)
                    part = b.select(np.flatnonzero(b.token == tok))  # arrival order, amends too
                    jobs += [(fn, candle) for candle in part for fn in fns]
        if jobs:  # on their own thread: a slow callback never holds up (or grows) the stream
            worker = self._worker or self._callbacks_worker()
            # an own stream's thread gives them a moment (it would take the GIL from them); an
            # attached stream's reads more candles from Redis meanwhile (it waits on the server)
            if worker.submit(jobs) and not stream.attached:
                worker.wait_idle(self.callback_grace)

    def _closed_small(self, b: CandleBatch, jobs: list[tuple[Callable, Candle]]) -> None:
        """``on_closed`` of one small batch (what an attached reader gets per wake: a few candles)
        in plain Python over the columns' lists: the same series updates and jobs, in the same
        order, as the array path (instruments in token order; per instrument, the last of each
        start into the series, every candle in arrival order to the callbacks), without its
        dozens of small-array calls."""
        tf = b.tf
        toks = b.token.tolist()
        mine: dict[int, list[int]] = {}
        for i, t in enumerate(toks):
            if (t, tf) in self.buffers or (t, tf) in self._callbacks:
                mine.setdefault(t, []).append(i)
        if not mine:
            return
        starts, o, h, lo, c, v, oi, ticks = (b.start.tolist(), b.open.tolist(), b.high.tolist(),
                                             b.low.tolist(), b.close.tolist(), b.volume.tolist(),
                                             b.oi.tolist(), b.ticks.tolist())
        amended = b.amended.tolist() if b.amended is not None else [False] * len(toks)
        for t in sorted(mine):
            rows = mine[t]
            buf = self.buffers.get((t, tf))
            if buf is not None:
                newest = {starts[i]: i for i in rows}  # the later of two equal starts wins
                sel = [newest[st] for st in sorted(newest)]
                buf.upsert_sorted({"start": np.array([starts[i] for i in sel], np.int64),
                                   **{k: np.array([col[i] for i in sel], np.float64) for k, col in
                                      (("open", o), ("high", h), ("low", lo), ("close", c),
                                       ("volume", v), ("oi", oi))}})
            fns = self._callbacks.get((t, tf))
            if fns:
                fns = list(fns)
                for i in rows:
                    candle = Candle(t, tf, starts[i], o[i], h[i], lo[i], c[i], v[i], oi[i], ticks[i],
                                    b.closed, bool(amended[i]))
                    jobs += [(fn, candle) for fn in fns]

    def on_forming(self, stream: Any, batches: list[CandleBatch]) -> None:
        for b in batches:
            for c in b:
                buf = self.buffers.get((c.token, b.tf))
                if buf is not None:
                    buf.set_forming(c)

    def on_gap(self, stream: Any, token: int, start_ns: int, end_ns: int) -> None:
        for (tok, _tf), buf in list(self.buffers.items()):
            if tok == token:
                buf.mark_gap(start_ns, end_ns)
