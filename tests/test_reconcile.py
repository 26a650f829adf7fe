"""Reconciliation against Kite's historical candles, and gap repair end to end on the simulator.

The simulator's market and the stream's clocks run on a shifted clock (minutes in the past), so
candles of several minutes become complete and final within seconds of real time.
"""

from __future__ import annotations

import threading
import time as _time

import numpy as np
import pandas as pd
import pytest

from kiteohlc_lab.core import stream as stream_mod
from kiteohlc_lab.core.candles import CandleBatch
from kiteohlc_lab.core.engine import Engine
from kiteohlc_lab.core.stream import Stream
from kiteohlc_lab.core.timeframes import IST, NS
from kiteohlc_lab.feeds import simulator as sim_mod
from kiteohlc_lab.feeds import kite as kite_mod
from kiteohlc_lab.reconcile import Reconciler, compare, reconcile, reconcile_plot

MIN = 60 * NS
RELIANCE = 738561


class ShiftedClock:
    """``time`` module stand-in whose time()/time_ns() run ``offset_ns`` away from the real clock."""

    def __init__(self) -> None:
        self.offset_ns = 0

    def time_ns(self) -> int:
        return _time.time_ns() + self.offset_ns

    def time(self) -> float:
        return self.time_ns() / NS

    def jump_to(self, target_ns: int) -> None:
        self.offset_ns += target_ns - self.time_ns()

    def __getattr__(self, name: str):
        return getattr(_time, name)


@pytest.fixture
def clock(monkeypatch):
    c = ShiftedClock()
    monkeypatch.setattr(sim_mod, "time", c)
    monkeypatch.setattr(stream_mod, "time", c)
    monkeypatch.setattr(kite_mod, "time", c)  # the machine's clock, as the Kite feed reads it
    return c


def wait_for(pred, timeout: float = 10.0, step: float = 0.05) -> bool:
    end = _time.monotonic() + timeout
    while _time.monotonic() < end:
        if pred():
            return True
        _time.sleep(step)
    return bool(pred())


def frame(starts, o, h, lo, c, v) -> pd.DataFrame:
    n = len(starts)
    b = CandleBatch("1m", np.zeros(n, np.int64), np.asarray(starts, np.int64), np.asarray(o, float),
                    np.asarray(h, float), np.asarray(lo, float), np.asarray(c, float),
                    np.asarray(v, float), np.full(n, np.nan), np.zeros(n, np.int64))
    return b.to_frame()


def market_minutes(ticks, token: int) -> pd.DataFrame:
    """Minute candles of what the market produced, built the way Kite builds them (reference)."""
    sel = ticks.token == token
    ts, price, vol = ticks.ts[sel], ticks.price[sel], ticks.volume[sel]
    minute = ts // MIN * MIN
    keys, first = np.unique(minute, return_index=True)
    last = np.r_[first[1:], len(minute)] - 1
    prev = np.r_[0.0, vol[last][:-1]]
    return frame(keys, price[first], np.maximum.reduceat(price, first),
                 np.minimum.reduceat(price, first), price[last], vol[last] - prev)


def resample(df: pd.DataFrame, minutes: int) -> pd.DataFrame:
    g = df.groupby(df.index.floor(f"{minutes}min"))
    out = g.agg(open=("open", "first"), high=("high", "max"), low=("low", "min"),
                close=("close", "last"), volume=("volume", "sum"))
    out.index.name = "date"
    return out


