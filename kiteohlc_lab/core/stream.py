"""Stream: one source feeding one engine in a background thread, out to stores and listeners.

The source delivers batches from its own thread (the Twisted reactor for Kite, a replay thread); the
stream only queues them there, so the feed thread never waits on aggregation or I/O. The stream thread
drains everything queued, aggregates it batch by batch, then writes the stores once (one Redis round
trip for the whole drain) and notifies listeners.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .candles import CandleBatch
from .engine import Engine
from .ticks import TickBatch
from .timeframes import NS, bucket_start, parse_timeframe

log = logging.getLogger("kiteohlc_lab.stream")


class Listener(Protocol):
    def on_closed(self, stream: "Stream", batches: list[CandleBatch]) -> None: ...
    def on_forming(self, stream: "Stream", batches: list[CandleBatch]) -> None: ...
    def on_gap(self, stream: "Stream", token: int, start_ns: int, end_ns: int) -> None: ...
    def on_error(self, stream: "Stream", message: str) -> None: ...


@dataclass
class StreamStats:
    ticks: int = 0
    batches: int = 0
    last_tick_wall: float | None = None
    rate: float = 0.0  # ticks/s, exponentially smoothed
    _rate_t: float = field(default_factory=time.monotonic)
    _rate_n: int = 0

    def count(self, n: int) -> None:
        now = time.monotonic()
        self.ticks += n
        self.batches += 1
        self.last_tick_wall = now
        self._rate_n += n
        dt = now - self._rate_t
        if dt >= 1.0:
            inst = self._rate_n / dt
            self.rate = inst if self.rate == 0 else 0.5 * self.rate + 0.5 * inst
            self._rate_t, self._rate_n = now, 0

    def current_rate(self) -> float:
        if self.last_tick_wall is None or time.monotonic() - self.last_tick_wall > 5:
            return 0.0
        return self.rate


class Stream:
    """Source -> Engine -> stores -> listener, in one daemon thread."""

    def __init__(
        self,
        name: str,
        source: Any,
        engine: Engine,
        tokens: list[int],
        *,
        listener: Listener,
        history: Any = None,
        live_store: Any = None,
        recorder: Any = None,
        symbols: dict[int, str] | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.engine = engine
        self.tokens = list(tokens)
        self.symbols = dict(symbols or {})
        self.listener = listener
        self.history = history
        self.live_store = live_store
        self.recorder = recorder
        self.state = "starting"
        self.error: str | None = None
        self.errors: list[str] = []
        self.stats = StreamStats()
        self.done = threading.Event()
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"kiteohlc-{name}", daemon=True)

    # -- Sink (called from the source's thread: queue only)
    def on_batch(self, batch: TickBatch) -> None:
        if len(batch):
            self._q.put(("batch", batch))

    def on_done(self) -> None:
        self._q.put(("done",))

    def on_error(self, message: str, fatal: bool) -> None:
        self._q.put(("error", message, fatal))

    def on_gap(self, token: int, start_ns: int, end_ns: int) -> None:
        self._q.put(("gap", token, start_ns, end_ns))

    def on_history(self, token: int, tf: str, candles: CandleBatch) -> None:
        self._q.put(("history", token, tf, candles))

    # -- lifecycle
    def start(self) -> "Stream":
        self._thread.start()
        self.source.start(self)
        return self

    def subscribe(self, tokens: list[int], symbols: dict[int, str] | None = None) -> None:
        new = [t for t in tokens if t not in self.tokens]
        self.tokens.extend(new)
        self.symbols.update(symbols or {})
        if new:
            self.source.subscribe(new)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the source, process what it already delivered, flush stores, end the thread."""
        try:
            self.source.stop()
        except Exception as exc:  # stopping must not raise into the notebook
            log.warning("stream %s: source did not stop cleanly: %s", self.name, exc)
        self._stop.set()
        self._q.put(("stop",))
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self.state not in ("failed", "done"):
            self.state = "stopped"
        self.done.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the thread
    def _run(self) -> None:
        self.state = "running"
        tick = 0.25 if self.source.live else 0.5
        try:
            while True:
                try:
                    items = [self._q.get(timeout=tick)]
                except queue.Empty:
                    items = []
                while True:  # drain: aggregate everything queued, write stores once
                    try:
                        items.append(self._q.get_nowait())
                    except queue.Empty:
                        break
                if not self._handle(items):
                    break
        except Exception as exc:  # the background thread never dies silently
            self._fail(f"stream {self.name} failed: {type(exc).__name__}: {exc}")
            log.exception("stream %s failed", self.name)
        finally:
            self._close_outputs()
            self.done.set()

    def _handle(self, items: list[tuple]) -> bool:
        closed: list[CandleBatch] = []
        touched: set[int] = set()
        keep_going = True
        finished = False
        eng = self.engine
        for item in items:
            kind = item[0]
            if kind == "batch":
                batch: TickBatch = item[1]
                self.stats.count(len(batch))
                if self.recorder is not None:
                    self.recorder.write(batch)
                closed += eng.process(batch)
                touched.update(np.unique(batch.token).tolist())
            elif kind == "done":
                closed += eng.flush()
                finished = True
            elif kind == "error":
                _, message, fatal = item
                self._record_error(message)
                if fatal:
                    self.state = "failed"
                    keep_going = False
            elif kind == "gap":
                _, token, s, e = item
                self.listener.on_gap(self, token, s, e)
            elif kind == "history":
                _, token, tf, candles = item
                closed += self._rebucket(token, tf, candles)
            elif kind == "stop":
                keep_going = False
        if self.source.live and not finished:
            closed += eng.advance(time.time_ns())
        closed = [c for c in closed if len(c)]
        for c in closed:
            touched.update(np.unique(c.token).tolist())
        if closed or touched:
            forming = [eng.forming(tf.label) for tf in eng.timeframes]
            self._write_stores(closed, forming, touched)
            if closed:
                self.listener.on_closed(self, closed)
            self.listener.on_forming(self, forming)
        if finished:
            self.state = "done"
            self.done.set()
            return False
        return keep_going

    def _rebucket(self, token: int, tf: str, minutes: CandleBatch) -> list[CandleBatch]:
        """Historical minute candles (gap repair) re-aggregated to each timeframe >= 1 minute.

        Only candles before the instrument's forming candle are replaced; the forming one keeps
        aggregating ticks.
        """
        out: list[CandleBatch] = []
        if len(minutes) == 0:
            return out
        src = parse_timeframe(tf)
        eng = self.engine
        anchor = eng._anchor[eng.slot(token)] if eng.slot(token) is not None else None
        for t in eng.timeframes:
            if t.seconds < src.seconds or t.seconds % src.seconds:
                continue
            fb = eng.forming(t.label, token)
            limit = int(fb.start[0]) if len(fb) else None
            b = bucket_start(minutes.start, t, anchor if anchor is not None else 0)
            order = np.argsort(minutes.start, kind="stable")
            b, m = b[order], minutes.select(order)
            st = np.flatnonzero(np.append(True, b[1:] != b[:-1]))
            ends = np.append(st[1:] - 1, len(b) - 1)
            cb = CandleBatch(
                t.label, np.full(len(st), token, np.int64), b[st], m.open[st],
                np.maximum.reduceat(m.high, st), np.minimum.reduceat(m.low, st), m.close[ends],
                np.add.reduceat(m.volume, st), m.oi[ends], np.add.reduceat(m.ticks, st),
            )
            if limit is not None:
                cb = cb.select(cb.start < limit)
            if len(cb):
                out.append(cb)
        return out

    def _write_stores(self, closed: list[CandleBatch], forming: list[CandleBatch], touched: set[int]) -> None:
        if self.history is not None:
            for c in closed:
                try:
                    self.history.write(c)
                except Exception as exc:
                    self._record_error(f"history store write failed: {exc}")
        if self.live_store is not None:
            try:
                toks = list(touched)
                forming_t = [f.select(np.isin(f.token, toks)) for f in forming]
                self.live_store.write(forming_t, closed, self.engine.export_state(toks))
            except Exception as exc:
                self._record_error(f"live store write failed: {exc}")

    def _record_error(self, message: str) -> None:
        if message not in self.errors:
            self.errors.append(message)
            self.error = message
            self.listener.on_error(self, message)

    def _fail(self, message: str) -> None:
        self.state = "failed"
        self._record_error(message)

    def _close_outputs(self) -> None:
        if self.recorder is not None:
            try:
                self.recorder.close()
            except Exception as exc:
                self._record_error(f"recording failed: {exc}")

    def status(self) -> dict:
        src = {}
        try:
            src = self.source.status() or {}
        except Exception as exc:
            src = {"error": str(exc)}
        age = None
        if self.stats.last_tick_wall is not None:
            age = time.monotonic() - self.stats.last_tick_wall
        if src.get("last_tick_age") is not None:
            age = src["last_tick_age"]
        state = self.state
        if state == "running" and src.get("state") in ("connecting", "reconnecting", "failed", "stalled"):
            state = src["state"]
        return {
            "stream": self.name,
            "source": getattr(self.source, "name", "?"),
            "state": state,
            "symbols": [self.symbols.get(t, str(t)) for t in self.tokens],
            "timeframes": [t.label for t in self.engine.timeframes],
            "ticks": self.stats.ticks,
            "ticks_per_s": round(self.stats.current_rate(), 1),
            "last_tick_age": None if age is None else round(age, 2),
            "reconnects": src.get("reconnects", 0),
            "late": self.engine.stats["late"],
            "error": self.error or src.get("error"),
            "feed": src,
        }
