"""Leases that fence (kiteohlc_lab.lease): generations, the live store refusing a stale writer,
lost leases standing the writer down, leases taken when Redis comes back; and two collectors, the
first frozen with SIGSTOP past the lease TTL.

Unit tests run on the Redis at 127.0.0.1:6379 with a unique prefix (keys removed by SCAN+UNLINK);
the Redis-down test starts its own redis-server on a free port.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import need, need_import, needs, redis_available

redis = need_import("redis")

from kiteohlc_lab.core.candles import CandleBatch
from kiteohlc_lab.lease import LeaseKeeper, generation_key, lease_key
from kiteohlc_lab.stores.redis_live import RedisLive
from conftest import wait_for  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/0"
TOK = 424242


@pytest.fixture
def r():
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5)
    try:
        client.ping()
    except redis.ConnectionError:
        need(False, "needs Redis at 127.0.0.1:6379")
    yield client
    client.close()


@pytest.fixture
def prefix(r):
    p = f"test-fence-{uuid.uuid4().hex[:8]}:"
    yield p
    RedisLive(r, prefix=p).delete_all()  # SCAN + UNLINK, never FLUSHALL


def batch(tf: str, price: float, closed: bool, token: int = TOK, start: int = 1_700_000_040) -> CandleBatch:
    one = lambda v, dt=np.float64: np.array([v], dt)
    return CandleBatch(tf, one(token, np.int64), one(start * 10**9, np.int64), one(price), one(price + 1),
                       one(price - 1), one(price), one(10.0), one(np.nan), one(3, np.int64), closed,
                       None if not closed else np.zeros(1, bool))


def write(live: RedisLive, price: float, token: int = TOK) -> None:
    live.write([batch("1m", price, False, token, 1_700_000_100)], [batch("1m", price, True, token)],
               {token: {"writer": price}})


def stored(r, prefix: str, token: int = TOK) -> tuple[float | None, list[float], dict | None]:
    h = r.hgetall(f"{prefix}{{{token}}}:forming:1m")
    closes = [float(f[b"close"]) for _id, f in r.xrange(f"{prefix}{{{token}}}:closed:1m")]
    st = r.get(f"{prefix}{{{token}}}:state")
    return (float(h[b"close"]) if h else None), closes, (json.loads(st) if st else None)


def expire_now(k: LeaseKeeper, r, token: int = TOK) -> None:
    """As if the holder stalled past the TTL: no renewal, the lease gone."""
    k.stop(release=False)
    r.delete(lease_key(k.prefix, token))


# ---------------------------------------------------------------------- unit: lease.py
def test_each_acquisition_gets_a_newer_generation(r, prefix):
    a = LeaseKeeper(r, prefix, ttl=5)
    b = LeaseKeeper(r, prefix, ttl=5)
    try:
        assert a.acquire([TOK]) == ([TOK], {})
        assert a.gens[TOK] == 1 and int(r.get(generation_key(prefix, TOK))) == 1
        assert a.acquire([TOK]) == ([TOK], {}) and a.gens[TOK] == 1  # ours already: same generation
        got, held = b.acquire([TOK])
        assert got == [] and held == {TOK: a.owner}
        a.release([TOK])
        assert b.acquire([TOK]) == ([TOK], {}) and b.gens[TOK] == 2
    finally:
        a.stop()
        b.stop()


def test_write_with_an_older_generation_is_refused(r, prefix):
    """The Lua write script compares the writer's generation with the lease's: a stale writer's
    late batch (forming, closed, state) changes nothing; the successor's goes through."""
    old, new = RedisLive(r, prefix=prefix), RedisLive(r, prefix=prefix)
    a = LeaseKeeper(r, prefix, ttl=5)
    b = LeaseKeeper(r, prefix, ttl=5)
    old.set_fence(a)
    new.set_fence(b)
    try:
        a.acquire([TOK])
        write(old, 100.0)
        assert stored(r, prefix) == (100.0, [100.0], {"writer": 100.0})
        expire_now(a, r)
        assert b.acquire([TOK])[0] == [TOK] and b.gens[TOK] == 2
        write(new, 200.0)
        write(old, 111.0)  # the stale writer wakes up and writes before it renews
        assert old.fenced == 1 and new.fenced == 0
        assert stored(r, prefix) == (200.0, [100.0, 200.0], {"writer": 200.0})
        # a writer without a fence (a replay, no lease) is not refused
        plain = RedisLive(r, prefix=prefix)
        write(plain, 300.0)
        assert stored(r, prefix)[0] == 300.0
    finally:
        a.stop()
        b.stop()


