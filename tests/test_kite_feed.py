"""KiteSource end to end: the real KiteTicker/KiteConnect against the simulator on loopback."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from kiteohlc_lab.core.ticks import TickBatch
from kiteohlc_lab.feeds.kite import KiteSource
from kiteohlc_lab.feeds.reactor import call_in_reactor_wait, ensure_reactor
from kiteohlc_lab.feeds.simulator import KiteSimulator

pytestmark = pytest.mark.integration

SECRET = "tok-SECRET-5f3a9c"
RELIANCE, INFY, NIFTY, NIFTYFUT = 738561, 408065, 256265, 13238786
MINUTE = 60 * 10**9


class Recorder:
    """A Sink that records everything and lets a test wait for a condition."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.batches: list[TickBatch] = []
        self.errors: list[tuple[str, bool]] = []
        self.gaps: list[tuple[int, int, int]] = []
        self.history: list[tuple[int, str, object]] = []

    def _add(self, lst: list, item: object) -> None:
        with self.cv:
            lst.append(item)
            self.cv.notify_all()

    def on_batch(self, batch: TickBatch) -> None:
        self._add(self.batches, batch)

    def on_done(self) -> None:
        pass

    def on_error(self, message: str, fatal: bool) -> None:
        self._add(self.errors, (message, fatal))

    def on_gap(self, token: int, start_ns: int, end_ns: int) -> None:
        self._add(self.gaps, (token, start_ns, end_ns))

    def on_resume(self, tokens: list[int]) -> None:
        self.resumed = getattr(self, "resumed", []) + list(tokens)

    def on_history(self, token: int, tf: str, candles: object) -> None:
        self._add(self.history, (token, tf, candles))

    def ticks(self) -> TickBatch:
        with self.cv:
            return TickBatch.concat(list(self.batches))

    def wait(self, pred, timeout: float = 10.0) -> bool:
        """Wait for ``pred()``: checked at each sink event and every 50 ms (status counters such
        as heartbeats change without one)."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cv.wait(min(left, 0.05))
            return True

    def n_ticks(self) -> int:
        return sum(len(b) for b in self.batches)


@pytest.fixture
def sim():
    with KiteSimulator(access_token=SECRET, tick_interval=0.05, heartbeat_interval=0.2) as s:
        yield s


def make(sim: KiteSimulator, tokens=(RELIANCE, NIFTY, NIFTYFUT), **kw) -> KiteSource:
    kw.setdefault("repair_gaps", False)
    return KiteSource(sim.api_key, SECRET, list(tokens), ticker_url=sim.ticker_url,
                      api_url=sim.api_url, **kw)


def assert_prefix_of_sent(rec: Recorder, sim: KiteSimulator, skip_batches: int = 3) -> int:
    """Received ticks == what the simulator sent, in order (the first frames may predate the
    mode message, i.e. quote packets without a timestamp, so they are only counted)."""
    got = rec.ticks()
    sent = sim.sent()
    k = sum(len(b) for b in rec.batches[:skip_batches])
    n = len(got)
    assert n <= len(sent)
    np.testing.assert_array_equal(got.token, sent.token[:n])
    np.testing.assert_array_equal(got.price[k:], sent.price[k:n])
    np.testing.assert_array_equal(got.ts[k:], sent.ts[k:n])
    np.testing.assert_array_equal(got.volume[k:], sent.volume[k:n])
    np.testing.assert_array_equal(np.nan_to_num(got.oi[k:]), np.nan_to_num(sent.oi[k:n]))
    return n


def test_live_ticks_equal_sent(sim: KiteSimulator) -> None:
    rec = Recorder()
    src = make(sim)
    assert src.name == "sim" and src.live
    src.start(rec)
    try:
        assert rec.wait(lambda: rec.n_ticks() >= 90)
        st = src.status()
    finally:
        src.stop()
    assert assert_prefix_of_sent(rec, sim) >= 90
    assert set(rec.ticks().token.tolist()) == {RELIANCE, NIFTY, NIFTYFUT}
    assert st["state"] == "connected" and st["connections"] == 1 and st["ticks"] >= 90
    assert st["ticks_per_s"] > 0 and st["last_tick_age"] < 2.0
    assert src.status()["state"] == "stopped"


def test_stop_start_three_times_one_process(sim: KiteSimulator) -> None:
    src = make(sim, [RELIANCE])
    for _ in range(3):
        rec = Recorder()
        src.start(rec)
        assert rec.wait(lambda: rec.n_ticks() >= 5), src.status()
        src.stop()
        assert src.status()["state"] == "stopped"
    other = make(sim, [INFY])  # a fresh source in the same process works too
    rec = Recorder()
    other.start(rec)
    assert rec.wait(lambda: rec.n_ticks() >= 5)
    other.stop()
    assert ensure_reactor().running
    assert sim.total_connections == 4


def test_malformed_frame_counted_connection_survives(sim: KiteSimulator) -> None:
    rec = Recorder()
    src = make(sim)
    src.start(rec)
    try:
        assert rec.wait(lambda: rec.n_ticks() >= 10)
        sim.send_malformed()
        assert rec.wait(lambda: src.status()["malformed"] >= 1, 5)
        n = rec.n_ticks()
        assert rec.wait(lambda: rec.n_ticks() >= n + 30)
        # heartbeats (sent only while no ticks are) still arrive and are counted on the same socket
        sim.pause()
        assert rec.wait(lambda: src.status()["heartbeats"] >= 2, 5), src.status()
        sim.resume()
        st = src.status()
    finally:
        src.stop()
    assert st["malformed"] == 3 and st["reconnects"] == 0 and sim.total_connections == 1
    assert st["heartbeats"] >= 2 and st["state"] == "connected" and not rec.errors


def test_drop_reconnects_resubscribes_and_repairs_gap(sim: KiteSimulator) -> None:
    rec = Recorder()
    now_min = time.time_ns() // MINUTE * MINUTE
    for m in (now_min, now_min + MINUTE):  # the outage's minutes, whichever they turn out to be
        sim.set_history_override(RELIANCE, m, open=1.0, high=2.0, low=0.5, close=1.5, volume=42)
    # The clock runs 2 minutes ahead so the outage's minutes count as final at once.
    src = make(sim, [RELIANCE, INFY], repair_gaps=True, repair_grace=0.0,
               clock=lambda: time.time_ns() + 2 * MINUTE)
    src.start(rec)
    try:
        assert rec.wait(lambda: rec.n_ticks() >= 10)
        t_drop = time.monotonic()
        sim.drop_connections()
        assert rec.wait(lambda: src.status()["reconnects"] >= 1, 10), src.status()
        reconnect_s = time.monotonic() - t_drop
        n = rec.n_ticks()
        assert rec.wait(lambda: {RELIANCE, INFY} <= set(
            TickBatch.concat(rec.batches[-20:]).token.tolist()) and rec.n_ticks() > n + 20)
        assert rec.wait(lambda: {g[0] for g in rec.gaps} == {RELIANCE, INFY}, 10), rec.gaps
        assert rec.wait(lambda: any(h[0] == RELIANCE for h in rec.history), 5)
        st = src.status()
    finally:
        src.stop()
    assert reconnect_s < 5.0
    for token, start, end in rec.gaps:
        assert start < end
    token, tf, candles = next(h for h in rec.history if h[0] == RELIANCE)
    assert tf == "1m" and candles.closed
    assert 1.5 in candles.close.tolist() and 42.0 in candles.volume.tolist()
    assert st["gaps"] == 2 and st["repaired"] >= 1 and st["connections"] == 1
    assert sim.connections == 0 or sim.total_connections == 2


def test_silent_socket_is_noticed_by_the_watchdog(sim: KiteSimulator) -> None:
    rec = Recorder()
    src = make(sim, [RELIANCE], stall_timeout=2.0)
    src.start(rec)
    try:
        assert rec.wait(lambda: rec.n_ticks() >= 10)
        t0 = time.monotonic()
        sim.go_silent(5)
        assert rec.wait(lambda: src.status()["reconnects"] >= 1, 10), src.status()
        reconnect_s = time.monotonic() - t0
        assert src.status()["stalls"] == 1
        n = rec.n_ticks()
        assert rec.wait(lambda: rec.n_ticks() >= n + 20, 10)
        st = src.status()
    finally:
        src.stop()
    assert 2.0 <= reconnect_s < 2.0 + 4.0
    assert st["stalls"] == 1 and st["reconnects"] == 1 and st["state"] == "connected"
    assert sim.total_connections == 2


def test_bad_token_is_one_fatal_error(sim: KiteSimulator) -> None:
    rec = Recorder()
    src = KiteSource(sim.api_key, "expired-token-77", [RELIANCE], ticker_url=sim.ticker_url,
                     api_url=sim.api_url)
    src.start(rec)
    try:
        assert rec.wait(lambda: rec.errors, 10)
        # No retry loop: no second error within a reconnect delay.
        assert not rec.wait(lambda: len(rec.errors) > 1, src.reconnect_initial_delay + 1.0)
        st = src.status()
    finally:
        src.stop()
    (msg, fatal), = rec.errors
    assert fatal and "HTTP 403" in msg and "06:00 IST" in msg and "KITE_ACCESS_TOKEN" in msg
    assert "expired-token-77" not in msg
    assert st["state"] == "failed" and st["error"] == msg and sim.total_connections == 0


def test_token_never_in_logs_status_repr(sim: KiteSimulator, caplog) -> None:
    from twisted.logger import formatEvent, globalLogPublisher

    events: list[str] = []

    def observer(event: dict) -> None:
        events.append(str(formatEvent(event)) + repr(event))

    globalLogPublisher.addObserver(observer)
    rec = Recorder()
    try:
        with caplog.at_level(logging.DEBUG):
            src = make(sim, [RELIANCE], repair_gaps=True, repair_grace=0.0,
                       clock=lambda: time.time_ns() + 2 * MINUTE)
            src.start(rec)
            assert rec.wait(lambda: rec.n_ticks() >= 5)
            sim.drop_connections()
            assert rec.wait(lambda: rec.gaps, 10)
            text = repr(src) + json.dumps(src.status()) + str(rec.errors)
            src.stop()
            bad = make(sim, [RELIANCE])
            bad._KiteSource__secret = SECRET + "x"  # a rejected token that contains the real one
            brec = Recorder()
            bad.start(brec)
            assert brec.wait(lambda: brec.errors, 10)
            text += repr(bad) + json.dumps(bad.status()) + str(brec.errors)
            bad.stop()
    finally:
        globalLogPublisher.removeObserver(observer)
    # The simulator's own server library (websockets.server) logs request lines at DEBUG; that is
    # the server side, not this client, so only the client side's records are checked.
    client = [r for r in caplog.records if not r.name.startswith("websockets.server")]
    assert any(r.name.startswith("kiteconnect") for r in client)
    assert any(r.name.startswith("kiteohlc_lab") for r in client)
    assert not [r.getMessage() for r in client if SECRET in r.getMessage()]
    assert SECRET not in text
    assert not [e for e in events if SECRET in e]


def test_spread_over_connections_and_subscribe_live(sim: KiteSimulator) -> None:
    tokens = [i.instrument_token for i in sim.instruments][:7]
    with pytest.raises(ValueError, match="limit of 6"):
        make(sim, tokens, max_per_connection=2, max_connections=3)
    rec = Recorder()
    src = make(sim, tokens[:5], max_per_connection=2, max_connections=3)
    src.start(rec)
    try:
        assert rec.wait(lambda: set(rec.ticks().token.tolist()) == set(tokens[:5]))
        assert sim.max_seen_connections == 3 and src.status()["connections"] == 3
        src.subscribe([tokens[5]])  # room left on the third connection: no new socket
        assert rec.wait(lambda: tokens[5] in set(rec.ticks().token.tolist()))
        with pytest.raises(ValueError, match="limit"):
            src.subscribe([tokens[6]])
        st = src.status()
    finally:
        src.stop()
    assert sim.total_connections == 3 and st["reconnects"] == 0 and st["instruments"] == 6


def test_reactor_helpers() -> None:
    assert call_in_reactor_wait(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ZeroDivisionError):
        call_in_reactor_wait(lambda: 1 / 0)


_TZ_SCRIPT = textwrap.dedent(
    """
    import json, threading, time
    import numpy as np
    from kiteconnect import KiteConnect
    from kiteohlc_lab.core.ticks import TickBatch
    from kiteohlc_lab.feeds.historical import HistoricalClient
    from kiteohlc_lab.feeds.kite import KiteSource
    from kiteohlc_lab.feeds.simulator import KiteSimulator

    out = {}
    with KiteSimulator(tick_interval=0.05, heartbeat_interval=0.2) as sim:
        got, done = [], threading.Event()
        class Sink:
            def on_batch(self, b):
                got.append(b)
                if sum(map(len, got)) >= 40: done.set()
            def on_error(self, m, f): pass
            def on_gap(self, *a): pass
            def on_resume(self, *a): pass
            def on_history(self, *a): pass
            def on_done(self): pass
        src = KiteSource(sim.api_key, sim.access_token, [738561], ticker_url=sim.ticker_url,
                         repair_gaps=False)
        src.start(Sink()); assert done.wait(10); src.stop()
        rec, sent = TickBatch.concat(got), sim.sent()
        n = len(rec)
        out["live_equal"] = bool(np.array_equal(rec.ts[10:], sent.ts[10:n]))
        out["live_age_s"] = float(abs(time.time() - rec.ts[-1] / 1e9))
        hc = HistoricalClient(KiteConnect(sim.api_key, sim.access_token, root=sim.api_url))
        # Monday 2025-01-06 09:15-09:20 IST == 03:45-03:50 UTC
        start = 1736135100 * 10**9
        c = hc.fetch(738561, "1m", start, start + 5 * 60 * 10**9)
        out["starts"] = c.start.tolist()
        out["close"] = c.close.tolist()
        out["frame_first"] = str(c.to_frame().index[0])
    print(json.dumps(out))
    """
)


def test_timestamps_identical_under_utc_and_ist() -> None:
    results = {}
    for tz in ("UTC", "Asia/Kolkata"):
        env = {**os.environ, "TZ": tz}
        proc = subprocess.run([sys.executable, "-c", _TZ_SCRIPT], env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[tz] = json.loads(proc.stdout.strip().splitlines()[-1])
    utc, ist = results["UTC"], results["Asia/Kolkata"]
    for r in (utc, ist):
        assert r["live_equal"] and r["live_age_s"] < 5
    start = 1736135100 * 10**9
    assert utc["starts"] == ist["starts"] == [start + i * MINUTE for i in range(5)]
    assert utc["close"] == ist["close"]
    assert utc["frame_first"] == "2025-01-06 09:15:00+05:30"


def test_backfill_through_the_manager_reports_progress_and_fills_history(tmp_path):
    """%ohlc_stream ... --backfill 1d: earlier candles from the historical API, with progress."""
    import kiteohlc_lab
    from kiteohlc_lab import api
    from kiteohlc_lab.errors import ConfigError

    seen: list[tuple[float, str]] = []
    done = threading.Event()

    def progress(fraction: float, text: str) -> None:
        seen.append((fraction, text))
        if fraction >= 1.0:
            done.set()

    with pytest.raises(ConfigError, match="backfill span"):
        api.manager().start("NIFTY", ["5m"], source="sim", backfill="5x")
    api.manager().start("NIFTY", ["5m"], source="sim", backfill="1d", progress=progress)
    assert done.wait(60), seen[-3:]
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(kiteohlc_lab.candles("NIFTY", "5m", closed_only=True)) < 10:
        time.sleep(0.1)
    hist = kiteohlc_lab.candles("NIFTY", "5m", closed_only=True)
    assert len(hist) >= 10  # a day of 5-minute candles from Kite, before the first live one
    assert (hist.index.minute % 5 == 0).all()


def test_login_exchanges_a_request_token_and_never_shows_the_secret(caplog):
    import kiteohlc_lab
    from kiteohlc_lab import api
    from kiteohlc_lab.errors import CredentialsError
    from kiteohlc_lab.feeds.simulator import KiteSimulator

    with KiteSimulator(api_key="k1", access_token="tok-SECRET-123", api_secret="sec-SECRET-456") as sim:
        m = api.manager()
        m.cfg.api_url = sim.api_url
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(CredentialsError) as bad:
                kiteohlc_lab.login("req-1", api_key="k1", api_secret="wrong-secret")
            msg = kiteohlc_lab.login("req-1", api_key="k1", api_secret="sec-SECRET-456")
        assert "logged in" in msg and "tok-SECRET" not in msg
        assert m.cfg.access_token == "tok-SECRET-123"
        assert "SECRET" not in str(bad.value) and "SECRET" not in repr(m.cfg)
        assert "SECRET" not in caplog.text


def test_stopping_one_symbol_unsubscribes_it_and_keeps_the_rest(tmp_path):
    import kiteohlc_lab
    from kiteohlc_lab import api

    m = api.manager()
    m.start("NIFTY,RELIANCE", ["10s"], source="sim")
    [stream] = m.streams.values()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and stream.stats.ticks < 4:
        time.sleep(0.05)
    stopped = kiteohlc_lab.stop("RELIANCE")
    assert stopped and "RELIANCE" in stopped[0]
    assert stream.alive and stream.tokens == [256265]
    assert stream.source.status()["instruments"] == 1
    sim = m._sim
    deadline = time.monotonic() + 10  # the server has the unsubscribe once no client holds RELIANCE
    while time.monotonic() < deadline and any(738561 in c.modes for c in list(sim._clients)):
        time.sleep(0.05)
    assert not any(738561 in c.modes for c in list(sim._clients))
    before = int((sim.sent().token == 738561).sum())
    n0 = len(sim.sent())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(sim.sent()) < n0 + 3:
        time.sleep(0.05)
    assert int((sim.sent().token == 738561).sum()) == before  # the simulator sends RELIANCE no more
    assert len(sim.sent()) >= n0 + 3  # NIFTY goes on
