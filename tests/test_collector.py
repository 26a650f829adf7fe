"""A collector subprocess, a simulator on loopback and an in-process reader that attaches.

The collector is SIGKILLed in the middle of a candle and replaced: the reader's candles must equal
those the oracle (tests/oracle.py, README "## Candle conventions") builds from every tick the
simulator sent, resumed where the new collector took over (rule 4: the first tick after a resume
adds 0), with no gap and no duplicate, and the simulator must never see two connections at once.
The 1m candles the outage touches may instead already be the repaired ones (Kite's minutes). Runs on
the Redis server at 127.0.0.1:6379 (unique prefix per test) and on the embedded default (one data_dir
shared).
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
from kiteohlc_lab.feeds.simulator import KiteSimulator

from conftest import needs, redis_available
from oracle import Oracle
from conftest import stop_embedded, wait_for  # noqa: E402

NIFTY, RELIANCE = 256265, 738561
TFS = ["10s", "1m"]
TOKEN = "sekrit-access-token-4242"
REDIS_URL = "redis://127.0.0.1:6379/0"
NS = 10**9
MIN_NS = 60 * NS
REPAIR_GRACE_S = 12.0  # KiteSource.repair_grace: a minute is fetched once over + this


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


ABSENT = None  # an alternative: no candle at that start (a repaired minute the ticks never had)


def pause(sim: KiteSimulator) -> None:
    """Stop the market, then let the simulator's loop pass one turn: a batch generated as the flag
    was set is in ``sent()`` (logged before its send) when this returns, and no other follows."""
    sim.pause()
    sim._call_in_loop(lambda: None)


def all_full(sim: KiteSimulator, tokens=(NIFTY, RELIANCE)) -> bool:
    """A client holds every token in full mode (quote packets carry no exchange stamp)."""
    return any(all(subs.get(t) == "full" for t in tokens) for subs in sim.subscriptions())


def run_oracle(sent, restarts=(), tokens=(NIFTY, RELIANCE)) -> Oracle:
    """The oracle fed every tick sent, in wire order, with ``resume(tokens)`` before ``sent[n]`` for
    each ``n`` in ``restarts`` (a collector continued the Redis state there)."""
    o = Oracle(TFS, grace=1.0, live=True)
    mine = np.isin(sent.token, list(tokens))
    prev = 0
    for n in [*sorted(restarts), None]:
        part = np.zeros(len(sent), dtype=bool)
        part[prev:n] = True
        o.feed(sent.take(part & mine))
        if n is not None:
            o.resume(list(tokens))
            prev = n
    return o


def ohlcv(c: dict) -> tuple:
    return (c["open"], c["high"], c["low"], c["close"], c["volume"])


def repaired_minutes(sim: KiteSimulator, sent, restarts, tokens=(NIFTY, RELIANCE)) -> dict:
    """{(token, start): (o, h, l, c, v) or ABSENT} for every 1m bucket gap repair replaces: per restart
    and token, from the one holding its last tick before to the one holding its first tick after (README
    rule 4), valued as Kite's historical minutes (the simulator's: every tick its market made).
    A minute Kite does not have yet (not over) is left out; one it has no candle for is ABSENT."""
    out: dict = {}
    for n in restarts:
        for tok in tokens:
            before, after = sent.ts[:n][sent.token[:n] == tok], sent.ts[n:][sent.token[n:] == tok]
            if not len(before) or not len(after):
                continue  # no tick after the restart yet: nothing to repair
            lo, hi = int(before.max()) // MIN_NS * MIN_NS, int(after.min()) // MIN_NS * MIN_NS
            over = (time.time_ns() // MIN_NS) * MIN_NS  # the simulator serves minutes before this one
            rows = {int(pd.Timestamp(r[0]).value): tuple(float(x) for x in r[1:6])
                    for r in sim.historical(tok, "minute", lo, hi)}
            for s in range(lo, min(hi + MIN_NS, over), MIN_NS):
                out[(tok, s)] = rows.get(s, ABSENT)
    return out


def expected(sim: KiteSimulator, restarts=(), repaired: str = "either",
             tokens=(NIFTY, RELIANCE)) -> dict | None:
    """{(token, tf): {start: [alternatives]}} from every tick the simulator sent (closed + forming):
    each value is a list of acceptable (o, h, l, c, v) (ABSENT: no candle). The 1m candles gap repair
    replaces are either the oracle's (before the repair lands) or Kite's minutes (``repaired="either"``)
    or must be Kite's (``"required"``; None while Kite does not have them all yet)."""
    sent = sim.sent()
    o = run_oracle(sent, restarts, tokens)
    out: dict = {(tok, tf): {} for tok in tokens for tf in TFS}
    for c in o.closed:
        out[(c["token"], c["tf"])][c["start"]] = [ohlcv(c)]
    for tok in tokens:
        for tf in TFS:
            f = o.forming(tok, tf)
            if f is not None:
                out[(tok, tf)][f["start"]] = [ohlcv(f)]
    fixed = repaired_minutes(sim, sent, restarts, tokens)
    if repaired == "required":
        for n in restarts:
            for tok in tokens:
                after = sent.ts[n:][sent.token[n:] == tok]
                if not len(after):
                    return None
                if (tok, int(after.min()) // MIN_NS * MIN_NS) not in fixed:
                    return None  # the outage's last minute is not over on Kite's side yet
    for (tok, s), value in fixed.items():
        mine = out[(tok, "1m")].get(s, [ABSENT])
        out[(tok, "1m")][s] = [value] if repaired == "required" else [*mine, value]
    # a bucket with only ABSENT alternatives is no candle
    return {key: {s: alts for s, alts in by.items() if any(a is not ABSENT for a in alts)}
            for key, by in out.items()}


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


def matches(alts: list, value) -> bool:
    for a in alts:
        if a is ABSENT or value is ABSENT:
            if a is value:
                return True
        elif np.allclose(a, value, equal_nan=True):
            return True
    return False


def same(exp: dict | None, obs: dict) -> bool:
    if exp is None or set(exp) != set(obs):
        return False
    for key, e in exp.items():
        o = obs[key]
        for s in set(e) | set(o):
            if not matches(e.get(s, [ABSENT]), o.get(s, ABSENT)):
                return False
    return True


def diff(exp: dict, obs: dict) -> str:
    lines = []
    for key in sorted(set(exp) | set(obs)):
        e, o = exp.get(key, {}), obs.get(key, {})
        for s in sorted(set(e) | set(o)):
            if not matches(e.get(s, [ABSENT]), o.get(s, ABSENT)):
                lines.append(f"{key} {s}: expected one of {e.get(s)} observed {o.get(s)}")
    return "\n".join(lines[:20])


def caught_up(sim, m, restarts=()) -> bool:
    return same(expected(sim, restarts), observed(m))


def reader(cfg_kw: dict):
    from kiteohlc_lab.runtime import Manager

    return Manager(KiteOHLC(grace=1.0, **cfg_kw))


def candle_holding(o: Oracle, tok: int, tf: str, ts: int) -> dict:
    """The oracle's (last emitted or forming) candle of ``tok`` in ``tf`` that holds stamp ``ts``."""
    c = [c for c in o.closed if c["token"] == tok and c["tf"] == tf and c["start"] <= ts]
    f = o.forming(tok, tf)
    if f is not None and f["start"] <= ts:
        c.append(f)
    assert c, f"no {tf} candle of {tok} holds {ts}"
    return max(c, key=lambda x: x["start"])


def first_after_is_a_resume(sim, n: int, tok: int = RELIANCE) -> None:
    """The restart means something: the oracle without the resume lumps the gap's volume (the first
    tick after's increase over the last before) into that tick's 10s candle; the resumed one does not."""
    sent = sim.sent()
    after = np.flatnonzero(sent.token[n:] == tok)
    assert len(after), "no tick after the restart"
    ts = int(sent.ts[n + after[0]])
    resumed = candle_holding(run_oracle(sent, [n]), tok, "10s", ts)["volume"]
    lumped = candle_holding(run_oracle(sent), tok, "10s", ts)["volume"]
    assert lumped > resumed, (lumped, resumed)


def run_kill_restart(sim, procs, tmp_path, extra: list[str], reader_cfg: dict, status_cfg: KiteOHLC):
    """Returns the reader and the restart point (how many ticks were sent when the first collector died)."""
    from kiteohlc_lab.collector import list_collectors

    pause(sim)  # until the collector's full-mode subscription: quote packets carry no exchange stamp
    c1 = procs.start(collector_cmd(sim, *extra))
    wait_for(lambda: sim.connections == 1, 30, "the first collector to connect")
    wait_for(lambda: all_full(sim), 15, "the first collector's full-mode subscription")
    sim.resume()
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
        pause(sim)
        wait_for(lambda: caught_up(sim, m), 10, "the reader to show every tick sent")
        assert any(len(v) for v in expected(sim).values())
        c1.send_signal(signal.SIGKILL)
        c1.wait(10)
        wait_for(lambda: sim.connections == 0, 10, "the simulator to notice the dead collector")
        assert not [e for e in list_collectors(status_cfg) if e["pid"] == c1.pid], "dead collector listed"
        n = len(sim.sent())  # the restart point: the next tick sent goes to the second collector

        c2 = procs.start(collector_cmd(sim, *extra))
        wait_for(lambda: sim.connections == 1, 30, "the second collector to connect")
        wait_for(lambda: all_full(sim), 15, "the second collector's full-mode subscription")
        assert len(sim.sent()) == n
        sim.resume()
        wait_for(lambda: len(sim.sent()) >= n + 16, 20, "ticks after the restart")
        pause(sim)
        first_after_is_a_resume(sim, n)
        try:
            wait_for(lambda: caught_up(sim, m, [n]), 10, "the reader to follow the new collector")
        except AssertionError:
            raise AssertionError("reader differs from the oracle:\n" + diff(expected(sim, [n]), observed(m)))
        assert sim.max_seen_connections == 1
        assert [e for e in list_collectors(status_cfg) if e["pid"] == c2.pid]
        assert m.status()[0]["source"] == "redis"

        # SIGTERM: exit 0 within 5 s, stores flushed
        sim.resume()
        wait_for(lambda: len(sim.sent()) >= n + 20, 10, "ticks before SIGTERM")
        pause(sim)
        t0 = time.monotonic()
        c2.send_signal(signal.SIGTERM)
        assert c2.wait(10) == 0
        assert time.monotonic() - t0 < 5.0
        wait_for(lambda: not [e for e in list_collectors(status_cfg) if e["pid"] == c2.pid], 5,
                 "the stopped collector to leave status")
        return m, n
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


def check_history(sim, data_dir: Path, restarts=()) -> None:
    """Every candle the oracle closed is in the collectors' history store, with its values (a 1m
    candle the outage touched: the oracle's, or Kite's minute if the repair landed first)."""
    from kiteohlc_lab.stores.sqlite import SQLiteHistory

    sent = sim.sent()
    o = run_oracle(sent, restarts)
    closed = {(c["token"], c["tf"], c["start"]): c for c in o.closed}
    fixed = repaired_minutes(sim, sent, restarts)
    h = SQLiteHistory(data_dir / "history.sqlite3")
    try:
        for (tok, tf, start), c in sorted(closed.items()):
            df = h.read(tok, tf)
            starts = df.index.as_unit("ns").asi8
            assert start in starts, f"closed candle {c} missing from the history store"
            row = df.iloc[list(starts).index(start)]
            alts = [ohlcv(c)]
            if tf == "1m" and fixed.get((tok, start)) is not None:
                alts.append(fixed[(tok, start)])
            got = (row.open, row.high, row.low, row.close, row.volume)
            assert matches(alts, got), f"{tok} {tf} {start}: history {got}, expected one of {alts}"
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
        m, n = run_kill_restart(sim, procs, tmp_path, extra,
                             dict(redis_url=REDIS_URL, redis_prefix=prefix, data_dir=str(tmp_path / "reader")),
                             KiteOHLC(redis_url=REDIS_URL, redis_prefix=prefix, data_dir=str(coll_dir)))
        m.shutdown()
        check_flushed(sim, r, prefix)
        check_history(sim, coll_dir, [n])
        check_logs(tmp_path, coll_dir)
    finally:
        RedisLive(r, prefix=prefix).delete_all()  # SCAN + UNLINK, never FLUSHALL
        r.close()


@pytest.mark.slow
@pytest.mark.integration
def test_kill_restart_on_embedded_redis(sim, procs, tmp_path):

    data = tmp_path / "shared-data"
    extra = ["--data-dir", str(data)]
    m = None
    try:
        # the collector starts the embedded server; the reader on the same data_dir finds it
        m, n = run_kill_restart(sim, procs, tmp_path, extra, dict(data_dir=str(data)),
                             KiteOHLC(data_dir=str(data)))
        client = m.stores()[0].client
        check_flushed(sim, client, "kohlc:")
        m.shutdown()
        check_history(sim, data, [n])
        check_logs(tmp_path, data)
    finally:
        if m is not None:
            m.shutdown()
        stop_embedded(data)


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
        from kiteohlc_lab.collector import remove_log_handlers

        remove_log_handlers()


@pytest.mark.slow
@pytest.mark.integration
@needs(redis_available(), "needs Redis at 127.0.0.1:6379")
def test_outage_after_kill_is_repaired_from_history(procs, tmp_path):
    """The market moves while no collector runs (it holds still only for the kill, so that nothing
    received is unwritten, and until the new collector's full-mode subscription, so that every tick
    sent carries its exchange stamp). 10s candles equal the oracle's of what was sent, resumed at the
    restart (the outage's volume is in no 10s candle); the minutes of the outage are rebuilt from
    Kite's historical minutes (every tick the market made)."""
    import redis

    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    coll_dir = tmp_path / "c"
    extra = ["--redis-url", REDIS_URL, "--redis-prefix", prefix, "--data-dir", str(coll_dir)]
    r = redis.Redis.from_url(REDIS_URL)
    sim = KiteSimulator(tick_interval=1.0, api_key="testkey", access_token=TOKEN).start()
    m = reader(dict(redis_url=REDIS_URL, redis_prefix=prefix, data_dir=str(tmp_path / "reader")))
    try:
        pause(sim)  # until the collector's full-mode subscription: quote packets carry no exchange stamp
        c1 = procs.start(collector_cmd(sim, *extra))
        wait_for(lambda: sim.connections == 1, 30, "the first collector")
        wait_for(lambda: all_full(sim), 15, "the first collector's full-mode subscription")
        sim.resume()
        wait_for(lambda: len(sim.sent()) >= 6, 15, "ticks")
        assert m.start("NIFTY,RELIANCE", TFS).source == "redis"
        pause(sim)  # the kill, once everything sent is in Redis: nothing received is unwritten
        wait_for(lambda: caught_up(sim, m), 10, "the reader")
        c1.send_signal(signal.SIGKILL)
        c1.wait(10)
        wait_for(lambda: sim.connections == 0, 10, "the simulator to notice the dead collector")
        n = len(sim.sent())  # the restart point
        t0 = int(sim.sent().ts.max())
        sim.resume()  # the market goes on with no client
        # The outage: no restart before the market (which goes on with no client) has ticked past
        # the end of the 10 s candle after t0's, so at least one whole candle is never sent.
        ten = 10 * 10**9
        boundary = (t0 // ten + 2) * ten
        wait_for(lambda: int(sim.market().ts.max()) >= boundary, 40,
                 "the market to move past a whole 10 s candle with no collector")
        assert int(sim.sent().ts.max()) == t0 and len(sim.sent()) == n  # nothing sent in the outage
        pause(sim)
        procs.start(collector_cmd(sim, *extra))
        wait_for(lambda: sim.connections == 1, 30, "the new collector")
        wait_for(lambda: all_full(sim), 15, "the new collector's full-mode subscription")
        assert len(sim.sent()) == n
        sim.resume()
        wait_for(lambda: int(sim.sent().ts.max()) > t0, 30, "ticks to the new collector")
        sent = sim.sent()
        t1 = int(sent.ts[n:].min())
        assert t1 >= boundary and t1 - t0 > ten, "no outage"
        first_after_is_a_resume(sim, n)

        # The repair is due once the outage's last minute (t1's) is over + the settle: from then on,
        # the candles must become the target (nothing left to chance: the market holds still).
        due_s = (t1 // MIN_NS + 1) * MIN_NS / NS + REPAIR_GRACE_S
        wait_for(lambda: time.time() >= due_s, due_s - time.time() + 5, "the repair to be due", every=0.2)
        try:
            wait_for(lambda: sim.historical_requests > 0, 20, "the new collector to fetch the outage")
            pause(sim)
            wait_for(lambda: same(expected(sim, [n], repaired="required"), observed(m)), 30,
                     "the outage minutes to be repaired")
        except AssertionError as exc:
            t = expected(sim, [n], repaired="required")
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


def test_heartbeat_names_every_streamed_symbol_and_follows_a_new_stream(tmp_path):
    """The registry entry (file and Redis) is whole JSON naming the symbols streamed, sorted; when
    the streams change (here a second stream in the same process), the next beat names the new
    ones too: the symbols' text is printed once and reused only while no stream's list changed."""
    from kiteohlc_lab.collector import Collector, list_collectors
    from kiteohlc_lab.config import from_sources

    cfg = from_sources(env={}, dotenv={}, flags={"data_dir": str(tmp_path / "d")})
    col = Collector(cfg, "RELIANCE,NIFTY", ["1m"], source="sim", heartbeat=0.1)
    runner = threading.Thread(target=col.run, kwargs={"install_signals": False}, daemon=True)
    runner.start()
    try:
        def beat(symbols):
            found = [e for e in list_collectors(cfg) if e["pid"] == os.getpid()]
            return found if found and found[0]["symbols"] == symbols else None

        first = wait_for(lambda: beat(["NIFTY", "RELIANCE"]), 30, "the first heartbeat")[0]
        assert first["tfs"] == ["1m"] and first["source"] == "sim" and "expires" in first
        published = json.loads((tmp_path / "d" / "collectors").glob("*.json").__next__().read_text())
        assert set(published) == set(col.entry()) and published["symbols"] == ["NIFTY", "RELIANCE"]
        col.manager.start("INFY", ["1m"], source="sim")
        wait_for(lambda: beat(["INFY", "NIFTY", "RELIANCE"]), 10, "a beat naming the new stream's symbol")
        e = col.entry()
        e["symbols"].append("MUTATED")  # a caller's copy: the next beat is not changed by it
        assert col.entry()["symbols"] == ["INFY", "NIFTY", "RELIANCE"]
    finally:
        col.stop_event.set()
        runner.join(15)
    assert not runner.is_alive()
