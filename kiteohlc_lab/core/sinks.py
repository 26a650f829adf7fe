"""The stream's sinks: each subscribes to the events it needs (core.events) and owns its I/O.

- ``HistorySink``: closed candles to the history store, on its own writer thread, in order.
- ``LiveSink``: the live state (forming candles, the last closed ones, engine state) to the live
  store, coalesced: at most once per ``interval`` (one round trip), and only after the history sink
  holds every closed candle it says (the live state may call a candle closed only once history has it).
  What a write sends is read from the engine on the stream thread; the write itself (and the wait for
  the history) is done by the sink's writer thread, so the stream thread never waits for a store.
- ``RecorderSink``: the feed's batches as delivered, to a tape.

A sink never raises into the stream: a failed write is reported once through ``report``.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable

import numpy as np

from .candles import CandleBatch
from .events import Bus, CandlesClosed, Drained, FormingChanged, StreamDone, TicksReceived
from .ticks import distinct

Report = Callable[[str], None]


class _Writer:
    """One daemon thread calling ``write(items)`` with what was handed over (``put``), in order: all
    that is queued meanwhile at once (``take_all``), or one item a call. ``limit``: ``put`` waits
    while that many items wait (a store slower than the stream holds it back, in bounded memory).
    ``written(mark())`` waits until what was handed over by then is written (or failed: the
    ``write`` reports); ``close()`` writes what is queued, then ends the thread."""

    def __init__(self, write: Callable[[list], Any], name: str, take_all: bool = False,
                 limit: int | None = None) -> None:
        self._write, self._take_all, self._limit = write, take_all, limit
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._cv = threading.Condition()
        self._handed = 0
        self._done = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: Any) -> None:
        limit = self._limit
        with self._cv:
            if limit is not None:
                self._cv.wait_for(lambda: self._handed - self._done < limit)
            self._handed += 1
        self._q.put(item)

    def _run(self) -> None:
        while True:
            items = [self._q.get()]
            while self._take_all:  # a writer kept waiting (the GIL, the disk) catches up in fewer,
                try:               # larger writes
                    items.append(self._q.get_nowait())
                except queue.Empty:
                    break
            stop = None in items
            try:
                self._write([item for item in items if item is not None])
            finally:
                with self._cv:
                    self._done += len(items) - stop
                    self._cv.notify_all()
            if stop:
                return

    def mark(self) -> int:
        """How much has been handed over so far (for ``written``)."""
        with self._cv:
            return self._handed

    def written(self, mark: int, timeout: float | None = None) -> bool:
        """Wait until what had been handed over at ``mark()`` is written (True), or ``timeout``."""
        with self._cv:
            return self._cv.wait_for(lambda: self._done >= mark, timeout)

    def drain(self, timeout: float | None = None) -> bool:
        return self.written(self.mark(), timeout)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self.drain(timeout=30)
        self._q.put(None)
        self._thread.join(timeout=5)


class HistorySink:
    """Closed candles -> ``store.write``, one batch per timeframe, on a writer thread.

    ``drain()`` waits until everything handed over is written (a final ``Drained`` waits);
    ``written(mark())`` until what was handed over by then is (the live sink's writer waits so before
    a write); ``StreamDone`` ends the thread.
    """

    def __init__(self, bus: Bus, store: Any, report: Report, name: str) -> None:
        self.store = store
        self._report = report
        self._writer = _Writer(self._write_events, f"kiteohlc-{name}-history", take_all=True)
        bus.subscribe(CandlesClosed, lambda ev: self._writer.put(ev.batches))
        bus.subscribe(Drained, lambda ev: ev.final and self.drain())
        bus.subscribe(StreamDone, lambda ev: self.close())

    def _write_events(self, items: list[list[CandleBatch]]) -> None:
        """The batches of every event taken at once, in one write per timeframe."""
        batches = [b for item in items for b in item]
        try:
            merged = merge_by_tf(batches)
        except Exception:  # noqa: BLE001 - written as they came, one by one
            merged = batches
        self._write(merged)

    def _write(self, closed: list[CandleBatch]) -> None:
        if self.store is None:
            return
        many = getattr(self.store, "write_many", None)  # one transaction for them all (SQLite)
        if many is not None and len(closed) > 1:
            try:
                many(closed)
                return
            except Exception:  # noqa: BLE001 - rolled back whole: each on its own, to say which fails
                pass
        for c in closed:
            try:
                self.store.write(c)
            except Exception as exc:
                self._report(f"history store write failed: {exc}")

    def mark(self) -> int:
        """How much has been handed over so far (for ``written``)."""
        return self._writer.mark()

    def written(self, mark: int, timeout: float | None = None) -> bool:
        """Wait until what had been handed over at ``mark()`` is written (True), or ``timeout``."""
        return self._writer.written(mark, timeout)

    def drain(self, timeout: float | None = None) -> bool:
        return self._writer.drain(timeout)

    def close(self) -> None:
        self._writer.close()


class LiveSink:
    """Forming and closed candles and the engine's state -> ``store.write``, coalesced.

    ``engine`` is read for the forming candles and the state of the instruments touched since the
    last write (on the stream thread, which owns it). A replay (``live=False``) publishes only the
    newest closed candle of each instrument: followers need the latest, the history has them all.
    """

    def __init__(self, bus: Bus, store: Any, engine: Any, live: bool, report: Report,
                 history: HistorySink | None = None, interval: float = 0.2) -> None:
        self.store = store
        self.engine = engine
        self.live = bool(live)
        self.history = history
        self.interval = interval  # seconds between writes (one pipelined round trip each)
        self._report = report
        self._last = 0.0
        self._closed: list[CandleBatch] = []
        self._touched: set[int] = set()
        # the writes, in order; a store slower than the stream: at most two wait
        self._writer = _Writer(self._send_all, "kiteohlc-live-writer", limit=2)
        bus.subscribe(CandlesClosed, self._on_closed)
        bus.subscribe(FormingChanged, lambda ev: self._touched.update(ev.tokens))
        bus.subscribe(Drained, self._on_drained)
        bus.subscribe(StreamDone, lambda ev: self.close())

    def _on_closed(self, ev: CandlesClosed) -> None:
        self._closed += ev.batches
        for c in ev.batches:
            self._touched.update(distinct(c.token).tolist())

    def _on_drained(self, ev: Drained) -> None:
        now = time.monotonic()
        if (self._touched or self._closed) and (ev.final or now - self._last >= self.interval):
            self._last = now
            try:
                job = self._take()
            except Exception as exc:
                self._report(f"live store write failed: {exc}")
                job = None
            if job is not None:
                self._writer.put(job)
        if ev.final:
            self.drain()  # the stream is done once its live state is written

    def _take(self) -> tuple | None:
        """(forming, published, state, history mark) of the next write, read from the engine now (on
        the stream thread, which owns it); None without a store."""
        closed, touched = merge_by_tf(self._closed), self._touched
        self._closed, self._touched = [], set()
        if self.store is None:
            return None
        state = self.engine.export_columns(touched)
        published = closed if self.live else [newest_per_token(c) for c in closed]
        mark = self.history.mark() if self.history is not None else 0
        return forming_of(state), published, state, mark

    def _send_all(self, jobs: list[tuple]) -> None:
        for job in jobs:
            self._send(job)

    def _send(self, job: tuple) -> None:
        forming, published, state, mark = job
        try:
            if self.history is not None:
                self.history.written(mark)  # history first: a candle called closed is in history
            self.store.write(forming, published, state)
        except Exception as exc:
            self._report(f"live store write failed: {exc}")

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until the writes handed to the writer thread are done (True), or ``timeout``."""
        return self._writer.drain(timeout)

    def close(self) -> None:
        self._writer.close()


