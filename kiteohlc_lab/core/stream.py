"""Stream: one source feeding one engine in a background thread, out to stores and listeners.

The source delivers batches from its own thread (the Twisted reactor for Kite, a replay thread); the
stream only queues them there, so the feed thread never waits on aggregation or I/O. The stream thread
drains everything queued and aggregates it batch by batch; what it makes goes out as events
(core.events) to the sinks subscribed to them (core.sinks: history, live store, recorder; the
listener), so the thread knows no store by name.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from typing import Any, Callable

from .candles import CandleBatch
from .clock import ExchangeClock
from .engine import Engine
from .events import (  # Listener: the listener's shape, importable from here as before
    Bus, CandlesClosed, Drained, FormingChanged, Gap, Listener, Resumed, StreamDone, StreamError,
    TicksAccepted, TicksReceived, TicksRejected, listen,
)
from .owner import LockedEngine, StreamStats, engine_lock
from .repair import REPAIR_SETTLE_S, Repairs
from .sanity import TickFilter
from .sinks import HistorySink, LiveSink, RecorderSink, merge_by_tf
from .ticks import TickBatch
from .timeframes import parse_timeframe

log = logging.getLogger("kiteohlc_lab.stream")

CALL_TIMEOUT_S = 30.0  # Stream.call: how long the notebook waits for the stream thread

_LOCK_GUARD = threading.Lock()  # guards _serving (whether call() queues or runs inline)


class Stream:
    """Source -> Engine -> stores -> listener, in one daemon thread.

    The stream thread owns the engine once the stream runs: everything that changes it (a new
    timeframe, imported state, instruments added or dropped) goes through ``call``, which runs it
    on that thread in order with the batches. Readers in other threads use ``forming`` /
    ``forming_candle`` / ``export_columns`` here (copies taken under ``lock``).
    """

    _serving = False  # True while the thread takes "call" items (set by start, cleared by _run)
    tick_store: Any = None  # stores.ticks.TickStore keeping its ticks (runtime.launch, record_ticks)

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
        repair_fetch: Callable[[int, int, int], CandleBatch] | None = None,
        repair_settle: float = REPAIR_SETTLE_S,
        history_jobs: Callable[..., None] | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.engine = engine
        self.tokens = list(tokens)
        self.symbols = dict(symbols or {})
        self._names: list[str] | None = None  # the tokens' symbols (status), until they change
        self.listener = listener
        self.state = "starting"
        self.error: str | None = None
        self.errors: list[str] = []
        self.stats = StreamStats()
        self.done = threading.Event()
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._room = threading.Condition()  # notified when a drain has taken the queue (wait_room)
        # what the thread makes goes out as events (core.events); the stores, the recorder and the
        # listener are sinks subscribed to them (core.sinks), unknown to the thread by name
        self.events = Bus()
        self.emit_interval = 0.05  # a long drain emits CandlesClosed at least this often
        self.history_sink = HistorySink(self.events, history, self._record_error, name) if history is not None else None
        self.live_sink = (LiveSink(self.events, live_store, engine, bool(source.live), self._record_error,
                                   self.history_sink) if live_store is not None else None)
        if recorder is not None:
            RecorderSink(self.events, recorder, self._record_error)
        if listener is not None:
            listen(self.events, self, listener)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"kiteohlc-{name}", daemon=True)
        # gap repair (core.repair): candles longer than a minute, or not closed yet when the
        # minutes came, are fetched whole once over on Kite's side (repair thread)
        self.repairs = Repairs(name, engine, repair_fetch, repair_settle, source=source,
                               deliver=self._q.put, on_error=self.on_error,
                               record_error=self._record_error, stop=self._stop,
                               name_of=lambda t: self.symbols.get(t, t), submit=history_jobs)
        # bad ticks never reach the engine (core.sanity); a live source's stamps are checked against
        # the exchange clock its feed estimates (feeds.kite), else the wall clock
        self.exchange_clock: ExchangeClock = getattr(source, "exchange_clock", None) or ExchangeClock()
        self.filter = TickFilter(bool(source.live), name_of=lambda t: self.symbols.get(t, str(t)))
        self._clock_said = False

    # -- Sink (called from the source's thread: queue only)
    def on_batch(self, batch: TickBatch) -> None:
        if len(batch):
            self._q.put(("batch", batch))

    def backlog(self) -> int:
        """Items queued and not handled yet (a replay reads its tape no further ahead than this)."""
        return self._q.qsize()

    def wait_room(self, limit: int, timeout: float) -> bool:
        """Block until fewer than ``limit`` items are queued (True) or ``timeout`` passes: a replay's
        back-pressure, woken once per drain instead of polling (a poll every 2 ms took the GIL from
        the stream thread 500 times a second)."""
        with self._room:
            return self._room.wait_for(lambda: self._q.qsize() < limit, timeout)

    def on_done(self) -> None:
        self._q.put(("done",))

    def on_error(self, message: str, fatal: bool) -> None:
        self._q.put(("error", message, fatal))

    def on_gap(self, token: int, start_ns: int, end_ns: int) -> None:
        self._q.put(("gap", token, start_ns, end_ns))

    def on_resume(self, tokens: list[int]) -> None:
        self._q.put(("resume", list(tokens)))

    def on_history(self, token: int, tf: str, candles: CandleBatch) -> None:
        self._q.put(("history", token, tf, candles))

    # -- one owner of the running stream's state
    @property
    def lock(self) -> "threading.RLock":
        """Held by the stream thread while its engine changes (per batch); readers copy under it."""
        return engine_lock(self.engine)

    def call(self, fn: Callable[[], Any], timeout: float | None = CALL_TIMEOUT_S) -> Any:
        """Run ``fn()`` on the stream thread, in order with the batches, and return its result.

        Its exception is raised here, not in the stream. Inline (under ``lock``) when called from
        the stream thread itself or when the thread is not taking calls (not started, ended).
        """
        if threading.current_thread() is not self._thread:
            fut: concurrent.futures.Future = concurrent.futures.Future()
            with _LOCK_GUARD:
                queued = self._serving
                if queued:
                    self._q.put(("call", fn, fut))
            if queued:
                try:
                    return fut.result(timeout)
                except concurrent.futures.TimeoutError:
                    raise TimeoutError(f"stream {self.name}: its thread did not run the change "
                                       f"within {timeout} s (state {self.state})") from None
        with self.lock:
            return fn()

    def _run_call(self, fn: Callable[[], Any], fut: concurrent.futures.Future) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            with self.lock:
                result = fn()
        except BaseException as exc:  # noqa: BLE001 - the caller gets it; the stream goes on
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def _stop_serving(self) -> None:
        """The thread ends: later calls run inline; calls already queued run now, in order."""
        with _LOCK_GUARD:
            self._serving = False
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return
            if item[0] == "call":
                self._run_call(item[1], item[2])

    def add_timeframe(self, tf: Any) -> Any:
        """Aggregate one more timeframe (from the next tick on), on the stream thread."""
        return self.call(lambda: self.engine.add_timeframe(tf))

    def remove_timeframe(self, tf: Any) -> bool:
        """Stop aggregating ``tf`` (its forming candles are dropped); True if it was there."""
        label = parse_timeframe(tf).label

        return self.call(lambda: self.engine.remove_timeframe(label))  # the last one stays

    def import_state(self, states: Any) -> None:
        """Continue instruments from saved live state (``Engine.import_state``), on the stream thread."""
        self.call(lambda: self.engine.import_state(states))

    def forming(self, tf: Any, token: int | None = None) -> CandleBatch:
        """A copy of the forming candles of ``tf`` (all instruments or one), consistent across them."""
        with self.lock:
            return self.engine.forming(tf, token)

    def forming_candle(self, token: int, tf: str) -> Any:
        with self.lock:
            return self.engine.forming_candle(token, tf)

    def export_columns(self, tokens: Any = None) -> Any:
        with self.lock:
            return self.engine.export_columns(tokens)

    # -- lifecycle
    def start(self) -> "Stream":
        with _LOCK_GUARD:
            self._serving = True
        self._thread.start()
        self.source.start(self)
        return self

    def subscribe(self, tokens: list[int], symbols: dict[int, str] | None = None) -> None:
        """Follow more instruments (no reconnect); on the stream thread, in order with the batches."""
        self.call(lambda: self._subscribe(tokens, symbols))

    def _subscribe(self, tokens: list[int], symbols: dict[int, str] | None) -> None:
        new = [t for t in tokens if t not in self.tokens]
        self.tokens.extend(new)
        self.symbols.update(symbols or {})
        self._names = None
        if new:
            self.source.subscribe(new)

    def unsubscribe(self, tokens: list[int]) -> None:
        """Stop following some instruments; their candles so far stay (forming ones in Redis)."""
        self.call(lambda: self._unsubscribe(tokens))

    def _unsubscribe(self, tokens: list[int]) -> None:
        drop = {int(t) for t in tokens}
        self.tokens = [t for t in self.tokens if t not in drop]
        self._names = None
        unsub = getattr(self.source, "unsubscribe", None)
        if unsub is not None:
            unsub(sorted(drop))

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

    # -- what every stream is (streaminfo.StreamHandle)
    attached = False  # an own feed: it writes the stores

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def source_name(self) -> str:
        return str(self.source.name)

    @property
    def realtime(self) -> bool:
        return bool(self.source.live)

    @property
    def timeframes(self) -> list:
        return list(self.engine.timeframes)

    def written_tokens(self) -> list[int]:
        return list(self.tokens)

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
                with self._room:  # a replay waiting for room queues the next chunks meanwhile
                    self._room.notify_all()
                if not self._handle(items):
                    break
        except Exception as exc:  # the background thread never dies silently
            # recorded once (the listener shows it; status()["error"]); the traceback for debugging
            log.debug("stream %s failed", self.name, exc_info=True)
            self._fail(f"stream {self.name} failed: {type(exc).__name__}: {exc}")
        finally:
            self._stop_serving()
            if self.state == "failed":
                self._release_source()
            self.events.emit(StreamDone(self.name, self.state))
            self.done.set()

    def _release_source(self) -> None:
        """A failed stream lets go of its feed: no connection left decoding for nobody."""
        self._stop.set()  # the repair worker too
        try:
            self.source.stop()
        except Exception as exc:  # noqa: BLE001 - it failed already; say why it did not stop
            log.warning("stream %s: source did not stop cleanly: %s", self.name, exc)

    def _handle(self, items: list[tuple]) -> bool:
        closed: list[CandleBatch] = []  # since the last CandlesClosed
        touched: set[int] = set()
        keep_going = True
        finished = False
        eng = LockedEngine(self.engine, self.lock)  # changes hold the lock, per batch
        bus, name = self.events, self.name
        slice_end = time.monotonic() + self.emit_interval
        for item in items:
            kind = item[0]
            if kind == "batch":
                batch: TickBatch = item[1]
                self.stats.count(len(batch))
                if bus.wants(TicksReceived):
                    bus.emit(TicksReceived(name, batch))
                n = len(batch)
                batch = self.filter.check(batch, self.exchange_clock.now_ns() if self.source.live else None)
                if len(batch) < n and bus.wants(TicksRejected):
                    bus.emit(TicksRejected(name, n - len(batch)))
                if len(batch):
                    if bus.wants(TicksAccepted):
                        bus.emit(TicksAccepted(name, batch))
                    closed += eng.process(batch)
                    touched.update(eng.last_tokens.tolist())
            elif kind == "done":
                held = self.filter.flush()  # a tape's last tick, if it waited for a next one
                if len(held):
                    if bus.wants(TicksAccepted):
                        bus.emit(TicksAccepted(name, held))
                    closed += eng.process(held)
                    touched.update(eng.last_tokens.tolist())
                # the tape ended, not the candles: by event time the last candles are still forming
                # (no tick proved their end). They stay forming in the live store, so a replay of
                # the rest of the day, in this kernel or the next, continues them exactly.
                finished = True
            elif kind == "error":
                _, message, fatal = item
                self._record_error(message)
                if fatal:
                    self.state = "failed"
                    keep_going = False
            elif kind == "resume":
                with self.lock:
                    self.engine.resume(item[1])
                bus.emit(Resumed(name, tuple(item[1])))
            elif kind == "gap":
                _, token, s, e = item
                bus.emit(Gap(name, token, s, e))
            elif kind == "history":
                _, token, tf, candles = item
                closed += self.repairs.rebucket(token, tf, candles)
            elif kind == "repaired":
                _, token, tf, lo, hi, candles = item
                closed += self.repairs.rebucket(token, "1m", candles, only=(tf, lo, hi))
            elif kind == "stop":
                keep_going = False
            elif kind == "call":  # a change from another thread (Stream.call), in batch order
                self._run_call(item[1], item[2])
            if closed and time.monotonic() >= slice_end:  # a long drain: history writes meanwhile
                closed = self._emit_closed(closed)
                slice_end = time.monotonic() + self.emit_interval
        if self.source.live and not finished and self.exchange_clock.ready:
            closed += eng.advance(self.exchange_clock.now_ns())
        self._notices()
        if self.repairs.pending:
            self.repairs.due(time.time_ns())  # this module's clock (tests shift it)
        self._emit_closed(closed)
        if touched:  # forming candles are read from the engine on demand (SeriesBuffer.bind_engine)
            bus.emit(FormingChanged(name, frozenset(touched)))
        bus.emit(Drained(name, finished or not keep_going))
        if finished:
            self.state = "done"
            self.done.set()
            return False
        return keep_going

    def _emit_closed(self, closed: list[CandleBatch]) -> list[CandleBatch]:
        merged = merge_by_tf(closed)  # one upsert per timeframe
        if merged:
            self.events.emit(CandlesClosed(self.name, merged))
        return []

    @property
    def repair_settle(self) -> float:
        """Seconds after a bucket's end before its repair is fetched (``Repairs.settle``)."""
        return self.repairs.settle

    @repair_settle.setter
    def repair_settle(self, seconds: float) -> None:
        self.repairs.settle = float(seconds)

    def _notices(self) -> None:
        """One-line reports that are not errors: bad ticks (once per instrument and kind), clock skew."""
        for message in self.filter.take_messages():  # the listener logs and shows them
            self.events.emit(StreamError(self.name, message, notice=True))
        said = self.exchange_clock.message
        if said and not self._clock_said:
            self._clock_said = True
            self.events.emit(StreamError(self.name, said, notice=True))

    def rejected(self) -> dict[str, dict[str, int]]:
        """Per symbol: bad ticks rejected by kind, and volume glitches."""
        name = self.filter.name_of
        out = self.filter.rejected()
        for tok, n in self.engine.glitches().items():
            out.setdefault(name(tok), {})["volume_glitch"] = n
        return out

    def _record_error(self, message: str) -> None:
        if message not in self.errors:
            self.errors.append(message)
            self.error = message
            self.events.emit(StreamError(self.name, message))

    def _fail(self, message: str) -> None:
        self.state = "failed"
        self._record_error(message)

    def symbol_names(self) -> list[str]:
        """The instruments' symbols in token order (made again only after a (un)subscribe: a
        collector's status at thousands of instruments, every second)."""
        if self._names is None:
            self._names = [self.symbols.get(t, str(t)) for t in self.tokens]
        return self._names

    def status(self) -> dict:
        src: dict[str, Any] = {}
        try:
            src = self.source.status() or {}
        except Exception as exc:
            src = {"error": str(exc)}
        age: Any = None
        if self.stats.last_tick_wall is not None:
            age = time.monotonic() - self.stats.last_tick_wall
        if src.get("last_tick_age") is not None:
            age = src["last_tick_age"]
        state = self.state
        if state == "running" and src.get("state") in ("connecting", "reconnecting", "failed", "stalled"):
            state = src["state"]
        return {
            "stream": self.name,
            "source": self.source_name,
            "state": state,
            "symbols": list(self.symbol_names()),
            "timeframes": [t.label for t in self.engine.timeframes],
            "ticks": self.stats.ticks,
            "ticks_per_s": round(self.stats.current_rate(), 1),
            "last_tick_age": None if age is None else round(age, 2),
            "reconnects": src.get("reconnects", 0),
            "late": self.engine.stats["late"],
            "volume_glitches": self.engine.stats["volume_glitches"],
            "bad_ticks": dict(self.filter.totals),
            "rejected": self.rejected(),
            "clock_offset_s": round(self.exchange_clock.offset_s, 2),
            "error": self.error or src.get("error"),
            "feed": src,
            **({"tick_store": self.tick_store.status()} if self.tick_store is not None else {}),
        }
