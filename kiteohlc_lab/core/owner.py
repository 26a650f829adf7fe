"""Who owns a running engine: its lock (``engine_lock``), the stream thread's locked view of it
(``LockedEngine``) and the stream's tick counters (``StreamStats``).

The stream thread (core.stream) is the only one that changes its engine; it holds the engine's lock
per batch, and readers in other threads copy under the same lock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .candles import CandleBatch
from .ticks import TickBatch

_LOCK_GUARD = threading.Lock()  # makes the first engine_lock of an engine-like object once


def engine_lock(engine: Any) -> "threading.RLock":
    """The lock guarding ``engine``'s state between its stream thread and readers in other threads.

    One per engine (``Engine.lock``, made with the engine; an engine-like object without one gets a
    ``lock`` attribute on first use), so a SeriesBuffer bound to the engine before its Stream exists
    and the Stream itself share it. The stream thread holds it per batch while the engine aggregates
    (and while a ``Stream.call`` runs); readers hold it while they copy.
    """
    lock = getattr(engine, "lock", None)
    if lock is None:
        with _LOCK_GUARD:
            lock = getattr(engine, "lock", None)
            if lock is None:
                lock = threading.RLock()
                engine.lock = lock
    return lock


class LockedEngine:
    """The stream thread's view of its engine: the state-changing calls hold the engine's lock.

    Readers on the stream thread need no lock (only that thread changes the engine); readers in
    other threads take ``engine_lock(engine)`` and copy (``Stream.forming``/``forming_candle``,
    ``SeriesBuffer.forming``).
    """

    __slots__ = ("_eng", "_lock")

    def __init__(self, engine: Any, lock: Any) -> None:
        self._eng = engine
        self._lock = lock

    def process(self, batch: TickBatch) -> list[CandleBatch]:
        with self._lock:  # one batch: microseconds to a few ms, never I/O
            return self._eng.process(batch)

    def advance(self, *args: Any, **kwargs: Any) -> list[CandleBatch]:
        with self._lock:
            return self._eng.advance(*args, **kwargs)

    def flush(self) -> list[CandleBatch]:
        with self._lock:
            return self._eng.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._eng, name)


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
