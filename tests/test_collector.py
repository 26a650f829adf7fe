"""A collector subprocess, a simulator on loopback and an in-process reader that attaches.

The collector is SIGKILLed in the middle of a candle and replaced: the reader's candles must equal
those the reference aggregator builds from every tick the simulator sent, with no gap and no
duplicate, and the simulator must never see two connections at once. Runs on the Redis server at
127.0.0.1:6379 (unique prefix per test) and on the embedded default (one data_dir shared).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kiteohlc_lab.stores.redis_live import RedisLive

from kiteohlc_lab.config import KiteOHLC
from kiteohlc_lab.core.reference import ReferenceAggregator
from kiteohlc_lab.feeds.simulator import KiteSimulator

from conftest import needs, redis_available

NIFTY, RELIANCE = 256265, 738561
TFS = ["10s", "1m"]
TOKEN = "sekrit-access-token-4242"
REDIS_URL = "redis://127.0.0.1:6379/0"


def wait_for(cond, timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def sim():
    s = KiteSimulator(tick_interval=0.5, api_key="testkey", access_token=TOKEN).start()
    yield s
    s.stop()


def collector_cmd(sim, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kiteohlc_lab.cli", "collect", "NIFTY,RELIANCE", *TFS,
            "--source", "sim", "--ticker-url", sim.ticker_url, "--api-url", sim.api_url,
            "--grace", "1", "--heartbeat", "0.5", "--lease-ttl", "3", *extra]


class Procs:
    """Collector subprocesses of one test, killed at teardown whatever happens."""

    def __init__(self, tmp: Path, env: dict) -> None:
        self.tmp, self.env, self.procs = tmp, env, []

    def start(self, cmd: list[str]) -> subprocess.Popen:
        err = open(self.tmp / f"collector{len(self.procs)}.stderr", "w")
        p = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=err)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


@pytest.fixture
def procs(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KITEOHLC_", "KITE_"))}
    env["KITE_API_KEY"] = "testkey"  # credentials through the environment
    env["KITE_ACCESS_TOKEN"] = TOKEN
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    ps = Procs(tmp_path, env)
    yield ps
    ps.stop_all()


def expected(sim: KiteSimulator, tokens=(NIFTY, RELIANCE)) -> dict:
    """{(token, tf): {start: (o, h, l, c, v)}} from every tick the simulator sent (closed + forming)."""
    ref = ReferenceAggregator(TFS, grace=1.0)
    sent = sim.sent()
    ref.feed(sent.take(np.isin(sent.token, list(tokens))))
    out: dict = {}
    for c in ref.closed:
        out.setdefault((c.token, c.tf), {})[c.start] = (c.open, c.high, c.low, c.close, c.volume)
    for (tok, tf), c in ref.forming.items():
        out.setdefault((tok, tf), {})[c.start] = (c.open, c.high, c.low, c.close, c.vol)
    return out


def observed(m, tokens=(NIFTY, RELIANCE)) -> dict:
    out: dict = {}
    for tok in tokens:
        for tf in TFS:
            df = m.candles(tok, tf)
            starts = df.index.as_unit("ns").asi8
            assert len(set(starts.tolist())) == len(starts), f"duplicate candle starts in {tok} {tf}"
            out[(tok, tf)] = {int(s): tuple(float(x) for x in row)
                              for s, row in zip(starts, df[["open", "high", "low", "close", "volume"]].to_numpy())}
    return out


def same(exp: dict, obs: dict) -> bool:
    if set(exp) != set(obs):
        return False
    for key, e in exp.items():
        o = obs[key]
        if set(e) != set(o):
            return False
        if not all(np.allclose(e[s], o[s], equal_nan=True) for s in e):
            return False
    return True


def diff(exp: dict, obs: dict) -> str:
    lines = []
    for key in sorted(set(exp) | set(obs)):
        e, o = exp.get(key, {}), obs.get(key, {})
        for s in sorted(set(e) | set(o)):
            if s not in e or s not in o or not np.allclose(e[s], o[s], equal_nan=True):
                lines.append(f"{key} {s}: expected {e.get(s)} observed {o.get(s)}")
    return "\n".join(lines[:20])


def caught_up(sim, m) -> bool:
    return same(expected(sim), observed(m))


def reader(cfg_kw: dict):
    from kiteohlc_lab.runtime import Manager

    return Manager(KiteOHLC(grace=1.0, **cfg_kw))


def run_kill_restart(sim, procs, tmp_path, extra: list[str], reader_cfg: dict, status_cfg: KiteOHLC):
    from kiteohlc_lab.collector import list_collectors

    c1 = procs.start(collector_cmd(sim, *extra))
    wait_for(lambda: sim.connections == 1, 30, "the first collector to connect")
    wait_for(lambda: len(sim.sent()) >= 4, 10, "ticks")
    m = reader(reader_cfg)
    try:
        info = m.start("NIFTY,RELIANCE", TFS)  # auto: both are leased by the collector -> attach
        assert info.source == "redis" and "Attached" in info.message, info.message
        assert not any(s.source.name == "sim" for s in m.streams.values())
        wait_for(lambda: [e for e in list_collectors(status_cfg) if e["pid"] == c1.pid], 10,
                 "status to list the collector")
        wait_for(lambda: len(sim.sent()) >= 12, 15, "more ticks")

        # kill -9 in the middle of a candle, once everything sent is in Redis
        sim.pause()
        wait_for(lambda: caught_up(sim, m), 10, "the reader to show every tick sent")
        assert any(len(v) for v in expected(sim).values())
        c1.send_signal(signal.SIGKILL)
        c1.wait(10)
        wait_for(lambda: sim.connections == 0, 10, "the simulator to notice the dead collector")
        assert not [e for e in list_collectors(status_cfg) if e["pid"] == c1.pid], "dead collector listed"

        c2 = procs.start(collector_cmd(sim, *extra))
        wait_for(lambda: sim.connections == 1, 30, "the second collector to connect")
        sim.resume()
        n = len(sim.sent())
        wait_for(lambda: len(sim.sent()) >= n + 16, 20, "ticks after the restart")
        sim.pause()
        try:
            wait_for(lambda: caught_up(sim, m), 10, "the reader to follow the new collector")
        except AssertionError:
            raise AssertionError("reader differs from the reference:\n" + diff(expected(sim), observed(m)))
        assert sim.max_seen_connections == 1
        assert [e for e in list_collectors(status_cfg) if e["pid"] == c2.pid]
        assert m.status()[0]["source"] == "redis"

        # SIGTERM: exit 0 within 5 s, stores flushed
        sim.resume()
        wait_for(lambda: len(sim.sent()) >= n + 20, 10, "ticks before SIGTERM")
        sim.pause()
        t0 = time.monotonic()
        c2.send_signal(signal.SIGTERM)
        assert c2.wait(10) == 0
        assert time.monotonic() - t0 < 5.0
        wait_for(lambda: not [e for e in list_collectors(status_cfg) if e["pid"] == c2.pid], 5,
                 "the stopped collector to leave status")
        return m
    except BaseException:
        m.shutdown()
        raise


def check_flushed(sim, live_client, prefix: str) -> None:
    """After SIGTERM the Redis state holds each instrument's last sent tick and free leases."""
    sent = sim.sent()
    for tok in (NIFTY, RELIANCE):
        st = json.loads(live_client.get(f"{prefix}{{{tok}}}:state"))
        last = max([st["vol"]["prev_ts"]] + [f["last_ts"] for f in st["forming"].values()])
        assert last == int(sent.ts[sent.token == tok].max())
        assert live_client.get(f"{prefix}{{{tok}}}:lease") is None


