"""The mess real Kite feeds send, live: the simulator injects it on the wire, the package's candles equal
the oracle's over exactly what was sent, and the stream counts it and goes on (README "Candle
conventions" rules 1, 4, 6, 7; issue #10 "How it is checked").
"""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pandas as pd
import pytest
from websockets.asyncio.client import connect as ws_connect

from kiteohlc_lab.core.ticks import TickBatch
from kiteohlc_lab.core.timeframes import NS
from kiteohlc_lab.feeds.frames import decode_frame
from kiteohlc_lab.feeds.simulator import KiteSimulator
from conftest import wait_for  # noqa: E402

pytestmark = pytest.mark.integration

RELIANCE, INFY, NIFTY, NIFTYFUT = 738561, 408065, 256265, 13238786
SYMS = {"RELIANCE": RELIANCE, "INFY": INFY, "NIFTY25DECFUT": NIFTYFUT}
TEN_YEARS_S = 3653 * 86400
COLS = ["open", "high", "low", "close", "volume"]


def all_full(sim: KiteSimulator, tokens) -> bool:
    return any(all(subs.get(t) == "full" for t in tokens) for subs in sim.subscriptions())


# ---------------------------------------------------------------- the simulator's inject() on the wire
async def _read_wire(sim: KiteSimulator, tokens: list[int], stop: threading.Event,
                     out: list[TickBatch], ready: threading.Event) -> None:
    url = f"{sim.ticker_url}?api_key={sim.api_key}&access_token={sim.access_token}"
    async with ws_connect(url, compression=None) as ws:
        await ws.send(json.dumps({"a": "subscribe", "v": tokens}))
        await ws.send(json.dumps({"a": "mode", "v": ["full", tokens]}))
        ready.set()
        while not stop.is_set():
            try:
                msg = await asyncio.wait_for(ws.recv(), 0.2)
            except asyncio.TimeoutError:
                continue
            if isinstance(msg, bytes):
                batch, _info = decode_frame(msg, 0)
                if len(batch):
                    out.append(batch)


def test_inject_puts_each_kind_on_the_wire_as_sent_says():
    tokens = [RELIANCE, NIFTY, NIFTYFUT]
    got: list[TickBatch] = []
    stop, ready = threading.Event(), threading.Event()
    with KiteSimulator(tick_interval=0.05, heartbeat_interval=0.2) as sim:
        sim.pause()
        reader = threading.Thread(target=lambda: asyncio.run(_read_wire(sim, tokens, stop, got, ready)),
                                  daemon=True)
        reader.start()
        try:
            assert ready.wait(10)
            wait_for(lambda: all_full(sim, tokens), 10, "the reader's full-mode subscription")
            sim.resume()
            wait_for(lambda: len(sim.sent()) >= 30, 10, "market ticks")
            with pytest.raises(ValueError, match="negative"):
                sim.inject("zero_price", price=-5.0)
            with pytest.raises(ValueError, match="index"):
                sim.inject("zero_volume", NIFTY)
            with pytest.raises(ValueError, match="kind"):
                sim.inject("nonsense")
            sim.inject("zero_volume", RELIANCE)
            sim.inject("stale_volume", NIFTYFUT, ago=3)
            sim.inject("swap", RELIANCE)
            sim.inject("bogus_stamp", NIFTY)
            sim.inject("bogus_stamp", RELIANCE, stamp=0)
            sim.inject("zero_price", NIFTYFUT)
            sim.inject("late", RELIANCE, count=2, seconds=7)
            assert sim.pending_injections == 8
            wait_for(lambda: sim.pending_injections == 0, 10, "the injections on the wire")
            n = len(sim.sent())
            wait_for(lambda: sum(len(b) for b in got) >= n + 10, 10, "the reader to catch up")
        finally:
            stop.set()
            reader.join(5)
        sent, everything, recs = sim.sent(), sim.sent_all(), sim.injected()
        clean, market = sim.sent(injected=False), sim.market()

    wire = TickBatch.concat(got)
    m = len(wire)
    assert m <= len(sent)
    np.testing.assert_array_equal(wire.token, sent.token[:m])
    np.testing.assert_array_equal(wire.ts, sent.ts[:m])
    np.testing.assert_array_equal(wire.price, sent.price[:m])
    np.testing.assert_array_equal(wire.volume, sent.volume[:m])

    assert sorted(r["kind"] for r in recs) == sorted(["zero_volume", "stale_volume", "swap", "bogus_stamp",
                                                      "bogus_stamp", "zero_price", "late", "late"])
    assert [r["index"] for r in recs] == sorted(r["index"] for r in recs)  # in wire order
    assert (everything["kind"] != "").sum() == 8 and len(everything) == len(sent)
    assert set(everything["mode"]) == {"full"}
    assert len(clean) == len(sent) - 8
    # the market itself is untouched: every clean tick sent is a market tick, and no injected one is
    mk = set(zip(market.token.tolist(), market.ts.tolist(), market.price.tolist()))
    assert all(row in mk for row in zip(clean.token.tolist(), clean.ts.tolist(), clean.price.tolist()))
    for r in recs:
        i = r["index"]
        assert (int(sent.token[i]), int(sent.ts[i])) == (r["token"], r["ts"])
        assert everything["kind"].iloc[i] == r["kind"]
        # it follows the instrument's market packet of the same frame
        j = i - 1
        while everything["kind"].iloc[j] != "":
            j -= 1
        assert int(sent.token[j]) == r["token"] and everything["frame"].iloc[j] == r["frame"]
        market_ts, market_vol = int(sent.ts[j]), float(sent.volume[j])
        if r["kind"] == "zero_volume":
            assert r["volume"] == 0 and market_vol > 0 and r["ts"] == market_ts
        elif r["kind"] == "stale_volume":
            prior = everything[(everything["token"] == r["token"]) & (everything["kind"] == "")
                               & (everything.index < j)]
            assert r["volume"] == prior["volume"].iloc[-3] < market_vol
        elif r["kind"] == "swap":
            assert r["ts"] == market_ts and r["volume"] < market_vol
        elif r["kind"] == "bogus_stamp":
            assert r["ts"] in (market_ts + TEN_YEARS_S * NS, 0)
        elif r["kind"] == "zero_price":
            assert r["price"] == 0.0
            assert i >= m or float(wire.price[i]) == 0.0  # 0 paise decodes as 0.0
        elif r["kind"] == "late":
            assert r["ts"] == market_ts - 7 * NS and r["volume"] == market_vol


