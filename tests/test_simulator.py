"""The Kite simulator against the real kiteconnect clients (KiteTicker on Twisted, KiteConnect)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
from kiteconnect import KiteConnect, KiteTicker
from kiteconnect import exceptions as kex
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from kiteohlc_lab.core.ticks import TickBatch
from kiteohlc_lab.core.timeframes import IST_OFFSET_NS, NS
from kiteohlc_lab.feeds.frames import decode_frame
from kiteohlc_lab.feeds.simulator import KiteSimulator, main

pytestmark = pytest.mark.integration

RELIANCE, NIFTY, NIFTYFUT, CRUDE = 738561, 256265, 13238786, 54000903
MIN = 60 * NS


@pytest.fixture(scope="session")
def reactor():
    """One Twisted reactor for the whole session, never stopped (it cannot be restarted)."""
    from twisted.internet import reactor as r

    if not r.running:
        started = threading.Event()
        r.callWhenRunning(started.set)
        threading.Thread(target=r.run, kwargs={"installSignalHandlers": False}, daemon=True).start()
        assert started.wait(10)
    return r


@pytest.fixture
def sim():
    with KiteSimulator(tick_interval=0.05, heartbeat_interval=0.2) as s:
        yield s


def ticker(reactor, sim, token="sim-token", **kw) -> KiteTicker:
    kt = KiteTicker(sim.api_key, token, root=sim.ticker_url, **kw)
    return kt


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def ws_url(sim, token="sim-token"):
    return f"{sim.ticker_url}?api_key={sim.api_key}&access_token={token}"


# ---------------------------------------------------------------- WebSocket with a real KiteTicker
def test_kiteticker_full_mode_ticks_match_what_was_sent(reactor, sim):
    got: list[dict] = []
    enough = threading.Event()
    kt = ticker(reactor, sim)

    def on_connect(ws, response):
        ws.subscribe([RELIANCE, NIFTY, NIFTYFUT])
        ws.set_mode(ws.MODE_FULL, [RELIANCE, NIFTY, NIFTYFUT])

    def on_ticks(ws, ticks):
        got.extend(t for t in ticks if t["mode"] == "full")
        if len(got) >= 30:
            enough.set()

    kt.on_connect, kt.on_ticks = on_connect, on_ticks
    reactor.callFromThread(kt.connect)
    try:
        assert enough.wait(10), "no full-mode ticks from the simulator"
    finally:
        reactor.callFromThread(kt.close)

    recv = TickBatch.from_ticks(got, receive_ns=0)
    sent = sim.sent()
    sent_rows = {
        (t, s, round(p, 4), -1 if np.isnan(v) else v)
        for t, s, p, v in zip(sent.token.tolist(), sent.ts.tolist(), sent.price.tolist(), sent.volume.tolist())
    }
    for t, s, p, v in zip(recv.token.tolist(), recv.ts.tolist(), recv.price.tolist(), recv.volume.tolist()):
        assert (t, s, round(p, 4), -1 if np.isnan(v) else v) in sent_rows
    assert set(recv.token.tolist()) == {RELIANCE, NIFTY, NIFTYFUT}
    fut = [t for t in got if t["instrument_token"] == NIFTYFUT]
    assert fut and all(t["oi"] > 0 for t in fut)
    assert all(abs(recv.ts - time.time_ns()) < 30 * NS)
    assert {t["tradable"] for t in got if t["instrument_token"] == NIFTY} == {False}

    # the top of the book kiteconnect parsed (depth buy[0] / sell[0]) is the one sim.sent() logged
    def book_rows(b):
        return [(t, s, *(-1.0 if np.isnan(x) else round(x, 4) for x in xs))
                for t, s, *xs in zip(b.token.tolist(), b.ts.tolist(), *(x.tolist() for x in b.book()))]

    sent_books = set(book_rows(sent))
    assert all(r in sent_books for r in book_rows(recv))
    for t in got:
        if t["instrument_token"] == NIFTY:
            assert "depth" not in t
            continue
        bid, ask = t["depth"]["buy"][0], t["depth"]["sell"][0]
        lot = 75 if t["instrument_token"] == NIFTYFUT else 1
        assert 0 < t["last_price"] - bid["price"] <= 0.1 + 1e-9  # a tick or two below
        assert 0 < ask["price"] - t["last_price"] <= 0.1 + 1e-9
        assert bid["quantity"] % lot == 0 and ask["quantity"] % lot == 0 and bid["quantity"] > 0
        depth = t["depth"]["buy"]
        assert all(a["price"] > b["price"] for a, b in zip(depth, depth[1:]))  # 5 levels, stepping away


def test_kiteticker_bad_token_gets_403(reactor, sim):
    seen: list[tuple] = []
    closed = threading.Event()
    kt = ticker(reactor, sim, token="wrong", reconnect=False)
    kt.on_error = lambda ws, code, reason: seen.append(("error", code, reason))
    kt.on_close = lambda ws, code, reason: (seen.append(("close", code, reason)), closed.set())
    reactor.callFromThread(kt.connect)
    assert closed.wait(10)
    assert any(kind == "error" and "403" in str(reason) for kind, _code, reason in seen)
    assert sim.total_connections == 0


def test_kiteticker_reconnects_after_drop(reactor, sim):
    connects = []
    again = threading.Event()
    kt = ticker(reactor, sim)

    def on_connect(ws, response):
        connects.append(time.monotonic())
        ws.subscribe([RELIANCE])
        if len(connects) >= 2:
            again.set()

    kt.on_connect = on_connect
    reactor.callFromThread(kt.connect)
    try:
        deadline = time.monotonic() + 10
        while sim.connections < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        sim.drop_connections()
        assert again.wait(15), "KiteTicker did not reconnect"
        deadline = time.monotonic() + 5  # on_connect fires during the handshake, before the server counts
        while sim.total_connections < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        reactor.callFromThread(kt.close)
    assert sim.total_connections == 2


# ---------------------------------------------------------------- WebSocket protocol details
def test_modes_subscriptions_and_errors(sim):
    async def go():
        async with ws_connect(ws_url(sim)) as ws:
            await ws.send(json.dumps({"a": "subscribe", "v": [RELIANCE, NIFTY]}))
            await ws.send(json.dumps({"a": "mode", "v": ["ltp", [NIFTY]]}))
            await ws.send("not json")
            await ws.send(json.dumps({"a": "mode", "v": ["depth", [NIFTY]]}))
            errors, frames = [], []
            while len(errors) < 2 or len(frames) < 3:
                msg = await ws.recv()
                if isinstance(msg, str):
                    errors.append(json.loads(msg))
                elif len(msg) > 1:
                    frames.append(decode_frame(msg, 0))
            await ws.send(json.dumps({"a": "unsubscribe", "v": [NIFTY]}))
            later = []
            while len(later) < 3:
                msg = await ws.recv()
                if isinstance(msg, bytes) and len(msg) > 1:
                    later.append(decode_frame(msg, 0)[0])
            return errors, frames, later

    errors, frames, later = run(go())
    assert [e["type"] for e in errors] == ["error", "error"]
    assert "depth" in errors[1]["data"]
    batch, info = frames[-1]
    assert set(batch.token.tolist()) == {RELIANCE, NIFTY}
    assert info.quote == 1 and info.ltp == 1  # new subscription: quote mode; NIFTY switched to ltp
    assert set(later[-1].token.tolist()) == {RELIANCE}


def test_heartbeats_when_idle_and_silence_keeps_pings(sim):
    async def go():
        async with ws_connect(ws_url(sim)) as ws:
            first = await ws.recv()  # nothing subscribed: heartbeats only
            sim.go_silent(0.8)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.5)
            pong = await ws.ping()
            await asyncio.wait_for(pong, 1)  # the socket is alive and answers pings
            again = await asyncio.wait_for(ws.recv(), 3)
            return first, again, time.monotonic() - t0

    first, again, gap = run(go())
    assert first == b"\x00" and again == b"\x00"
    assert gap >= 0.7


def test_connection_limit_429_and_counters():
    async def go(sim):
        async with ws_connect(ws_url(sim)):
            async with ws_connect(ws_url(sim)):
                with pytest.raises(InvalidStatus) as err:
                    async with ws_connect(ws_url(sim)):
                        pass
                return err.value.response.status_code

    with KiteSimulator(tick_interval=0.05, max_connections=2) as sim:
        assert run(go(sim)) == 429
        assert sim.max_seen_connections == 2 and sim.total_connections == 2


def test_bad_credentials_403_on_raw_handshake(sim):
    async def go():
        with pytest.raises(InvalidStatus) as err:
            async with ws_connect(ws_url(sim, token="nope")):
                pass
        return err.value.response.status_code

    assert run(go()) == 403


def test_send_malformed_and_drop(sim):
    async def go():
        async with ws_connect(ws_url(sim)) as ws:
            await ws.recv()
            await asyncio.to_thread(sim.send_malformed)
            while True:
                msg = await ws.recv()
                if len(msg) > 1:
                    break
            await asyncio.to_thread(sim.drop_connections)
            with pytest.raises(ConnectionClosed):
                while True:
                    await ws.recv()
            return msg

    garbage = run(go())
    batch, info = decode_frame(garbage, 0)
    assert len(batch) == 0 and info.malformed > 0
    with pytest.raises(struct.error):
        KiteTicker("k", "t")._parse_binary(garbage)


def test_pause_stops_ticks(sim):
    async def go():
        async with ws_connect(ws_url(sim)) as ws:
            await ws.send(json.dumps({"a": "subscribe", "v": [RELIANCE]}))
            while len(await ws.recv()) <= 1:
                pass
            sim.pause()
            n_before = len(sim.market())
            await asyncio.sleep(0.3)
            n_after = len(sim.market())
            sim.resume()
            while len(await ws.recv()) <= 1:
                pass
            return n_before, n_after

    before, after = run(go())
    assert after - before <= len(sim.instruments)  # at most one step in flight


def test_tape_drives_the_market(tmp_path):
    stamps = pd.date_range("2026-11-20 09:15:00", periods=20, freq="1s")
    tape = pd.DataFrame({
        "timestamp": stamps.strftime("%Y-%m-%d %H:%M:%S"),
        "instrument_token": RELIANCE,
        "last_price": 1500 + np.arange(20) * 0.05,
        "volume_traded": np.arange(20) * 10,
        "oi": 0,
    })
    path = tmp_path / "tape.csv"
    tape.to_csv(path, index=False)

    async def go(sim):
        async with ws_connect(ws_url(sim)) as ws:
            await ws.send(json.dumps({"a": "subscribe", "v": [RELIANCE]}))
            await ws.send(json.dumps({"a": "mode", "v": ["full", [RELIANCE]]}))
            prices = []
            while len(prices) < 20:
                msg = await ws.recv()
                if len(msg) > 1:
                    prices += decode_frame(msg, 0)[0].price.tolist()
            return prices

    with KiteSimulator(tick_interval=0.02, tape=str(path), speed=50) as sim:
        prices = run(go(sim))
        market = sim.market()
    np.testing.assert_allclose(market.price, tape["last_price"])
    np.testing.assert_allclose(prices[-5:], tape["last_price"].to_numpy()[-5:])


# ---------------------------------------------------------------- REST with a real KiteConnect
@pytest.fixture
def kc(sim):
    k = KiteConnect(sim.api_key, root=sim.api_url)
    k.set_access_token(sim.access_token)
    return k


def test_profile_and_instruments(kc):
    assert kc.profile()["user_id"] == "SIM001"
    rows = kc.instruments()
    by_token = {r["instrument_token"]: r for r in rows}
    assert by_token[NIFTY]["tradingsymbol"] == "NIFTY 50" and by_token[NIFTY]["segment"] == "INDICES"
    assert by_token[NIFTYFUT]["exchange"] == "NFO" and NIFTYFUT & 0xFF == 2
    assert by_token[CRUDE]["exchange"] == "MCX" and CRUDE & 0xFF == 7
    assert [r["tradingsymbol"] for r in kc.instruments("MCX")] == ["CRUDEOIL25DECFUT"]


def test_bad_token_rest_403(sim):
    k = KiteConnect(sim.api_key, root=sim.api_url)
    k.set_access_token("expired")
    with pytest.raises(kex.TokenException) as err:
        k.profile()
    assert err.value.code == 403


@pytest.mark.parametrize("interval,step_min", [("minute", 1), ("5minute", 5), ("60minute", 60)])
def test_historical_intraday_aligned_to_0915(kc, sim, interval, step_min):
    # 2026-11-16 (a Monday) and 2026-11-14 (a Saturday: no candles)
    candles = kc.historical_data(RELIANCE, "2026-11-14 00:00:00", "2026-11-16 23:59:59", interval)
    dates = [c["date"] for c in candles]
    assert dates and all(d.utcoffset().total_seconds() == 19800 for d in dates)
    assert {d.date().isoformat() for d in dates} == {"2026-11-16"}
    assert dates[0].strftime("%H:%M") == "09:15"
    assert all(((d.hour * 60 + d.minute) - (9 * 60 + 15)) % step_min == 0 for d in dates)
    assert len(dates) == -(-375 // step_min)
    for c in candles:
        assert c["low"] <= min(c["open"], c["close"]) <= max(c["open"], c["close"]) <= c["high"]
    again = kc.historical_data(RELIANCE, "2026-11-16 09:15:00", "2026-11-16 15:29:00", interval)
    assert again == candles  # deterministic
    assert sim.historical_requests == 2


def test_historical_day_and_oi(kc):
    days = kc.historical_data(NIFTYFUT, "2026-11-02 00:00:00", "2026-11-08 00:00:00", "day", oi=True)
    assert [d["date"].strftime("%Y-%m-%d %H:%M") for d in days] == [
        f"2026-11-0{i} 00:00" for i in range(2, 7)
    ]
    assert all(d["oi"] > 0 for d in days)


def test_historical_span_limits_and_bad_input(kc):
    with pytest.raises(kex.InputException, match="60 days"):
        kc.historical_data(RELIANCE, "2026-01-01 00:00:00", "2026-03-15 00:00:00", "minute")
    kc.historical_data(RELIANCE, "2026-01-01 00:00:00", "2026-03-15 00:00:00", "5minute")
    with pytest.raises(kex.InputException, match="interval"):
        kc.historical_data(RELIANCE, "2026-01-01 00:00:00", "2026-01-02 00:00:00", "2minute")
    with pytest.raises(kex.InputException, match="token"):
        kc.historical_data(999, "2026-01-01 00:00:00", "2026-01-02 00:00:00", "minute")


def test_historical_minutes_come_from_sent_ticks_and_overrides(kc, sim):
    async def go():
        async with ws_connect(ws_url(sim)) as ws:
            await ws.send(json.dumps({"a": "subscribe", "v": [RELIANCE]}))
            n = 0
            while n < 5:
                n += len(await ws.recv()) > 1

    run(go())
    sim.pause()
    ticks = sim.market().take(sim.market().token == RELIANCE)
    minute = int(ticks.ts[0]) // MIN * MIN
    sim.clock_ns = lambda: time.time_ns() + 2 * MIN  # as if the minutes were over

    def ist(ns):
        return pd.Timestamp(ns + IST_OFFSET_NS).strftime("%Y-%m-%d %H:%M:%S")

    candles = kc.historical_data(RELIANCE, ist(minute), ist(int(ticks.ts[-1])), "minute")
    first = candles[0]
    in_min = ticks.take(ticks.ts // MIN * MIN == minute)
    assert first["date"].timestamp() * NS == minute
    assert first["open"] == pytest.approx(in_min.price[0])
    assert first["close"] == pytest.approx(in_min.price[-1])
    assert first["high"] == pytest.approx(in_min.price.max())
    assert first["volume"] == in_min.volume[-1]  # cumulative volume started at 0

    sim.set_history_override(RELIANCE, minute, close=1234.5, volume=7)
    changed = kc.historical_data(RELIANCE, ist(minute), ist(minute), "minute")
    assert changed[0]["close"] == 1234.5 and changed[0]["volume"] == 7


def test_market_has_the_days_rhythm_and_moves_like_nifty():
    """The walk moves like the instruments it stands for: NIFTY several points a minute, a busy
    open, a quieter midday, a busier close; volume in lots, none for indices."""
    from kiteohlc_lab.feeds.sim_market import DEFAULT_INSTRUMENTS, SimMarket

    market = SimMarket(list(DEFAULT_INSTRUMENTS), 7, None, 1.0)
    day = pd.Timestamp("2026-11-25 09:15", tz="Asia/Kolkata").value // NS
    price, volume = [], []
    for s in range(0, 375 * 60, 2):  # the whole session, a step every 2 s
        b = market.step(day + s, float(day + s))
        price.append(b.price.copy())
        volume.append(np.nan_to_num(b.volume))
    price, volume = np.array(price), np.array(volume)
    per_min = 30  # steps a minute
    nifty = price[::per_min, 0]
    moves = np.abs(np.diff(nifty))
    assert 2 < moves.mean() < 30, moves.mean()  # points a minute
    # the rhythm, as realised variance of minute returns pooled over the instruments
    r2 = np.diff(np.log(price[::per_min]), axis=0) ** 2
    open_half, midday, close_half = r2[0:30].mean(), r2[150:240].mean(), r2[345:374].mean()
    assert open_half > 1.5 * midday and close_half > 1.2 * midday, (open_half, midday, close_half)
    reliance = np.diff(volume[::per_min, 2])
    assert reliance[:30].mean() > 1.5 * reliance[150:240].mean()
    assert np.all(volume[:, 0] == 0)  # an index trades nothing
    fut = volume[:, 7]
    assert np.all(np.diff(fut) % 75 == 0) and fut[-1] > 0  # NIFTY futures trade in lots of 75


def test_history_before_the_start_joins_the_live_prices(kc, sim):
    """The minute history before the simulator started closes at the live starting price, and the
    first live ticks continue from there: no jump between backfilled history and live candles."""
    start_min = sim.started_ns // MIN * MIN

    def ist(ns):
        return pd.Timestamp(ns + IST_OFFSET_NS).strftime("%Y-%m-%d %H:%M:%S")

    for token, tick in ((NIFTY, 0.05), (RELIANCE, 0.05), (CRUDE, 1.0)):
        inst = sim.instrument(token)
        candles = kc.historical_data(token, ist(start_min - 4 * 24 * 60 * MIN), ist(start_min - MIN), "minute")
        assert candles, "no history before the start"
        last = candles[-1]
        assert last["date"].timestamp() * NS < start_min
        assert last["close"] == pytest.approx(inst.last_price)
        closes = np.array([c["close"] for c in candles])
        # a realistic path: it moves, by small steps relative to the price
        assert np.abs(np.diff(closes)).mean() < 0.003 * inst.last_price
        assert closes.max() - closes.min() > 20 * tick
    live = sim.market()
    first = live.take(live.token == NIFTY).price[0] if len(live) else None
    if first is not None:
        assert abs(first - sim.instrument(NIFTY).last_price) < 0.002 * sim.instrument(NIFTY).last_price


# ---------------------------------------------------------------- command line
def test_main_prints_urls_and_stops_on_sigterm():
    code = "from kiteohlc_lab.feeds.simulator import main; raise SystemExit(main(['--tick-interval','0.1']))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = [proc.stdout.readline().split() for _ in range(2)]
        assert lines[0][0] == "ticker_url" and lines[0][1].startswith("ws://127.0.0.1:")
        assert lines[1][0] == "api_url" and lines[1][1].startswith("http://127.0.0.1:")
        k = KiteConnect("sim", root=lines[1][1])
        k.set_access_token("sim-token")
        assert k.profile()["broker"] == "ZERODHA"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