def check_history(sim, data_dir: Path) -> None:
    from kiteohlc_lab.stores.sqlite import SQLiteHistory

    ref = ReferenceAggregator(TFS, grace=1.0)
    sent = sim.sent()
    ref.feed(sent.take(np.isin(sent.token, [NIFTY, RELIANCE])))
    h = SQLiteHistory(data_dir / "history.sqlite3")
    try:
        for c in ref.closed:
            df = h.read(c.token, c.tf)
            starts = df.index.as_unit("ns").asi8
            assert c.start in starts, f"closed candle {c} missing from the history store"
            row = df.iloc[list(starts).index(c.start)]
            assert np.allclose([row.open, row.high, row.low, row.close, row.volume],
                               [c.open, c.high, c.low, c.close, c.volume])
    finally:
        h.close()


def check_logs(tmp_path: Path, data_dir: Path) -> None:
    logs = list((data_dir / "logs").glob("collector.log*"))
    assert logs, "no log file written"
    text = "".join(p.read_text() for p in logs)
    assert "starting" in text and "stopped" in text
    for p in [*logs, *tmp_path.glob("collector*.stderr")]:
        assert TOKEN not in p.read_text(), f"access token in {p.name}"


@pytest.mark.slow
@pytest.mark.integration
@needs(redis_available(), "needs Redis at 127.0.0.1:6379")
def test_kill_restart_on_redis_server(sim, procs, tmp_path):
    import redis

    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    coll_dir = tmp_path / "collector-data"
    extra = ["--redis-url", REDIS_URL, "--redis-prefix", prefix, "--data-dir", str(coll_dir)]
    r = redis.Redis.from_url(REDIS_URL)
    try:
        # the reader has its own data_dir: everything it shows comes through Redis
        m = run_kill_restart(sim, procs, tmp_path, extra,
                             dict(redis_url=REDIS_URL, redis_prefix=prefix, data_dir=str(tmp_path / "reader")),
                             KiteOHLC(redis_url=REDIS_URL, redis_prefix=prefix, data_dir=str(coll_dir)))
        m.shutdown()
        check_flushed(sim, r, prefix)
        check_history(sim, coll_dir)
        check_logs(tmp_path, coll_dir)
    finally:
        RedisLive(r, prefix=prefix).delete_all()  # SCAN + UNLINK, never FLUSHALL
        r.close()