def test_one_round_trip_per_fenced_write(prefix):
    from test_redis_live import CountingConnection

    client = redis.Redis(connection_pool=redis.ConnectionPool(host="127.0.0.1", port=6379,
                                                              connection_class=CountingConnection))
    k = LeaseKeeper(client, prefix, ttl=5)
    live = RedisLive(client, prefix=prefix)
    live.set_fence(k)
    try:
        k.acquire([TOK])
        write(live, 1.0)  # loads the script
        CountingConnection.sends = 0
        write(live, 2.0)
        assert CountingConnection.sends == 1
    finally:
        k.stop()
        client.close()


class RedisCluster:
    """One server under the class name LeaseKeeper looks for: its one-call-per-instrument path."""

    def __init__(self, client) -> None:
        self.client = client

    def __getattr__(self, name):
        return getattr(self.client, name)


@pytest.mark.parametrize("shape", ["server", "cluster"])
def test_renewal_reports_a_lease_taken_meanwhile_and_takes_back_one_nobody_took(r, prefix, shape):
    """Renewal on one server (the instruments packed into one argument) and on a cluster (a key
    pair per instrument): renewed, taken back (expired, nobody took it since), lost (held by another
    writer, or expired and taken and given back meanwhile: a newer generation)."""
    lost: list[list[int]] = []
    a = LeaseKeeper(r if shape == "server" else RedisCluster(r), prefix, ttl=5, on_lost=lost.append)
    b = LeaseKeeper(r, prefix, ttl=5)
    try:
        a.acquire([TOK, TOK + 1, TOK + 2, TOK + 3])
        expire_now(a, r, TOK)
        r.delete(lease_key(prefix, TOK + 1))  # expired, but nobody took it
        r.delete(lease_key(prefix, TOK + 2))  # expired, taken and given back: generation 2
        b.acquire([TOK, TOK + 2])
        b.release([TOK + 2])
        assert a.renew() == [TOK, TOK + 2] and lost == [[TOK, TOK + 2]]
        assert a.tokens == {TOK + 1, TOK + 3} and a.gens[TOK + 1] == 1  # taken back, same generation
        assert r.get(lease_key(prefix, TOK + 1)).decode() == a.owner
        assert r.pttl(lease_key(prefix, TOK + 3)) > 4000  # renewed
        assert r.get(lease_key(prefix, TOK + 2)) is None  # not taken back over the newer generation
        assert a.gens[TOK] == 1  # kept: its writes of TOK stay refused
        assert a.renew() == []
    finally:
        a.stop()
        b.stop()


def test_background_renewal_stands_the_writer_down_within_one_period(r, prefix):
    """The renewal thread finds the lease taken: on_lost fires within one renew period."""
    fired = threading.Event()
    a = LeaseKeeper(r, prefix, ttl=0.6, on_lost=lambda toks: fired.set())
    b = LeaseKeeper(r, prefix, ttl=5)
    try:
        a.acquire([TOK])
        r.set(lease_key(prefix, TOK), b.owner, px=5000)  # as if it expired and b took it...
        r.incr(generation_key(prefix, TOK))  # ...with the next generation
        assert fired.wait(0.6 / 3 + 1.0), "no stand-down within one renew period"
        assert a.tokens == set()
    finally:
        a.stop()
        b.stop()