class RecorderSink:
    """Every batch as the feed delivered it -> ``recorder.write``; closed when the stream ends."""

    def __init__(self, bus: Bus, recorder: Any, report: Report) -> None:
        self.recorder = recorder
        self._report = report
        bus.subscribe(TicksReceived, lambda ev: recorder.write(ev.batch))
        bus.subscribe(StreamDone, self._close)

    def _close(self, _ev: StreamDone) -> None:
        try:
            self.recorder.close()
        except Exception as exc:
            self._report(f"recording failed: {exc}")


def forming_of(state: Any) -> list[CandleBatch]:
    """The forming candles an engine's exported columns (``core.state.StateColumns``) hold, a batch
    per timeframe (empty where none): what ``Engine.forming`` gives for the same instruments, read
    from the columns the state export gathered already (a live write of 1800 of 9000 instruments:
    no pass over all of them per timeframe, no second search of the tokens)."""
    out = []
    for tf, f in state.forming.items():
        out.append(CandleBatch(tf, state.tokens[f["index"]], f["bucket"], f["open"], f["high"], f["low"],
                               f["close"], f["vol"], f["oi"], f["ticks"], closed=False))
    return out


def newest_per_token(batch: CandleBatch) -> CandleBatch:
    """The newest candle of each instrument in ``batch``."""
    if len(batch) <= 1:
        return batch
    order = np.lexsort((batch.start, batch.token))
    tok = batch.token[order]
    last = np.append(tok[1:] != tok[:-1], True)
    return batch.select(order[last])


def merge_by_tf(batches: list[CandleBatch]) -> list[CandleBatch]:
    """Closed candles, one batch per timeframe (amended ones kept after the originals)."""
    batches = [b for b in batches if len(b)]
    if len(batches) <= 1:
        return batches
    by_tf: dict[str, list[CandleBatch]] = {}
    for b in batches:
        by_tf.setdefault(b.tf, []).append(b)
    return [parts[0] if len(parts) == 1 else CandleBatch.concat(parts) for parts in by_tf.values()]
