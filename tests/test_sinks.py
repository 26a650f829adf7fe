"""The stream's sinks (core/sinks.py): the stream thread never waits for a store, and the live state
calls a candle closed only once the history holds it."""

from __future__ import annotations

import threading

import numpy as np

from kiteohlc_lab.core.engine import Engine
from kiteohlc_lab.core.events import Bus, CandlesClosed, Drained, FormingChanged, StreamDone
from kiteohlc_lab.core.sinks import HistorySink, LiveSink
from kiteohlc_lab.core.ticks import TickBatch

T0 = 1_764_560_700 * 10**9  # 2025-12-01 09:15 IST


class GatedStore:
    """A store whose writes wait for ``gate`` (a slow or stalled server); it records what it got."""

    def __init__(self, log: list, name: str) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.log, self.name = log, name

    def write(self, *args) -> None:
        self.entered.set()
        assert self.gate.wait(30), f"{self.name} was never released"
        self.log.append((self.name, args))


def engine_with_a_closed_candle() -> tuple[Engine, list]:
    eng = Engine(["1m"])
    ts = T0 + np.array([1, 30, 61]) * 10**9  # the third tick closes the 09:15 candle
    closed = eng.process(TickBatch(np.array([5, 5, 5]), ts, np.array([10.0, 11.0, 12.0]),
                                   np.array([100.0, 150.0, 170.0]), np.full(3, np.nan)))
    assert len(closed) == 1 and len(closed[0]) == 1
    return eng, closed


def test_live_write_runs_on_its_own_thread_after_the_history():
    log: list = []
    hist, live = GatedStore(log, "history"), GatedStore(log, "live")
    bus = Bus()
    eng, closed = engine_with_a_closed_candle()
    hs = HistorySink(bus, hist, report=lambda m: log.append(("error", m)), name="t")
    ls = LiveSink(bus, live, eng, live=True, report=lambda m: log.append(("error", m)), history=hs)
    bus.emit(CandlesClosed("t", closed))
    bus.emit(FormingChanged("t", frozenset({5})))
    bus.emit(Drained("t"))  # returns at once: both stores are still shut
    assert hist.entered.wait(10)
    assert not live.entered.is_set() and log == []  # the live state waits for the history
    assert not ls.drain(timeout=0.05)
    hist.gate.set()
    assert live.entered.wait(10)  # history written: the live write goes out
    live.gate.set()
    assert ls.drain(timeout=10)
    assert [name for name, _ in log] == ["history", "live"]
    forming, published, state = log[1][1]
    assert [len(b) for b in published] == [1] and int(published[0].start[0]) == T0
    assert [len(f) for f in forming] == [1] and list(state.tokens) == [5]
    bus.emit(StreamDone("t", "done"))


def test_a_stalled_live_store_holds_at_most_two_writes_and_the_final_drain_waits():
    log: list = []
    live = GatedStore(log, "live")
    bus = Bus()
    eng, closed = engine_with_a_closed_candle()
    ls = LiveSink(bus, live, eng, live=True, report=lambda m: log.append(("error", m)), interval=0.0)
    bus.emit(CandlesClosed("t", closed))
    bus.emit(Drained("t"))
    assert live.entered.wait(10)
    bus.emit(FormingChanged("t", frozenset({5})))
    bus.emit(Drained("t"))  # queued behind the stalled one: the stream thread goes on
    final = threading.Thread(target=lambda: (bus.emit(FormingChanged("t", frozenset({5}))),
                                             bus.emit(Drained("t", final=True))))
    final.start()
    final.join(0.2)
    assert final.is_alive()  # a third write waits for room, and the final drain for all of them
    live.gate.set()
    final.join(10)
    assert not final.is_alive() and [name for name, _ in log] == ["live"] * 3
    bus.emit(StreamDone("t", "done"))