# ------------------------------------------------------------------------------------ compare
def test_compare_prices_to_half_a_tick_and_volume_with_tolerance() -> None:
    t0 = 1_700_000_040 * NS
    live = frame([t0, t0 + MIN, t0 + 2 * MIN, t0 + 3 * MIN],
                 [100.0, 100.0, 100.0, 100.0], [101.0, 101.0, 101.0, 101.0],
                 [99.0, 99.0, 99.0, 99.0], [100.5, 100.5, 100.5, 100.5], [1000, 1015, 1100, 0])
    kite = frame([t0, t0 + MIN, t0 + 2 * MIN, t0 + 4 * MIN],
                 [100.0, 100.0, 100.0, 1.0], [101.0, 101.05, 101.0, 1.0],
                 [99.0, 99.0, 99.0, 1.0], [100.5, 100.5, 100.5, 1.0], [1000, 1000, 1000, 0])
    df = compare(live, kite, tick_size=0.05, volume_tolerance=0.02)
    assert list(df.columns[:10]) == ["open_live", "open_kite", "high_live", "high_kite", "low_live",
                                     "low_kite", "close_live", "close_kite", "volume_live",
                                     "volume_kite"]
    assert len(df) == 3 and str(df.index.tz) == IST  # only the candles both sides have
    assert df["match"].tolist() == [True, False, False]
    assert df["mismatched"].tolist() == ["", "high", "volume"]  # 1.5 % volume is within 2 %
    # a tick of 0.01 sees 0.05 apart (and equal prices still match); a tick of 0.2 forgives 0.05
    fine = compare(live, kite, tick_size=0.01)
    assert fine["match"].tolist() == [True, False, False]
    assert fine["mismatched"].tolist() == ["", "high", "volume"]
    assert compare(live, kite, tick_size=0.2)["mismatched"].tolist() == ["", "", "volume"]
    # a relative tolerance of 10 % forgives 1100 vs 1000
    assert compare(live, kite, volume_tolerance=0.1)["mismatched"].tolist()[2] == ""


class FakeClient:
    def __init__(self, kite: pd.DataFrame) -> None:
        self.kite, self.calls = kite, []

    def fetch(self, token, tf, a, b):
        self.calls.append((token, tf, a, b))
        d = self.kite[(self.kite.index.asi8 >= a) & (self.kite.index.asi8 < b)]
        n = len(d)
        return CandleBatch(tf, np.full(n, token, np.int64), d.index.asi8.copy(),
                           *(d[c].to_numpy(float) for c in ("open", "high", "low", "close", "volume")),
                           np.full(n, np.nan), np.zeros(n, np.int64))


class FakeManager:
    """What reconcile needs from a Manager: token_of, candles, series, stores, streams, cfg."""

    def __init__(self, live: pd.DataFrame) -> None:
        from kiteohlc_lab.config import KiteOHLC

        self.live, self.cfg, self.streams, self._tables = live, KiteOHLC(), {}, {}
        self.written: list[CandleBatch] = []
        self.upserted: list[CandleBatch] = []

    def token_of(self, symbol):
        return RELIANCE

    def candles(self, symbol, tf, closed_only=False, start=None, end=None):
        d = self.live
        if start is not None:
            d = d[d.index >= pd.Timestamp(start)]
        return d

    def stores(self):
        fm = self

        class H:
            def write(self, b):
                fm.written.append(b)

        return None, H(), ""

    def series(self, token, tf):
        fm = self

        class S:
            def upsert(self, b):
                fm.upserted.append(b)

        return S()


def test_reconcile_only_complete_minutes_and_background_replace() -> None:
    t0 = 1_700_000_040 * NS
    starts = [t0 + i * MIN for i in range(5)]
    live = frame(starts, [10.0] * 5, [11.0] * 5, [9.0] * 5, [10.5] * 5, [100] * 5)
    kite = frame(starts, [10.0] * 5, [11.0, 11.5, 11.0, 11.0, 11.0], [9.0] * 5, [10.5] * 5, [100] * 5)
    m, client = FakeManager(live), FakeClient(kite)
    now = t0 + 4 * MIN + 5 * NS  # minute 3 ended 5 s ago: not final on Kite's side yet
    df = reconcile("RELIANCE", "1m", manager=m, client=client, now=lambda: now)
    assert len(df) == 3 and df["mismatched"].tolist() == ["", "high", ""]
    assert df.attrs["token"] == RELIANCE and df.attrs["tf"] == "1m"
    with pytest.raises(ValueError, match="1 minute"):
        reconcile("RELIANCE", "10s", manager=m, client=client)

    rec = Reconciler(m, ["RELIANCE"], client=client, redis=False, clock=lambda: now)
    assert len(rec.check()) == 3 and rec.stats["mismatches"] == 1 and not m.written
    assert rec.mismatches[0]["start"] == starts[1] and rec.mismatches[0]["fields"] == "high"
    assert rec.source_of(RELIANCE, starts[1]) == "ticks"  # never replaced unless asked
    assert len(rec.check(now + 2 * MIN)) == 2  # the next cycle checks only the new final minutes
    rec2 = Reconciler(m, ["RELIANCE"], client=client, redis=False, replace=True, clock=lambda: now)
    rec2.check()
    assert [b.start.tolist() for b in m.written] == [[starts[1]]] and m.written[0].high[0] == 11.5
    assert m.upserted and rec2.source_of(RELIANCE, starts[1]) == "kite"
    fig = reconcile_plot(df)
    assert len(fig.axes) == 2 and fig.axes[0].get_title().startswith("RELIANCE 1m")
    assert len(reconcile_plot(df.iloc[:0]).axes) == 2