# ---------------------------------------------------------------- the package, live, against the oracle
def oracle_over(everything: pd.DataFrame, tfs):
    """The oracle fed with every tick the simulator sent, in wire order, live: the exchange clock at a
    tick is approximated by its frame's market stamp (what a true clock would receive it at)."""
    from oracle import Oracle

    o = Oracle(list(tfs), live=True)
    market_ts = everything[everything["kind"] == ""].groupby("frame")["ts"].max()
    now = everything["frame"].map(market_ts).to_numpy()
    for row, now_ns in zip(everything.itertuples(index=False), now):
        o.tick(int(row.token), int(row.ts), float(row.price), float(row.volume), float(row.oi),
               now_ns=int(now_ns))
    return o


BAD_KINDS = ("bad_price", "bad_volume", "bad_stamp")


def run_live(monkeypatch, mess) -> tuple[dict, pd.DataFrame, list[dict], dict]:
    """Stream SYMS at 5s and 1m from a simulator on loopback through the public API; ``mess(sim)``
    injects while the market runs. Returns the status after the stream stopped (and the one while it
    ran, under "running"), everything sent, the injection records and the candles."""
    import kiteohlc_lab as k
    from kiteohlc_lab import api

    tokens = list(SYMS.values())
    sim = KiteSimulator(tick_interval=0.25, heartbeat_interval=0.5, seed=7).start()
    try:
        sim.pause()  # until the stream's mode message: quote packets carry no exchange stamp
        monkeypatch.setenv("KITEOHLC_TICKER_URL", sim.ticker_url)
        monkeypatch.setenv("KITEOHLC_API_URL", sim.api_url)
        api.reset()
        k.stream(",".join(SYMS), "5s", "1m", source="sim")
        wait_for(lambda: all_full(sim, tokens), 15, "the stream's full-mode subscription")
        sim.resume()
        wait_for(lambda: len(sim.sent()) >= 3 * 12, 15, "3 s of market")
        mess(sim)
        last = int(sim.sent(injected=False).ts.max())
        # the stream goes on: two more 5 s candles close after the mess
        wait_for(lambda: int(sim.sent(injected=False).ts.max()) >= last + 12 * NS, 25,
                 "12 s more market")
        n = len(sim.sent())
        wait_for(lambda: k.status()[0]["feed"]["ticks"] >= n, 10, "the feed")
        running = k.status()[0]
        sim.pause()
        n = len(sim.sent())
        wait_for(lambda: k.status()[0]["feed"]["ticks"] == n, 10, "the feed to receive every tick sent")
        k.stop()  # processes everything the feed delivered, then flushes
        st = dict(k.status()[0])
        st["running"] = running
        everything, recs = sim.sent_all(), sim.injected()
        got = {(sym, tf): k.candles(sym, tf) for sym in SYMS for tf in ("5s", "1m")}
    finally:
        api.reset()
        sim.stop()
    assert set(everything["mode"]) == {"full"}, "a tick went out before the full-mode subscription"
    return st, everything, recs, got