@pytest.mark.slow
@pytest.mark.integration
def test_kill_restart_on_embedded_redis(sim, procs, tmp_path):
    from kiteohlc_lab.stores.embedded import connect_embedded, shutdown_embedded

    data = tmp_path / "shared-data"
    extra = ["--data-dir", str(data)]
    m = None
    try:
        # the collector starts the embedded server; the reader on the same data_dir finds it
        m = run_kill_restart(sim, procs, tmp_path, extra, dict(data_dir=str(data)),
                             KiteOHLC(data_dir=str(data)))
        client = m.stores()[0].client
        check_flushed(sim, client, "kohlc:")
        m.shutdown()
        check_history(sim, data)
        check_logs(tmp_path, data)
    finally:
        if m is not None:
            m.shutdown()
        shutdown_embedded(data)
        try:
            connect_embedded(data).shutdown(nosave=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


@pytest.mark.slow
@pytest.mark.integration
@needs(redis_available(), "needs Redis at 127.0.0.1:6379")
def test_second_collector_stands_by_then_takes_over(sim, procs, tmp_path):
    import redis

    from kiteohlc_lab.collector import list_collectors

    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    extra = ["--redis-url", REDIS_URL, "--redis-prefix", prefix, "--data-dir", str(tmp_path / "d")]
    cfg = KiteOHLC(redis_url=REDIS_URL, redis_prefix=prefix, data_dir=str(tmp_path / "d"))
    r = redis.Redis.from_url(REDIS_URL)
    try:
        c1 = procs.start(collector_cmd(sim, *extra))
        wait_for(lambda: sim.connections == 1, 30, "the first collector")
        c2 = procs.start(collector_cmd(sim, *extra))
        e2 = wait_for(lambda: [e for e in list_collectors(cfg) if e["pid"] == c2.pid], 20,
                      "the second collector's heartbeat")[0]
        assert e2["waiting"] == ["NIFTY", "RELIANCE"] and "standby" in e2["health"]
        assert sim.connections == 1
        owner = r.get(f"{prefix}{{{NIFTY}}}:lease").decode()
        assert f":{c1.pid}:" in owner
        c1.send_signal(signal.SIGTERM)
        assert c1.wait(10) == 0
        wait_for(lambda: f":{c2.pid}:" in (r.get(f"{prefix}{{{NIFTY}}}:lease") or b"").decode(), 10,
                 "the second collector to take the lease")
        wait_for(lambda: sim.connections == 1, 10, "the second collector to connect")
        assert sim.max_seen_connections == 1
    finally:
        procs.stop_all()
        RedisLive(r, prefix=prefix).delete_all()  # SCAN + UNLINK, never FLUSHALL
        r.close()


def test_logs_redact_the_token(tmp_path):
    from kiteohlc_lab.collector import setup_logging
    from kiteohlc_lab.feeds.auth import guard_logging

    guard_logging(TOKEN)
    path = setup_logging(str(tmp_path), stderr=False)
    try:
        logging.getLogger("kiteohlc_lab.feeds.kite").warning("url ws://x?access_token=%s", TOKEN)
        logging.getLogger("some.library").warning("header token testkey:%s", TOKEN)
        for h in logging.getLogger().handlers:
            h.flush()
        text = path.read_text()
        assert TOKEN not in text and text.count("***") == 2
    finally:
        root = logging.getLogger()
        for h in [h for h in root.handlers if getattr(h, "_kiteohlc", False)]:
            root.removeHandler(h)
            h.close()


@pytest.mark.slow
@pytest.mark.integration
@needs(redis_available(), "needs Redis at 127.0.0.1:6379")
def test_outage_after_kill_is_repaired_from_history(procs, tmp_path):
    """No pause: the market moves while no collector runs. 10s candles equal what was sent; the
    minutes of the outage are rebuilt from Kite's historical minutes (every tick the market made)."""
    import redis

    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    coll_dir = tmp_path / "c"
    extra = ["--redis-url", REDIS_URL, "--redis-prefix", prefix, "--data-dir", str(coll_dir)]
    r = redis.Redis.from_url(REDIS_URL)
    sim = KiteSimulator(tick_interval=1.0, api_key="testkey", access_token=TOKEN).start()
    m = reader(dict(redis_url=REDIS_URL, redis_prefix=prefix, data_dir=str(tmp_path / "reader")))
    try:
        c1 = procs.start(collector_cmd(sim, *extra))
        wait_for(lambda: sim.connections == 1, 30, "the first collector")
        wait_for(lambda: len(sim.sent()) >= 6, 15, "ticks")
        assert m.start("NIFTY,RELIANCE", TFS).source == "redis"
        wait_for(lambda: caught_up(sim, m), 10, "the reader")
        n = len(sim.sent())
        wait_for(lambda: len(sim.sent()) > n, 5, "a fresh tick batch")
        wait_for(lambda: caught_up(sim, m), 0.8, "the batch in Redis")
        c1.send_signal(signal.SIGKILL)  # the next batch is ~1 s away: nothing received is unwritten
        c1.wait(10)
        wait_for(lambda: sim.connections == 0, 10, "the simulator to notice the dead collector")
        t0 = int(sim.sent().ts.max())
        # The outage: no restart before the market (which goes on with no client) has ticked past
        # the end of the 10 s candle after t0's, so at least one whole candle is never sent.
        ten = 10 * 10**9
        boundary = (t0 // ten + 2) * ten
        wait_for(lambda: int(sim.market().ts.max()) >= boundary, 40,
                 "the market to move past a whole 10 s candle with no collector")
        assert int(sim.sent().ts.max()) == t0  # nobody connected: nothing sent in the outage
        procs.start(collector_cmd(sim, *extra))
        wait_for(lambda: int(sim.sent().ts.max()) > t0, 30, "ticks to the new collector")
        sent = sim.sent()
        t1 = int(sent.ts[sent.ts > t0].min())
        assert t1 >= boundary and t1 - t0 > ten, "no outage"
        lo, hi = t0 // (60 * 10**9), t1 // (60 * 10**9)

        def target() -> dict | None:
            exp = expected(sim)
            ref = ReferenceAggregator(["1m"], grace=1.0)
            mk = sim.market()
            ref.feed(mk.take(np.isin(mk.token, [NIFTY, RELIANCE])))
            full = {(c.token, c.start): (c.open, c.high, c.low, c.close, c.volume) for c in ref.closed}
            if any((tok, hi * 60 * 10**9) not in full for tok in (NIFTY, RELIANCE)):
                return None  # the outage's last minute has not ended yet
            for tok in (NIFTY, RELIANCE):
                # volume as Kite's minute candles report it (the first minute of the simulated
                # session counts its first tick's volume, which a tick baseline cannot)
                vol = {int(pd.Timestamp(row[0]).value): float(row[5]) for row in
                       sim.historical(tok, "minute", lo * 60 * 10**9, hi * 60 * 10**9)}
                for s in list(exp[(tok, "1m")]):
                    if lo <= s // (60 * 10**9) <= hi and (tok, s) in full:
                        # repaired: OHLC of every tick the market made, not only those sent
                        exp[(tok, "1m")][s] = (*full[(tok, s)][:4], vol[s])
            return exp

        try:  # repair waits for the outage's last minute to end + 12 s (Zerodha's advice)
            wait_for(lambda: sim.historical_requests > 0, 100, "the new collector to fetch the outage")
            wait_for(lambda: (t := target()) is not None and same(t, observed(m)), 30,
                     "the outage minutes to be repaired")
        except AssertionError as exc:
            t = target()
            raise AssertionError(f"{exc}\n" + (diff(t, observed(m)) if t else "")) from None
        assert sim.max_seen_connections == 1
    finally:
        m.shutdown()
        procs.stop_all()
        sim.stop()
        RedisLive(r, prefix=prefix).delete_all()  # SCAN + UNLINK, never FLUSHALL
        r.close()


def test_collector_reconcile_option_runs_the_background_check(tmp_path):
    """`collect --reconcile`: a Reconciler follows the collector's instruments and stops with it."""
    from kiteohlc_lab.collector import Collector
    from kiteohlc_lab.config import from_sources

    cfg = from_sources(env={}, dotenv={}, flags={"data_dir": str(tmp_path / "d")})
    col = Collector(cfg, "NIFTY", ["1m"], source="sim", reconcile=True)
    runner = threading.Thread(target=col.run, kwargs={"install_signals": False}, daemon=True)
    runner.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and col.reconciler is None:
        time.sleep(0.05)
    assert col.reconciler is not None and "reconciling" in col.message
    assert col.reconciler.tokens() == [256265]
    col.stop_event.set()
    runner.join(10)
    assert not runner.is_alive()
    assert not col.reconciler._thread.is_alive()
