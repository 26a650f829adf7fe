"""Gap repair: candles of a stream rebuilt from Kite's historical minute candles after an outage.

A ``Stream`` owns one ``Repairs``. On the stream thread it hands it the minutes the feed delivers
(``rebucket``: closed candles of their timeframe replaced at once, longer or still forming ones
pended) and, each drain, the time (``due``): repairs whose buckets are over (``REPAIR_SETTLE_S``
after their end, when Kite's candle is final) are fetched on the session's history thread
(``submit``: runtime.history.HistoryService; a worker thread of its own without one), which delivers
them back to the stream as ``("repaired", token, tf, lo, hi, minutes)`` items, which
the stream thread rebuckets with ``only=(tf, lo, hi)``. Nothing here reads a clock.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

import numpy as np

from .candles import CandleBatch, combine
from .timeframes import NS, bucket_start, parse_timeframe

# The one rule "a Kite candle is final some seconds after it ends" (Zerodha: wait > 10 s). Gap
# repair, the Kite feed's outage repair (feeds.kite repair_grace) and reconciliation take it from here.
REPAIR_SETTLE_S = 12.0

Fetch = Callable[[int, int, int], CandleBatch]  # (token, lo, hi) -> Kite's minutes in [lo, hi)


class Repairs:
    """The gap repairs of one stream (``name``) over its ``engine`` (read on the stream thread).

    ``fetch`` gets Kite's minutes (None: the ``source``'s historical client, if it has one);
    ``settle``: seconds after a bucket's end before it is fetched. ``deliver`` queues a repaired
    item to the stream thread; ``on_error(message, fatal)`` reports a failed fetch from the worker
    (through the stream's queue), ``record_error(message)`` one on the stream thread; ``stop`` ends
    the worker; ``name_of(token)`` names an instrument in messages; ``submit(run, cancelled=)`` runs
    a fetch on the session's history thread (None: a worker thread of this stream's own).
    """

    def __init__(self, name: str, engine: Any, fetch: Fetch | None, settle: float, *, source: Any,
                 deliver: Callable[[tuple], None], on_error: Callable[[str, bool], None],
                 record_error: Callable[[str], None], stop: threading.Event,
                 name_of: Callable[[int], Any], submit: Callable[..., None] | None = None) -> None:
        self.name = name
        self.engine = engine
        self.fetch = fetch
        self.settle = float(settle)
        self.source = source
        self._deliver = deliver
        self._on_error = on_error
        self._record_error = record_error
        self._stop = stop
        self._name_of = name_of
        self._submit = submit
        # (token, tf, lo, hi) waits until [lo, hi) is over on Kite's side, then Kite's minutes for
        # the whole buckets are fetched (worker thread) and come back as "repaired" items
        self._repairs: list[tuple[int, str, int, int]] = []
        self._q: queue.SimpleQueue | None = None

    def rebucket(self, token: int, tf: str, minutes: CandleBatch,
                 only: tuple[str, int, int] | None = None) -> list[CandleBatch]:
        """Gap repair: candles from Kite's historical minute candles, for each timeframe >= 1 minute.

        Every candle from the one holding the last tick before an outage to the one holding the
        first tick after is replaced by one built from Kite's minutes for its *whole* bucket, once
        that bucket is over on Kite's side: the minutes the feed delivers (the outage's own) replace
        closed candles of their timeframe at once; a longer candle, or one still forming, waits
        (``pend``) until its end + ``settle`` seconds and then gets its complete minutes
        fetched. The engine's volume baseline is the cumulative volume of the last tick it saw, so
        candles after the repaired ones are right as they are. Sub-minute timeframes are never
        filled: the listener marks the gap. ``only=(tf, lo, hi)``: apply fetched minutes to that
        timeframe's buckets in ``[lo, hi)``.
        """
        out: list[CandleBatch] = []
        if len(minutes) == 0:
            return out
        src = parse_timeframe(tf)
        eng = self.engine
        anchor = eng.anchor_of(token)
        order = np.argsort(minutes.start, kind="stable")
        minutes = minutes.select(order)
        for t in eng.timeframes:
            if t.seconds < src.seconds or t.seconds % src.seconds:
                continue
            if only is not None and t.label != only[0]:
                continue
            fb = eng.forming(t.label, token)
            limit = int(fb.start[0]) if len(fb) else None
            b = bucket_start(minutes.start, t, anchor if anchor is not None else 0)
            m = minutes
            if only is not None:
                keep = (b >= only[1]) & (b < only[2])
                b, m = b[keep], m.select(keep)
                if not len(b):
                    continue
            elif t.seconds > src.seconds:
                # the delivered minutes cover only part of these buckets: fetch them whole later
                self.pend(token, t.label, int(b[0]), int(b[-1]) + t.ns)
                continue
            cb = combine(m, t.label, b, token=token)
            if limit is not None and (cb.start >= limit).any():
                # still forming here: replaced once it is over (the ticks miss the outage's part)
                self.pend(token, t.label, limit, int(cb.start[-1]) + t.ns)
                cb = cb.select(cb.start < limit)
            if len(cb):
                out.append(cb)
        return out

    def pend(self, token: int, tf: str, lo: int, hi: int) -> None:
        """Repair ``tf``'s buckets of ``token`` in [lo, hi) once they are over (and settled)."""
        item = (int(token), tf, int(lo), int(hi))
        if item not in self._repairs:
            self._repairs.append(item)

    @property
    def pending(self) -> int:
        """Repairs waiting for their buckets to be over."""
        return len(self._repairs)

    def due(self, now: int) -> None:
        """Hand repairs whose buckets are over at ``now`` (epoch ns: on Kite's side, and closed
        here) to the fetcher."""
        settle = int(self.settle * NS)
        for item in list(self._repairs):
            token, tf, lo, hi = item
            if now < hi + settle:
                continue
            fb = self.engine.forming(tf, token)
            if len(fb) and int(fb.start[0]) < hi:
                continue  # the engine has not closed it yet (grace): next round
            self._repairs.remove(item)
            fetch = self.fetch or self._source_fetch()
            if fetch is None:
                self._record_error("gap repair of longer candles unavailable: no historical client")
                continue
            if self._submit is not None:
                self._submit(lambda item=item, fetch=fetch: self._fetch_one(item, fetch),
                             cancelled=self._stop.is_set,
                             what=f"gap repair of {self._name_of(token)} {tf}")
                continue
            if self._q is None:
                self._q = queue.SimpleQueue()
                threading.Thread(target=self._worker, args=(self._q, fetch),
                                 name=f"kiteohlc-repair-{self.name}", daemon=True).start()
            self._q.put(item)

    def _source_fetch(self) -> Callable[[int, int, int], CandleBatch] | None:
        client_of = getattr(self.source, "history_client", None)  # a Kite feed's historical client
        if client_of is None:
            return None
        self.fetch = lambda tok, a, b: client_of().fetch(tok, "1m", a, b)
        return self.fetch

    def _worker(self, q: queue.SimpleQueue, fetch: Callable) -> None:
        # its own thread: Kite's 3 requests/s limit must not stall aggregation
        while not self._stop.is_set():
            try:
                item = q.get(timeout=0.5)
            except queue.Empty:
                continue
            self._fetch_one(item, fetch)

    def _fetch_one(self, item: tuple[int, str, int, int], fetch: Callable) -> None:
        token, tf, lo, hi = item
        try:
            minutes = fetch(token, lo, hi)
        except Exception as exc:  # noqa: BLE001 - the gap stays marked
            self._on_error(f"gap repair of {self._name_of(token)} {tf} failed: {exc}", False)
            return
        if not self._stop.is_set():
            self._deliver(("repaired", token, tf, lo, hi, minutes))