@pytest.fixture
def sim():
    from kiteohlc_lab.feeds.simulator import KiteSimulator

    s = KiteSimulator(tick_interval=0.25).start()
    yield s
    s.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_server(port: int, tmp: Path) -> subprocess.Popen:
    p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", str(tmp)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    c = redis.Redis(port=port, socket_connect_timeout=0.2)
    try:
        wait_for(lambda: _pings(c), 10, "redis-server to answer")
    finally:
        c.close()
    return p


def _pings(c) -> bool:
    try:
        return bool(c.ping())
    except redis.ConnectionError:
        return False


@pytest.mark.integration
@needs(shutil.which("redis-server"), "needs the redis-server binary")
def test_stream_started_while_redis_is_down_takes_its_leases_when_it_returns(sim, tmp_path):
    """Manager on a Redis that is down: the stream runs (live writes spool), the keeper retries;
    when Redis answers the leases are ours (generation 1) and the spooled state reaches Redis."""
    from kiteohlc_lab.config import KiteOHLC
    from kiteohlc_lab.runtime import Manager

    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    m = Manager(KiteOHLC(redis_url=url, redis_prefix="kohlc:", data_dir=str(tmp_path / "d"), grace=1.0,
                         ticker_url=sim.ticker_url, api_url=sim.api_url))
    m.lease_ttl = 0.9
    server = None
    try:
        info = m.start("NIFTY", ["10s"], source="sim")
        assert info.source == "sim"
        k = m.leases
        assert k is not None and k.pending == {256265} and k.tokens == set()
        wait_for(lambda: m.status() and m.status()[0]["ticks"] > 0, 20, "ticks while Redis is down")
        server = _redis_server(port, tmp_path)
        wait_for(lambda: k.tokens == {256265}, 10, "the lease taken when Redis answers")
        c = redis.Redis(port=port)
        try:
            assert c.get("kohlc:{256265}:lease").decode() == k.owner
            assert int(c.get("kohlc:{256265}:lease:gen")) == 1
            wait_for(lambda: c.get("kohlc:{256265}:state") is not None, 10, "the live state written")
            assert m.stores()[0].fenced == 0
        finally:
            c.close()
    finally:
        m.shutdown()
        if server is not None:
            server.terminate()
            server.wait(10)


def test_stand_down_stops_the_stream_and_says_so_once(sim, r, prefix, tmp_path):
    """A notebook Manager that loses its lease: the own stream stops (its connection closes), one
    line in the Manager's error log."""
    from kiteohlc_lab.config import KiteOHLC
    from kiteohlc_lab.runtime import Manager

    m = Manager(KiteOHLC(redis_url=REDIS_URL, redis_prefix=prefix, data_dir=str(tmp_path / "d"),
                         ticker_url=sim.ticker_url, api_url=sim.api_url))
    m.lease_ttl = 0.9
    try:
        m.start("NIFTY", ["10s"], source="sim")
        wait_for(lambda: sim.connections == 1, 20, "the stream to connect")
        k = m.leases
        assert k.tokens == {256265}
        # another writer takes over (as after a stall past the TTL): newer generation
        r.set(lease_key(prefix, 256265), "elsewhere:1:x", px=10_000)
        r.incr(generation_key(prefix, 256265))
        wait_for(lambda: any(src == "lease" for src, _ in m.errors), 0.9 / 3 + 3, "the stand-down")
        lines = [msg for src, msg in m.errors if src == "lease"]
        assert len(lines) == 1 and "lost the lease of NIFTY" in lines[0], lines
        wait_for(lambda: sim.connections == 0, 10, "the connection to close")
        assert not any(s.alive for s in m.streams.values())
        before = r.get(f"{prefix}{{256265}}:state")
        m.stores()[0].write([batch("10s", 1.0, False, 256265)], [], {256265: {"late": 1}})
        assert r.get(f"{prefix}{{256265}}:state") == before  # a late write is refused
    finally:
        m.shutdown()