def assert_candles_equal_oracle(o, got: dict) -> None:
    """Closed and forming alike: which candle is still forming at the end depends on the stream's
    clock after the pause, not on the ticks."""
    for (sym, tf), df in got.items():
        want = o.frame(SYMS[sym], tf, closed_only=False)
        assert len(want) >= (4 if tf == "5s" else 1)
        have = df[COLS].astype(float)
        have.index = have.index.rename("date")
        pd.testing.assert_frame_equal(have, want[COLS], check_freq=False, obj=f"{sym} {tf}")


def bad_counts(st: dict) -> tuple[dict, dict]:
    """status()'s bad_ticks and rejected, bad kinds only, zero counts left out."""
    total = {k: v for k, v in (st.get("bad_ticks") or {}).items() if v}
    per = {sym: {k: v for k, v in d.items() if k in BAD_KINDS and v}
           for sym, d in (st.get("rejected") or {}).items()}
    return total, {sym: d for sym, d in per.items() if d}


def test_live_mess_candles_equal_oracle_and_stream_counts_it(monkeypatch, caplog):
    def mess(sim: KiteSimulator) -> None:  # each kind on the wire, spread over a few seconds
        sim.inject("zero_volume", RELIANCE)
        sim.inject("stale_volume", INFY, ago=3)
        sim.inject("swap", NIFTYFUT)
        sim.inject("bogus_stamp", INFY)  # 10 years ahead
        wait_for(lambda: sim.pending_injections == 0, 10, "the first injections")
        n = len(sim.sent())
        wait_for(lambda: len(sim.sent()) >= n + 8 * 3, 10, "2 s more market")
        sim.inject("zero_price", RELIANCE)
        sim.inject("late", NIFTYFUT, seconds=12)
        sim.inject("swap", RELIANCE)
        wait_for(lambda: sim.pending_injections == 0, 10, "the second injections")

    caplog.set_level("WARNING")
    st, everything, recs, got = run_live(monkeypatch, mess)
    assert len(recs) == 7
    o = oracle_over(everything, ("5s", "1m"))

    # the mess is all there (the oracle says so too)
    assert o.glitches == 4  # zero volume, stale snapshot, two swaps
    assert o.counts == {RELIANCE: {"bad_price": 1}, INFY: {"bad_stamp": 1}}
    assert o.late == 1  # late for 5s (12 s back), whatever it is for 1m

    assert_candles_equal_oracle(o, got)

    # the stream ran on through it, and status() counts it
    assert st["running"]["state"] == "running", st["running"]
    assert st["running"]["feed"]["state"] == "connected", st["running"]
    assert st["volume_glitches"] == 4, st
    assert bad_counts(st) == ({"bad_price": 1, "bad_stamp": 1},
                              {"RELIANCE": {"bad_price": 1}, "INFY": {"bad_stamp": 1}}), st
    assert st["late"] == o.late, st

    # reported once per instrument and kind, in one line naming the instrument and the value
    lines = [r.getMessage() for r in caplog.records if "bad tick" in r.getMessage()]
    for sym, value in (("RELIANCE", "0"), ("INFY", "2036")):
        mine = [m for m in lines if sym in m]
        assert len(mine) == 1 and value in mine[0], lines


def test_live_zero_exchange_stamp_is_a_bad_tick(monkeypatch):
    """README rule 1: a timestamp before 2000-01-01 (e.g. a zero stamp) is ``bad_stamp``: never a
    candle, never a volume figure. Here a full packet carries exchange_timestamp 0 (and a price
    different from the market's, so a tick wrongly accepted shows in the candles)."""
    def mess(sim: KiteSimulator) -> None:
        price = float(sim.sent().price[sim.sent().token == RELIANCE][-1]) + 50.0
        sim.inject("bogus_stamp", RELIANCE, stamp=0, price=price)
        wait_for(lambda: sim.pending_injections == 0, 10, "the injection")

    st, everything, recs, got = run_live(monkeypatch, mess)
    o = oracle_over(everything, ("5s", "1m"))
    assert o.counts == {RELIANCE: {"bad_stamp": 1}}
    assert_candles_equal_oracle(o, got)
    assert bad_counts(st) == ({"bad_stamp": 1}, {"RELIANCE": {"bad_stamp": 1}}), st
