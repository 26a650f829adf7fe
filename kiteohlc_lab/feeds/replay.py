"""Replay tapes (CSV or Parquet) as a tick source, and recording any stream to a tape.

Tape columns: ``timestamp`` (ISO-8601; naive means IST wall-clock), ``instrument_token``, optional
``tradingsymbol``, ``last_price``, optional ``volume_traded`` (cumulative day volume), optional ``oi``.
Rows are delivered in file order (arrival order). A malformed row is reported with its line number and
content; the rows before it are kept and delivered. Reading a tape whole: ``feeds.taperead``; block by
block: ``feeds.tapefile``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.ticks import TickBatch, member
from ..core.timeframes import NS
from ..errors import TapeError
from .base import Sink
from .taperead import OPTIONAL, REQUIRED, Tape, read_tape  # noqa: F401 - importable from here as before

CHUNK = 65_536  # ticks per batch handed to the engine (its sweet spot: its work stays in cache)


class ReplaySource:
    """Deliver a tape's ticks for the chosen tokens; ``speed`` 0 = as fast as possible, 1 = recorded
    pace, 60 = sixty times faster (pacing by the tape's own timestamps).

    ``tape`` is a ``Tape`` (in memory) or a ``feeds.tapefile.TapeStream`` (read block by block, never
    more than ``MAX_BACKLOG`` blocks ahead of the stream thread: bounded memory at any tape size).
    ``tokens`` None replays every instrument; ``on_new_tokens(pairs)``, when set, is called from the
    replay thread with the (symbol, token) pairs a block brings for the first time, before that block.
    """

    live = False
    MAX_BACKLOG = 8  # chunks queued on the stream and not yet aggregated

    def __init__(self, tape: Any, tokens: list[int] | None = None, speed: float = 0.0,
                 chunk: int = CHUNK) -> None:
        if speed < 0:
            raise TapeError(f"speed {speed} is not accepted; use 0 (as fast as possible) or a positive factor")
        self.name = "replay"
        self.tape = tape
        self.speed = float(speed)
        self.chunk = chunk
        self._tokens = set(int(t) for t in tokens) if tokens else None
        self.on_new_tokens: Callable[[list[tuple[str, int]]], Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sent = 0
        self._consumed = 0  # rows of the tape read (delivered or not selected)
        self._state = "idle"
        self._started = 0.0
        self._last_tick_wall: float | None = None
        self._clock: list[int] | None = None  # paced replay: [wall t0 ns, tape t0, tape max so far]

    def _select(self, t: TickBatch, every: set[int] | None = None) -> TickBatch:
        if self._tokens is None or (every is not None and self._tokens >= every):
            return t  # every instrument of the tape: no copy
        return t.take(member(t.token, np.fromiter(self._tokens, np.int64)))

    def start(self, sink: Sink) -> None:
        self._state = "running"
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(sink,), name="kiteohlc-replay", daemon=True)
        self._thread.start()

    def subscribe(self, tokens: list[int]) -> None:
        if self._tokens is not None:
            self._tokens.update(int(t) for t in tokens)

    def _blocks(self):
        """(ticks, rows consumed) in tape order, in chunks of at most ``chunk`` ticks."""
        if getattr(self.tape, "streamed", False):
            for block, consumed, sym in self.tape.blocks():
                new = self.tape.learn(block, sym)
                if new and self.on_new_tokens is not None and not self._stop.is_set():
                    self.on_new_tokens(new)
                block = self._select(block)
                n = len(block)
                for i in range(0, n, self.chunk):
                    yield block.take(slice(i, i + self.chunk)), consumed - max(0, n - i - self.chunk)
            return
        ticks = self._select(self.tape.ticks, self.tape.tokens())
        for i in range(0, len(ticks), self.chunk):
            yield ticks.take(slice(i, i + self.chunk)), min(len(ticks), i + self.chunk)

    def _run(self, sink: Sink) -> None:
        backlog = getattr(sink, "backlog", None)  # a Stream says how far behind it is
        wait_room = getattr(sink, "wait_room", None)  # ... and wakes a waiter when it has room
        try:
            for ticks, consumed in self._blocks():
                if self._stop.is_set():
                    return
                if wait_room is not None:
                    while not wait_room(self.MAX_BACKLOG, 0.1) and not self._stop.is_set():
                        pass
                elif backlog is not None:  # a sink that only counts: looked at every 2 ms
                    while backlog() >= self.MAX_BACKLOG and not self._stop.is_set():
                        self._stop.wait(0.002)
                if self.speed == 0:
                    if len(ticks):
                        sink.on_batch(ticks)
                    self._sent += len(ticks)
                    self._last_tick_wall = time.monotonic()
                else:
                    self._paced(ticks, sink, self._consumed, consumed)
                self._consumed = consumed
            if self._stop.is_set():
                return
            if self.tape.error:
                sink.on_error(self.tape.error + " (the rows before it were replayed)", False)
            self._state = "done"
            sink.on_done()
        except Exception as exc:  # never die silently
            self._state = "failed"
            sink.on_error(f"replay failed: {type(exc).__name__}: {exc}", True)

    def _paced(self, ticks: TickBatch, sink: Sink, rows_before: int, rows_after: int) -> None:
        """Release ticks when the scaled tape clock reaches them, in slices of ~50 ms wall time;
        the progress moves with them (rows ``rows_before`` .. ``rows_after`` of the tape: a chunk of
        a slow replay can last minutes)."""
        n = len(ticks)
        if n == 0:
            return
        # the tape clock follows arrival order: a tick is due at the max timestamp seen so far
        if self._clock is None:
            self._clock = [time.monotonic_ns(), int(ticks.ts[0]), int(ticks.ts[0])]
        t0_ns, t0_tape, seen = self._clock
        due = np.maximum(np.maximum.accumulate(ticks.ts), seen)
        self._clock[2] = int(due[-1])
        i = 0
        while i < n and not self._stop.is_set():
            elapsed_tape = int((time.monotonic_ns() - t0_ns) * self.speed)
            j = int(np.searchsorted(due, t0_tape + elapsed_tape, side="right"))
            if j > i:
                sink.on_batch(ticks.take(slice(i, j)))
                self._sent += j - i
                self._last_tick_wall = time.monotonic()
                i = j
                if rows_after > rows_before:
                    self._consumed = rows_before + (rows_after - rows_before) * j // n
                continue
            wait = ((due[i] - t0_tape) / self.speed - (time.monotonic_ns() - t0_ns)) / NS
            self._stop.wait(min(max(wait, 0.001), 0.05))

    def stop(self) -> None:
        self._stop.set()
        if self._state == "running":
            self._state = "stopped"
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)

    def progress(self) -> dict:
        """How far the replay is: rows read of the tape's total, ticks/s and the time left."""
        total = getattr(self.tape, "total", None)
        if total is None:
            total = len(self.tape.ticks)
        done = self._consumed
        if self._state == "done":  # the exact count now (a CSV's total was an estimate)
            total = done = self._consumed or total
        elapsed = (time.monotonic() - self._started) if self._started else 0.0
        rate = done / elapsed if elapsed > 0 else 0.0
        frac = min(1.0, done / total) if total else 1.0
        eta = (total - done) / rate if rate > 0 and self._state == "running" else None
        return {"fraction": frac, "rows": done, "total": total, "ticks_per_s": rate,
                "eta_s": None if eta is None else max(0.0, eta),
                "estimated": bool(getattr(self.tape, "estimated", False)) and self._state != "done"}

    def progress_line(self) -> str:
        """One line: ``replay tape.parquet: 45% (9,000,000 of 20,000,000 ticks), 4.1M ticks/s, ETA 3 s``."""
        p = self.progress()
        about = "~" if p["estimated"] else ""
        eta = "" if p["eta_s"] is None else f", ETA {p['eta_s']:.0f} s"
        rate = p["ticks_per_s"]
        speed = (f"{rate / 1e6:.1f}M" if rate >= 1e6 else f"{rate / 1e3:.0f}k" if rate >= 1e4
                 else f"{rate:,.0f}")  # a paced replay: thousands a second, not "0.0M"
        return (f"replay {Path(self.tape.path).name}: {p['fraction']:.0%} ({p['rows']:,} of {about}"
                f"{p['total']:,} ticks), {speed} ticks/s{eta}")

    def status(self) -> dict:
        total = getattr(self.tape, "total", None)
        if not getattr(self.tape, "streamed", False):
            total = len(self.tape.ticks) if self._tokens is None else None
        age = None if self._last_tick_wall is None else time.monotonic() - self._last_tick_wall
        return {"state": self._state, "ticks_sent": self._sent, "tape": Path(self.tape.path).name,
                "speed": self.speed, "total": total, "last_tick_age": age, "reconnects": 0,
                "progress": self.progress()}


class TapeRecorder:
    """Append every batch a stream sees to a Parquet tape (replayable with ``--source replay``)."""

    def __init__(self, path: str | Path, symbols: dict[int, str] | None = None, flush_rows: int = 50_000) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.symbols = dict(symbols or {})
        self.flush_rows = flush_rows
        self._pending: list[TickBatch] = []
        self._rows = 0
        self._writer = None
        self._lock = threading.Lock()
        self.written = 0

    def write(self, batch: TickBatch) -> None:
        with self._lock:
            self._pending.append(batch)
            self._rows += len(batch)
            if self._rows >= self.flush_rows:
                self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._pending:
            return
        b = TickBatch.concat(self._pending)
        self._pending, self._rows = [], 0
        table = pa.table({
            "timestamp": pa.array(b.ts, pa.timestamp("ns", tz="UTC")),
            "instrument_token": pa.array(b.token, pa.int64()),
            "tradingsymbol": pa.array([self.symbols.get(int(t), "") for t in b.token], pa.string()),
            "last_price": pa.array(b.price, pa.float64()),
            "volume_traded": pa.array(b.volume, pa.float64(), from_pandas=True),
            "oi": pa.array(b.oi, pa.float64(), from_pandas=True),
        })
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table)
        self.written += len(b)

    def close(self) -> None:
        with self._lock:
            self._flush()
            if self._writer is not None:
                self._writer.close()
                self._writer = None