# ---------------------------------------------------------------------- two collectors, SIGSTOP
NIFTY, RELIANCE = 256265, 738561
TFS = ["10s", "1m"]
TEN = 10 * 10**9


def _collector(sim, prefix: str, data_dir: Path, err: Path, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kiteohlc_lab.cli", "collect", "NIFTY,RELIANCE", *TFS,
           "--source", "sim", "--ticker-url", sim.ticker_url, "--api-url", sim.api_url,
           "--grace", "1", "--heartbeat", "0.5", "--lease-ttl", "1.5",
           "--redis-url", REDIS_URL, "--redis-prefix", prefix, "--data-dir", str(data_dir)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err.open("w"))


def _closed_entries(r, prefix: str, tok: int, tf: str) -> list[tuple[int, int, bool]]:
    """(stream id ms, start, amended) of every closed-candle entry in Redis."""
    return [(int(i.split(b"-")[0]), int(f[b"start"]), f.get(b"amended") == b"1")
            for i, f in r.xrange(f"{prefix}{{{tok}}}:closed:{tf}")]


@pytest.mark.slow
@pytest.mark.integration
@needs(redis_available(), "needs Redis at 127.0.0.1:6379")
def test_collector_frozen_past_its_lease_stands_down_when_thawed(r, prefix, tmp_path):
    """c1 streams, c2 stands by; c1 is frozen (SIGSTOP) past the lease TTL: c2 takes over (newer
    generation). c1 thawed (SIGCONT) stands down within one renew period (one log line, its Kite
    connection closed, standby again); the store holds one writer's candles: no start twice, and an
    attached reader shows every candle the market made since the takeover."""
    import os

    from kiteohlc_lab.collector import list_collectors
    from kiteohlc_lab.config import KiteOHLC
    from oracle import Oracle
    from kiteohlc_lab.feeds.simulator import KiteSimulator
    from kiteohlc_lab.runtime import Manager

    token = "sekrit-access-token-4242"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KITEOHLC_", "KITE_"))}
    env.update(KITE_API_KEY="testkey", KITE_ACCESS_TOKEN=token,
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    sim = KiteSimulator(tick_interval=0.5, api_key="testkey", access_token=token).start()
    cfg = KiteOHLC(redis_url=REDIS_URL, redis_prefix=prefix, data_dir=str(tmp_path / "c1"))
    err1, err2 = tmp_path / "c1.stderr", tmp_path / "c2.stderr"
    procs: list[subprocess.Popen] = []
    m = Manager(KiteOHLC(grace=1.0, redis_url=REDIS_URL, redis_prefix=prefix,
                         data_dir=str(tmp_path / "reader")))
    gen = f"{prefix}{{{NIFTY}}}:lease:gen"
    lease = f"{prefix}{{{NIFTY}}}:lease"
    try:
        c1 = _collector(sim, prefix, tmp_path / "c1", err1, env)
        procs.append(c1)
        wait_for(lambda: sim.connections == 1, 30, "the first collector to connect")
        c2 = _collector(sim, prefix, tmp_path / "c2", err2, env)
        procs.append(c2)
        wait_for(lambda: [e for e in list_collectors(cfg) if e["pid"] == c2.pid and e["waiting"]], 30,
                 "the second collector to stand by")
        assert int(r.get(gen)) == 1 and f":{c1.pid}:" in r.get(lease).decode()
        assert m.start("NIFTY,RELIANCE", TFS, source="redis").source == "redis"

        c1.send_signal(signal.SIGSTOP)  # stalled: no renewal, its socket stays open
        wait_for(lambda: f":{c2.pid}:" in (r.get(lease) or b"").decode(), 20,
                 "the standby to take the lease once the TTL passed")
        assert int(r.get(gen)) == 2
        wait_for(lambda: sim.total_connections >= 2, 20, "the standby to connect")
        took_over = time.time_ns()
        n = len(sim.sent())
        wait_for(lambda: len(sim.sent()) >= n + 8, 20, "ticks to both (one frozen)")

        c1.send_signal(signal.SIGCONT)
        thawed = time.monotonic()
        wait_for(lambda: "lost the lease of NIFTY, RELIANCE" in err1.read_text(), 10,
                 "the thawed collector to stand down")
        stood_down = time.monotonic() - thawed
        wait_for(lambda: sim.connections == 1, 10, "the thawed collector to close its connection")
        assert c1.poll() is None, "the thawed collector exited instead of standing by"
        wait_for(lambda: [e for e in list_collectors(cfg)
                          if e["pid"] == c1.pid and e["waiting"] == ["NIFTY", "RELIANCE"]
                          and not e["symbols"]], 10, "the thawed collector to stand by")
        assert f":{c2.pid}:" in r.get(lease).decode() and int(r.get(gen)) == 2
        lines = [ln for ln in err1.read_text().splitlines() if "lost the lease" in ln]
        assert len(lines) == 1, lines

        # the market goes on; c2 alone writes: every candle from the first whole 10 s candle after
        # the takeover, as the reference builds it from every tick sent, and no start twice
        cutoff = (took_over // TEN + 2) * TEN
        wait_for(lambda: int(sim.sent().ts.max()) >= cutoff + 2 * TEN, 40, "two more 10 s candles")
        sim.pause()

        def check() -> str:
            ref = Oracle(TFS, grace=1.0, live=True)
            sent = sim.sent()
            ref.feed(sent.take(np.isin(sent.token, [NIFTY, RELIANCE])))
            exp = {}
            for tok in (NIFTY, RELIANCE):
                want = ref.frame(tok, "10s", closed_only=False)
                for s, row in zip(want.index.as_unit("ns").asi8.tolist(),
                                  want[["open", "high", "low", "close", "volume"]].to_numpy().tolist()):
                    if s >= cutoff:
                        exp[(tok, s)] = tuple(row)
            problems = []
            for tok in (NIFTY, RELIANCE):
                df = m.candles(tok, "10s")
                starts = df.index.as_unit("ns").asi8.tolist()
                if len(set(starts)) != len(starts):
                    problems.append(f"{tok}: duplicate starts in the reader")
                rows = dict(zip(starts, df[["open", "high", "low", "close", "volume"]].to_numpy().tolist()))
                for (t, s), e in exp.items():
                    if t == tok and (s not in rows or not np.allclose(rows[s], e)):
                        problems.append(f"{tok} {s}: expected {e} observed {rows.get(s)}")
            return "\n".join(problems)

        try:
            wait_for(lambda: check() == "", 15, "the reader to show every candle since the takeover")
        except AssertionError:
            raise AssertionError(check()) from None
        for tok in (NIFTY, RELIANCE):
            for tf in TFS:
                starts = [s for _id, s, amended in _closed_entries(r, prefix, tok, tf) if not amended]
                twice = sorted({s for s in starts if starts.count(s) > 1})
                # after the takeover one writer alone closes candles; the candle forming across the
                # freeze may be published by both (the stores upsert it by start: the reader above
                # shows it once); seen once in four runs on a loaded machine
                size = (10 if tf == "10s" else 60) * 10**9
                boundary = (took_over // size + 1) * size
                assert len(twice) <= 1 and all(s < boundary for s in twice), \
                    f"{tok} {tf}: candles closed by two writers after the takeover: {twice}"
        print(f"stood down {stood_down:.2f} s after SIGCONT; refused: "
              f"{[ln for ln in err1.read_text().splitlines() if 'refused a stale write' in ln]}")
        assert stood_down < 0.5 + 2.0  # one renew period (ttl / 3), plus a loaded machine's slack
        sim.resume()
        for p in (c1, c2):
            p.send_signal(signal.SIGTERM)
        assert c1.wait(10) == 0 and c2.wait(10) == 0
    finally:
        m.shutdown()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait(10)
        sim.stop()