def test_kiteohlc_lab_reconcile_is_callable_after_import() -> None:
    import kiteohlc_lab
    import kiteohlc_lab.reconcile as mod  # binds the submodule on the package

    assert callable(kiteohlc_lab.reconcile) and mod.reconcile_plot is reconcile_plot


# ------------------------------------------------------------------------------------ simulator
@pytest.mark.integration
def test_reconcile_manager_stream_against_simulator(clock) -> None:
    from kiteohlc_lab.runtime import Manager

    M = (_time.time_ns() // MIN - 30) * MIN
    clock.jump_to(M + 300_000_000)
    m = Manager()
    m._sim = sim_mod.KiteSimulator(tick_interval=0.05, heartbeat_interval=0.2).start()
    try:
        m.start("RELIANCE", ["1m"], source="sim")
        sim = m._sim
        sim.set_history_override(RELIANCE, M + MIN, high=99999.0)
        assert wait_for(lambda: m.streams["sim"].stats.ticks >= 10)
        for k in (1, 2):
            clock.jump_to(M + k * MIN + 300_000_000)
            n = m.streams["sim"].stats.ticks
            assert wait_for(lambda: m.streams["sim"].stats.ticks >= n + 10)
        sim.pause()  # the clock jumps once the stream has every tick sent (one client, no drops)
        assert wait_for(lambda: m.streams["sim"].stats.ticks >= len(sim.sent()))
        clock.jump_to(M + 4 * MIN)
        assert wait_for(lambda: len(m.candles("RELIANCE", "1m", closed_only=True)) >= 3)
        df = reconcile("RELIANCE", "1m", manager=m, now=clock.time_ns)
        assert [int(i.value) for i in df.index] == [M, M + MIN, M + 2 * MIN]
        assert df.loc[pd.Timestamp(M + MIN, tz="UTC"), "mismatched"] == "high"
        assert bool(df["match"].iloc[2]), df.iloc[2]
        # the first minute's volume starts from the stream's first tick, Kite's from the day's
        assert "volume" in df["mismatched"].iloc[0] or df["match"].iloc[0]

        rec = Reconciler(m, ["RELIANCE"], replace=True, clock=clock.time_ns)
        rec.check()
        assert rec.stats["replaced"] >= 1 and rec.source_of(RELIANCE, M + MIN) == "kite"
        got = m.candles("RELIANCE", "1m", closed_only=True)
        assert got.loc[pd.Timestamp(M + MIN, tz="UTC"), "high"] == 99999.0
        r = rec.redis
        assert r.hget(f"kohlc:{{{RELIANCE}}}:source:1m", str(M + MIN)) in (b"kite", "kite")
        assert r.hexists(f"kohlc:{{{RELIANCE}}}:recon:1m", str(M + MIN))
    finally:
        m.shutdown()


class Collect:
    """Stream listener keeping the latest version of each closed candle, and the gaps."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.closed: dict[tuple[str, int], tuple] = {}
        self.gaps: list[tuple[int, int, int]] = []
        self.errors: list[str] = []

    def on_closed(self, stream, batches) -> None:
        with self.lock:
            for b in batches:
                for c in b:
                    self.closed[(b.tf, c.start)] = (c.open, c.high, c.low, c.close, c.volume)

    def on_forming(self, stream, batches) -> None:
        pass

    def on_gap(self, stream, token, s, e) -> None:
        self.gaps.append((token, s, e))

    def on_error(self, stream, message) -> None:
        self.errors.append(message)

    def get(self, tf: str, start: int):
        with self.lock:
            return self.closed.get((tf, start))


@pytest.mark.integration
def test_gap_repair_rebuilds_1m_and_5m_candles_from_kite_minutes(clock) -> None:
    from kiteconnect import KiteConnect

    from kiteohlc_lab.feeds.historical import HistoricalClient, RateLimiter
    from kiteohlc_lab.feeds.kite import KiteSource

    FIVE = 5 * MIN
    B = (_time.time_ns() // FIVE - 6) * FIVE  # a 5-minute boundary half an hour ago
    clock.jump_to(B + 300_000_000)
    sim = sim_mod.KiteSimulator(tick_interval=0.05, heartbeat_interval=0.2).start()
    hc = HistoricalClient(KiteConnect(sim.api_key, access_token=sim.access_token, root=sim.api_url),
                          now=clock.time_ns, limiter=RateLimiter(50, 1.0))
    src = KiteSource(sim.api_key, sim.access_token, [RELIANCE], ticker_url=sim.ticker_url,
                     api_url=sim.api_url, history=hc, repair_grace=0.5, clock=clock.time_ns)
    rec = Collect()
    st = Stream("gap", src, Engine(["10s", "1m", "5m"]), [RELIANCE], listener=rec, repair_settle=0.5)
    try:
        st.start()
        assert wait_for(lambda: st.stats.ticks >= 10)
        clock.jump_to(B + FIVE - 1_500_000_000)  # the last seconds of the first 5-minute candle
        n = st.stats.ticks
        assert wait_for(lambda: st.stats.ticks >= n + 15)
        sim.drop_connections()  # ~2 s outage across the minute and 5-minute boundary
        assert wait_for(lambda: src.status()["reconnects"] >= 1, 10)
        n = st.stats.ticks
        assert wait_for(lambda: st.stats.ticks >= n + 15)
        clock.jump_to(B + FIVE + MIN + 300_000_000)  # ticks of the minute after the gap's minutes
        n = st.stats.ticks
        assert wait_for(lambda: st.stats.ticks >= n + 20)
        sim.pause()
        _time.sleep(0.4)
        clock.jump_to(B + 2 * FIVE + 2 * MIN)  # everything is over: repairs become due
        ref1 = market_minutes(sim.market(), RELIANCE)
        ref5 = resample(ref1, 5)
        assert wait_for(lambda: rec.gaps, 10), src.status()
        _, t0, t1 = rec.gaps[0]
        assert t0 < B + FIVE <= t1  # the outage did cross the 5-minute boundary

        def row(df, start):
            r = df.loc[pd.Timestamp(start, tz="UTC")]
            return tuple(float(r[c]) for c in ("open", "high", "low", "close", "volume"))

        m0, m1 = t0 // MIN * MIN, t1 // MIN * MIN
        want = {("1m", s): row(ref1, s) for s in range(m0, m1 + MIN, MIN)}
        want[("1m", m1 + MIN)] = row(ref1, m1 + MIN)  # after the gap: ticks, baseline followed
        want[("5m", B)] = row(ref5, B)
        want[("5m", B + FIVE)] = row(ref5, B + FIVE)
        assert wait_for(lambda: all(rec.get(*k) == v for k, v in want.items()), 15), {
            k: (rec.get(*k), v) for k, v in want.items()}
        # sub-minute candles are marked, never filled: each 10 s candle holds ticks that were sent
        sent10 = set((sim.sent().ts // (10 * NS) * 10 * NS).tolist())
        got10 = {s for (tf, s) in rec.closed if tf == "10s"}
        assert got10 and got10 <= sent10
        assert not rec.errors, rec.errors
    finally:
        st.stop()
        sim.stop()


def test_tick_size_comes_from_the_sessions_instrument_tables(isolated_env) -> None:
    """The chart and reconcile read an instrument's tick size through the session (MCX crude: 1.0)."""
    from kiteohlc_lab.config import KiteOHLC
    from kiteohlc_lab.reconcile import tick_size_of
    from kiteohlc_lab.runtime import Manager

    m = Manager(KiteOHLC(data_dir=str(isolated_env)))
    try:
        m.start(["MCX:CRUDEOIL25DECFUT"], ["1m"], source="sim")
        assert tick_size_of(m, "MCX:CRUDEOIL25DECFUT") == 1.0
        assert tick_size_of(m, "NSE:RELIANCE") == 0.05
        assert tick_size_of(m, "NOSUCH") == 0.05  # unknown: the default
    finally:
        m.shutdown()
