"""core.events: a Stream emits named events per drain; stores, recorder and listener are subscribers.

A replay-like source feeds a stream with a history store, a live store, a recorder and a listener;
the test subscribes to the bus itself and checks what each event carried against the ticks sent.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from kiteohlc_lab.core.engine import Engine
from kiteohlc_lab.core.events import (
    Bus, CandlesClosed, Drained, FormingChanged, StreamDone, StreamError, TicksAccepted,
    TicksReceived, TicksRejected,
)
from kiteohlc_lab.core.stream import Stream
from kiteohlc_lab.core.ticks import TickBatch

NS = 1_000_000_000
MIN = 60 * NS
T0 = 1767585000 * NS  # 2026-01-05 09:20 IST, a Monday in session
A, B = 738561, 408065


class Tape:
    """Finite source: the given batches from its own thread, then on_done."""

    name = "tape"
    live = False

    def __init__(self, batches):
        self.batches = batches

    def start(self, sink):
        def run():
            for b in self.batches:
                sink.on_batch(b)
            sink.on_done()
        threading.Thread(target=run, daemon=True).start()

    def subscribe(self, tokens):
        pass

    def stop(self):
        pass

    def status(self):
        return {"state": "running"}


class Store:
    def __init__(self):
        self.writes = []
        self.closed_called = False

    def write(self, *args):
        self.writes.append(args)

    def close(self):
        self.closed_called = True


class Listener:
    def __init__(self):
        self.closed, self.errors = [], []

    def on_closed(self, stream, batches):
        self.closed += [c for b in batches for c in b]

    def on_gap(self, stream, token, s, e):
        pass

    def on_error(self, stream, message):
        self.errors.append(message)


def ticks(ts, tok, price, vol):
    return TickBatch(np.array(tok, np.int64), np.array(ts, np.int64), np.array(price, float),
                     np.array(vol, float), np.full(len(ts), np.nan))


def test_stream_emits_the_events_its_sinks_and_listener_subscribe_to():
    good1 = ticks([T0, T0 + NS], [A, B], [100.0, 200.0], [10, 20])
    bad = ticks([T0 + 2 * NS, T0 + 3 * NS], [A, A], [np.nan, 101.0], [11, 12])  # a NaN price
    good2 = ticks([T0 + MIN + NS, T0 + MIN + 2 * NS], [A, B], [102.0, 201.0], [13, 21])
    hist, live, rec, lis = Store(), Store(), Store(), Listener()
    s = Stream("ev", Tape([good1, bad, good2]), Engine(["1m"]), [A, B], listener=lis,
               history=hist, live_store=live, recorder=rec)
    seen: dict[type, list] = {}
    for ev in (TicksReceived, TicksAccepted, TicksRejected, CandlesClosed, FormingChanged, Drained,
               StreamDone):
        s.events.subscribe(ev, lambda e, ev=ev: seen.setdefault(ev, []).append(e))
    s.start()
    assert s.done.wait(10)
    s.stop()
    assert all(e.stream == "ev" for evs in seen.values() for e in evs)
    # the recorder got every batch as delivered, the bad tick included; the filter's count apart
    assert [len(e.batch) for e in seen[TicksReceived]] == [2, 2, 2]
    assert [len(b[0]) for b in rec.writes] == [2, 2, 2] and rec.closed_called
    assert sum(e.count for e in seen[TicksRejected]) == 1
    assert sum(len(e.batch) for e in seen[TicksAccepted]) == 5
    # the first minute closed (the second is still forming at the tape's end)
    closed = [c for e in seen[CandlesClosed] for b in e.batches for c in b]
    m0 = T0 - T0 % MIN
    assert {(c.token, c.start, c.close) for c in closed} == {(A, m0, 101.0), (B, m0, 200.0)}
    assert {(c.token, c.close) for c in lis.closed} == {(A, 101.0), (B, 200.0)}
    assert sum(len(w[0]) for w in hist.writes) == 2  # the history store got both, once
    assert set().union(*(e.tokens for e in seen[FormingChanged])) == {A, B}
    assert all(e.batches == () for e in seen[FormingChanged])  # an own stream's are read from its engine
    assert seen[Drained][-1].final and [e.state for e in seen[StreamDone]] == ["done"]
    assert live.writes, "the live store is written at the end of the tape at least"


def test_bus_subscribe_unsubscribe_and_unknown_events():
    bus, got = Bus(), []
    off = bus.subscribe(StreamError, got.append)
    assert bus.wants(StreamError) and not bus.wants(Drained)
    bus.emit(StreamError("s", "one"))
    off()
    bus.emit(StreamError("s", "two"))
    assert [e.message for e in got] == ["one"] and not bus.wants(StreamError)
    with pytest.raises(TypeError, match="not a stream event"):
        bus.subscribe(dict, print)
