"""Readers that follow the store, and bounded memory (issue 11).

- A collector in another process streams the simulator into the embedded stores; in this process the
  read API (``kiteohlc-lab serve``'s app) and a fresh ``Manager().candles()`` -- no stream of their
  own -- show each candle the collector stored within a second or two, and its forming candle.
- Series of instruments nobody streams are evicted (bounded LRU); streamed, called back and pinned
  ones never are.
- A slow ``on_candle`` callback runs on its own worker: the stream's candles keep closing, the
  backlog and what is dropped are counted in ``status()``.
- ``Manager.errors`` keeps the last N; the notebook's ``check_errors`` still reports each error once.
- The simulator keeps a bounded window of ticks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiteohlc_lab.config import KiteOHLC
from kiteohlc_lab.core.bounded import ErrorLog
from kiteohlc_lab.feeds.simulator import KiteSimulator
from conftest import stop_embedded, wait_for  # noqa: E402

NIFTY, RELIANCE = 256265, 738561
TOKEN = "follow-token-77"


@pytest.fixture
def sim():
    s = KiteSimulator(tick_interval=0.2, api_key="testkey", access_token=TOKEN).start()
    yield s
    s.stop()


@pytest.fixture
def collector(sim, tmp_path):
    """`kiteohlc-lab collect NIFTY,RELIANCE 2s` in another process on the embedded stores of
    ``tmp_path/data``; yields that data_dir."""

    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KITEOHLC_", "KITE_"))}
    env.update(KITE_API_KEY="testkey", KITE_ACCESS_TOKEN=TOKEN,
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "kiteohlc_lab.cli", "collect", "NIFTY,RELIANCE", "2s",
           "--source", "sim", "--ticker-url", sim.ticker_url, "--api-url", sim.api_url,
           "--grace", "0.5", "--heartbeat", "0.5", "--data-dir", str(data)]
    err = open(tmp_path / "collector.stderr", "w")
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for(lambda: sim.connections == 1 or p.poll() is not None, 60, "the collector to connect")
        assert p.poll() is None, (tmp_path / "collector.stderr").read_text()[-2000:]
        yield data
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        err.close()
        stop_embedded(data)


def stored(data: Path, token: int, tf: str = "2s") -> int:
    """Closed candles the collector has stored in the history store, read straight from it."""
    from kiteohlc_lab.stores.sqlite import SQLiteHistory

    h = SQLiteHistory(data / "history.sqlite3")
    try:
        return len(h.read(token, tf))
    finally:
        h.close()


@pytest.mark.integration
def test_read_api_and_candles_follow_a_collector_in_another_process(collector):
    from conftest import need_import

    need_import("starlette")
    need_import("httpx")
    from starlette.testclient import TestClient

    from kiteohlc_lab.runtime import Manager
    from kiteohlc_lab.serve import build_app

    data = collector
    wait_for(lambda: stored(data, NIFTY) >= 1, 30, "the collector's first closed candle")
    server = Manager(KiteOHLC(data_dir=str(data), grace=0.5))
    key = {"X-API-Key": "k"}
    try:
        with TestClient(build_app(server, "k")) as client:
            def api_closed() -> int:
                r = client.get("/candles/NIFTY/2s", headers=key, params={"closed_only": "true"})
                assert r.status_code == 200, r.text
                return len(r.json()["candles"])

            def api_forming():
                return client.get("/candles/NIFTY/2s", headers=key).json()["forming"]

            seen = [api_closed()]
            for _ in range(3):  # successive reads see each new candle the collector stores
                have = stored(data, NIFTY)
                wait_for(lambda: stored(data, NIFTY) > have, 15, "the collector to close a candle")
                target = stored(data, NIFTY)
                t0 = time.monotonic()
                wait_for(lambda: api_closed() >= target, 5, f"the read API to show {target} candles")
                assert time.monotonic() - t0 < 2.5  # follow_interval 1 s, plus a request or two
                seen.append(api_closed())
            assert seen == sorted(seen) and seen[-1] >= seen[0] + 3, seen
            # the forming candle the collector publishes is served too (it holds the lease)
            wait_for(api_forming, 5, "a forming candle from the live store")
            assert not server.streams  # nothing of its own: every candle came from the stores

        # a fresh Manager without a stream: candles() follows the store the same way
        fresh = Manager(KiteOHLC(data_dir=str(data), grace=0.5))
        try:
            first = len(fresh.candles(RELIANCE, "2s", closed_only=True))
            wait_for(lambda: len(fresh.candles(RELIANCE, "2s", closed_only=True)) >= first + 2, 15,
                     "candles() to show the collector's new candles")
            df = fresh.candles(RELIANCE, "2s")
            assert df.index.is_monotonic_increasing and not df.index.has_duplicates
            assert not fresh.streams
        finally:
            fresh.shutdown()
    finally:
        server.shutdown()


def test_idle_series_are_evicted_and_used_ones_kept(tmp_path):
    from kiteohlc_lab.runtime import Manager

    m = Manager(KiteOHLC(data_dir=str(tmp_path / "d"), max_idle_series=64))
    try:
        unsub = m.on_candle(111, "1m", lambda c: None)
        unpin = m.pin(222, "1m")
        called_back, pinned = m.series(111, "1m"), m.series(222, "1m")
        sizes = []
        for i in range(3000):  # distinct instruments nobody streams (what any read-API key can ask)
            m.candles(1_000_000 + i, "1m")
            if i % 500 == 499:
                sizes.append(len(m.buffers))
        assert max(sizes) <= 64 + 2, sizes  # flat: bounded whatever the number of distinct reads
        assert m.evicted >= 3000 - 64
        assert m.series(111, "1m") is called_back and m.series(222, "1m") is pinned
        mem = m.memory_status()
        assert mem["series"] <= 66 and mem["evicted"] == m.evicted
        unsub()
        unpin()
        for i in range(200):
            m.candles(2_000_000 + i, "1m")
        assert (111, "1m") not in m.buffers and (222, "1m") not in m.buffers  # idle now: evicted
        assert len(m.buffers) <= 64
    finally:
        m.shutdown()


def test_streamed_series_are_never_evicted_and_a_slow_callback_does_not_slow_the_stream(tmp_path):
    from kiteohlc_lab.runtime import Manager

    sim = KiteSimulator(tick_interval=0.05, api_key="testkey", access_token=TOKEN).start()
    m = Manager(KiteOHLC(data_dir=str(tmp_path / "d"), ticker_url=sim.ticker_url, api_url=sim.api_url,
                         api_key="testkey", access_token=TOKEN, grace=0.3, max_idle_series=8,
                         callback_queue=3))
    calls = []

    def slow(candle) -> None:
        calls.append(candle)
        time.sleep(2.0)

    try:
        m.on_candle("NIFTY", "1s", slow)
        info = m.start("NIFTY,RELIANCE", "1s", source="sim")
        assert info.source == "sim"
        streamed = m.series("RELIANCE", "1s")
        wait_for(lambda: calls, 20, "the first callback")
        n0 = len(m.candles("RELIANCE", "1s", closed_only=True))
        t0 = time.monotonic()
        for i in range(500):  # reads of instruments nobody streams meanwhile: evicted, not these
            m.candles(3_000_000 + i, "1s")
        # the stream keeps closing candles every second while the callback sleeps 2 s per call
        wait_for(lambda: len(m.candles("RELIANCE", "1s", closed_only=True)) >= n0 + 4, 15,
                 "the stream to close candles while the callback sleeps")
        wait_for(lambda: m.status()[0].get("callbacks", {}).get("dropped", 0) > 0, 15,
                 "the bounded callback queue to drop")
        elapsed = time.monotonic() - t0
        st = m.status()[0]
        cb = st["callbacks"]
        assert cb["queued"] >= 1 and cb["max_backlog"] <= cb["limit"] + 1 == 4, cb
        assert len(calls) <= 2 + elapsed / 2.0  # the callback runs at its own pace, elsewhere
        assert st["state"] == "running"
        assert m.series("RELIANCE", "1s") is streamed  # streamed: never evicted
        assert len(m.buffers) <= 8 + 2 + 2
        nifty = m.candles("NIFTY", "1s", closed_only=True)
        assert len(nifty) >= 4  # the called-back series itself is current, whatever the callback
    finally:
        m.shutdown()
        sim.stop()


def test_error_log_is_bounded_and_check_errors_reports_each_once(tmp_path, capsys):
    log = ErrorLog(10)
    for i in range(25):
        log.append(("s", f"e{i}"))
    assert len(log) == 10 and log.total == 25 and log.dropped == 15 and isinstance(log, list)
    assert log[0] == ("s", "e15")
    got, seen = log.since(22)
    assert [e for _, e in got] == ["e22", "e23", "e24"] and seen == 25
    got, seen = log.since(3)  # fell out of the window: what is kept
    assert len(got) == 10 and seen == 25

    from kiteohlc_lab.runtime import Manager

    m = Manager(KiteOHLC(data_dir=str(tmp_path / "d")))

    class S:
        name = "s1"

    for i in range(5000):
        m.on_error(S(), f"message {i}")
    assert len(m.errors) == 1000 and m.errors.total == 5000

    from kiteohlc_lab.notebook import magics as magics_mod

    mg = magics_mod.KiteOHLCMagics.__new__(magics_mod.KiteOHLCMagics)
    mg._configured, mg._error_index, mg._seen_errors = True, 0, {}
    orig = magics_mod.get_manager
    magics_mod.get_manager = lambda: m
    try:
        assert len(mg.check_errors()) == 1 and "message 4000" in capsys.readouterr().err
        assert mg.check_errors() == []  # nothing new
        for i in range(1500):  # more than the log keeps between two cells
            m.on_error(S(), f"later {i}")
        out = mg.check_errors()
        assert len(out) == 1 and "later 500" in out[0] and "(+999 more)" in out[0]
        m.on_error(S(), "the last one")
        out = mg.check_errors()
        assert len(out) == 1 and "the last one" in out[0] and "more" not in out[0]
    finally:
        magics_mod.get_manager = orig
        m.shutdown()


def test_simulator_keeps_a_bounded_window_of_ticks():
    sim = KiteSimulator(tick_interval=0.005, max_log_ticks=400).start()
    try:
        wait_for(lambda: sim.market_dropped > 0, 20, "the window to drop old ticks")
        kept = sim.market()
        assert 0 < len(kept) <= 400
        assert int(kept.ts.min()) >= 0 and sim._window_ns > 0
    finally:
        sim.stop()
