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


def test_history_writes_a_wake_s_timeframes_together_and_says_which_fails(tmp_path):
    """The history writer hands a store that can (SQLite) every timeframe's batch of a wake in one
    transaction; when that transaction fails it is rolled back whole and the batches go one by
    one, so the good ones are stored and the failing one is reported, once."""
    from kiteohlc_lab.core.candles import CandleBatch
    from kiteohlc_lab.stores.sqlite import SQLiteHistory

    class PickyHistory(SQLiteHistory):
        """Refuses any batch of the 5m timeframe (a store error for one of them)."""
        calls: list = []

        def write_many(self, batches):
            self.calls.append([b.tf for b in batches])
            super().write_many(batches)

        def write(self, batch):
            if batch.tf == "5m":
                raise RuntimeError("disk says no")
            super().write(batch)

    def one(tf, start):
        return CandleBatch(tf, np.array([7], np.int64), np.array([start], np.int64), np.ones(1),
                           np.ones(1), np.ones(1), np.ones(1), np.ones(1), np.full(1, np.nan),
                           np.ones(1, np.int64))

    store = PickyHistory(str(tmp_path / "h.sqlite3"))
    reports: list[str] = []
    bus = Bus()
    sink = HistorySink(bus, store, reports.append, "t")
    bus.emit(CandlesClosed("t", [one("1m", T0), one("15m", T0)]))
    assert sink.drain(10)
    assert store.calls == [["1m", "15m"]] and store.count() == 2 and reports == []

    # a failing write inside the transaction: nothing of it stays, then each batch on its own
    def failing_many(batches):
        store.calls.append([b.tf for b in batches])
        with store._conn():  # the same transaction shape: rows written, then an error
            store._conn().execute("INSERT INTO candles (token, tf, start) VALUES (7, '1m', 1)")
            raise RuntimeError("disk says no")

    store.write_many = failing_many
    bus.emit(CandlesClosed("t", [one("1m", T0 + 60 * 10**9), one("5m", T0)]))
    assert sink.drain(10)
    assert store.calls[-1] == ["1m", "5m"]
    assert store.count() == 3  # the new 1m candle; the rolled-back row and the 5m one are not
    assert reports == ["history store write failed: disk says no"]
    sink.close()
    store.close()


def test_the_live_write_carries_the_touched_instruments_forming_candles_as_the_engine_has_them():
    """The forming candles of a live write are read from the state export's columns: for exactly the
    instruments touched (known ones; an unknown token is left out), every timeframe, the values
    ``Engine.forming_candle`` gives; a timeframe added later holds none until a tick comes."""
    log: list = []
    live = GatedStore(log, "live")
    live.gate.set()
    bus = Bus()
    eng = Engine(["1m", "5m"])
    rng = np.random.default_rng(7)
    toks = np.arange(100, 140)
    n = 400
    eng.process(TickBatch(rng.choice(toks, n), T0 + np.sort(rng.integers(0, 170, n)) * 10**9,
                          rng.uniform(90, 110, n), np.cumsum(rng.integers(0, 50, n)).astype(float),
                          np.full(n, np.nan)))
    eng.add_timeframe("15m")
    ls = LiveSink(bus, live, eng, live=True, report=lambda m: log.append(("error", m)), interval=0.0)
    touched = {int(t) for t in toks[::3]} | {999}  # 999: no such instrument
    bus.emit(FormingChanged("t", frozenset(touched)))
    bus.emit(Drained("t"))
    assert ls.drain(timeout=10)
    forming, _, state = log[0][1]
    assert [f.tf for f in forming] == ["1m", "5m", "15m"]
    assert sorted(state.tokens.tolist()) == sorted(touched - {999})
    for f in forming[:2]:
        assert sorted(f.token.tolist()) == sorted(touched - {999}) and not f.closed
        for i, t in enumerate(f.token.tolist()):
            want = eng.forming_candle(t, f.tf)
            got = (int(f.start[i]), float(f.open[i]), float(f.high[i]), float(f.low[i]), float(f.close[i]),
                   float(f.volume[i]), int(f.ticks[i]))
            assert got == (want.start, want.open, want.high, want.low, want.close, want.volume, want.ticks)
    assert len(forming[2]) == 0
    bus.emit(StreamDone("t", "done"))
