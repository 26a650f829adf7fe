"""Warm start against the simulator: a first live stream records the "morning" into the tick store
and stops; a second one, started later in a fresh data_dir (no saved live state) with
``warm_start`` on, has the morning's 5s candles at once, and its candles equal the oracle
(tests/oracle.py, importing nothing from the package) fed with every tick the simulator sent to
either stream, in wire order: the seam between the stored morning and the live ticks has no gap, no
duplicate, and the volume runs on. The minute candles asked of Kite's historical API (the
simulator's) arrive for the morning too; the warm start's ticks are not recorded a second time."""

from __future__ import annotations

import numpy as np
import pandas as pd

from conftest import wait_for
from kiteohlc_lab.feeds.simulator import KiteSimulator

NS = 10**9
SYMS = {"NIFTY": 256265, "RELIANCE": 738561}
COLS = ["open", "high", "low", "close", "volume"]


def all_full(sim, tokens) -> bool:
    subs = sim.subscriptions()
    return bool(subs) and all(s.get(t) == "full" for s in subs for t in tokens)


def stream_for(k, sim, seconds: float) -> None:
    """Start a sim stream of SYMS at 5s 1m, let ``seconds`` of market reach it, stop it."""
    tokens = list(SYMS.values())
    sim.pause()
    n0 = len(sim.sent())  # sent to an earlier stream
    info = k.stream(",".join(SYMS), "5s", "1m", source="sim")
    wait_for(lambda: all_full(sim, tokens), 15, "the full-mode subscription")
    sim.resume()
    wait_for(lambda: len(sim.sent()) > n0, 10, "the first tick")
    t0 = int(sim.sent().ts[n0])
    wait_for(lambda: len(sim.sent()) and int(sim.sent().ts.max()) >= t0 + seconds * NS, 30,
             f"{seconds} s of market")
    sim._call_in_loop(lambda: None)
    sim.pause()
    n = len(sim.sent())
    wait_for(lambda: k.status()[0]["feed"]["ticks"] == n - n0, 10, "every tick sent to arrive")
    return info


def test_warm_start_has_the_morning_and_an_exact_seam(tmp_path, monkeypatch):
    import kiteohlc_lab as k
    from kiteohlc_lab import api
    from oracle import Oracle

    sim = KiteSimulator(tick_interval=0.25, heartbeat_interval=0.5, seed=5).start()
    store = tmp_path / "ticks"
    try:
        monkeypatch.setenv("KITEOHLC_TICKER_URL", sim.ticker_url)
        monkeypatch.setenv("KITEOHLC_API_URL", sim.api_url)
        monkeypatch.setenv("KITEOHLC_TICK_STORE", str(store))
        monkeypatch.setenv("KITEOHLC_TICK_FILE_SECONDS", "1")
        monkeypatch.setenv("KITEOHLC_RECORD_TICKS", "on")
        monkeypatch.setenv("KITEOHLC_WARM_START", "off")
        monkeypatch.setenv("KITEOHLC_DATA_DIR", str(tmp_path / "morning"))
        api.reset()
        stream_for(k, sim, 7)  # the "morning", recorded
        k.stop()
        morning = {tf: k.candles("RELIANCE", tf) for tf in ("5s", "1m")}
        n_morning = len(sim.sent())
        api.reset()

        monkeypatch.setenv("KITEOHLC_WARM_START", "on")
        monkeypatch.setenv("KITEOHLC_DATA_DIR", str(tmp_path / "later"))  # no live state to continue
        requests0 = sim.historical_requests
        info = stream_for(k, sim, 6)
        assert "warm start" in info.message
        wait_for(lambda: sim.historical_requests > requests0, 10, "the warm start's history request")
        k.stop()
        later = {(sym, tf): k.candles(sym, tf) for sym in SYMS for tf in ("5s", "1m")}
        sent = sim.sent()
        everything = sim.sent_all()
    finally:
        api.reset()
        sim.stop()

    assert set(everything["mode"]) == {"full"} and len(sent) > n_morning
    # the morning's candles are there at once, the first one as the first stream made it
    first = morning["5s"].index[0]
    assert later[("RELIANCE", "5s")].index[0] == first
    pd.testing.assert_series_equal(later[("RELIANCE", "5s")].loc[first, COLS].astype(float),
                                   morning["5s"].loc[first, COLS].astype(float))
    assert morning["1m"].index[0] in later[("RELIANCE", "1m")].index
    # every 5s candle equals the oracle over every tick sent to either stream, seam included
    o = Oracle(["5s"], live=True)
    market_ts = everything[everything["kind"] == ""].groupby("frame")["ts"].max()
    now = everything["frame"].map(market_ts).to_numpy()
    for row, now_ns in zip(everything.itertuples(index=False), now):
        o.tick(int(row.token), int(row.ts), float(row.price), float(row.volume), float(row.oi),
               now_ns=int(now_ns))
    for sym, tok in SYMS.items():
        want = o.frame(tok, "5s", closed_only=False)[COLS]
        have = later[(sym, "5s")][COLS].astype(float)
        assert len(want) >= 3
        pd.testing.assert_frame_equal(have, want, check_freq=False, obj=f"{sym} 5s after a warm start")
    # the store holds every tick sent once: the warm start's were not recorded again
    got = k.ticks(list(SYMS))
    assert len(got) == len(sent)
    np.testing.assert_array_equal(got.index.asi8, sent.ts)
    np.testing.assert_array_equal(got["last_price"].to_numpy(), sent.price)
