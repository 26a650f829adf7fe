"""Leases (one writer per instrument) and attached readers, against the Redis at 127.0.0.1:6379.

A "collector" here is a RedisLive written directly by the test, with a lease held under another
owner, so these run in seconds; tests/test_collector.py does the same with real processes.
"""

from __future__ import annotations

import math
import shutil
import time
import uuid

import numpy as np
import pytest

from kiteohlc_lab.config import KiteOHLC
from kiteohlc_lab.core.candles import CandleBatch
from kiteohlc_lab.lease import LeaseHeld, LeaseKeeper, owner_alive
from kiteohlc_lab.stores.redis_live import RedisLive

from conftest import needs, redis_available
from test_redis_cluster import cluster  # noqa: F401 - module-scoped fixture: a 3-master cluster

pytestmark = needs(redis_available(), "needs Redis at 127.0.0.1:6379")

URL = "redis://127.0.0.1:6379/0"
NIFTY = 256265
OTHER = "otherhost:4242:cafe0001"  # another machine: alive as far as we can tell
M0 = 1_700_000_040 * 1_000_000_000  # a minute start (epoch ns)
MIN = 60 * 1_000_000_000


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def prefix():
    import redis

    p = f"test-{uuid.uuid4().hex[:8]}:"
    yield p
    r = redis.Redis.from_url(URL)
    RedisLive(r, prefix=p).delete_all()  # SCAN + UNLINK, never FLUSHALL
    r.close()


@pytest.fixture
def client():
    import redis

    r = redis.Redis.from_url(URL)
    yield r
    r.close()


def batch(tf: str, starts, closes, closed: bool = True, token: int = NIFTY) -> CandleBatch:
    n = len(starts)
    c = np.asarray(closes, float)
    return CandleBatch(tf, np.full(n, token, np.int64), np.asarray(starts, np.int64), c - 1, c + 2,
                       c - 2, c, np.full(n, 10.0), np.full(n, np.nan), np.full(n, 3, np.int64), closed,
                       np.zeros(n, bool) if closed else None)


# ---------------------------------------------------------------------- leases
def test_lease_acquire_held_renew_release(client, prefix):
    a = LeaseKeeper(client, prefix, ttl=0.6)
    b = LeaseKeeper(client, prefix, ttl=0.6)
    try:
        assert a.acquire([1, 2]) == ([1, 2], {})
        got, held = b.acquire([2, 3])
        assert got == [3] and held == {2: a.owner}
        assert a.acquire([1]) == ([1], {})  # ours already: renewed, not refused
        time.sleep(1.0)  # > ttl: only the renewal thread keeps them
        assert a.holders([1, 2, 3]) == {1: a.owner, 2: a.owner, 3: b.owner}
        b.release([2])  # not b's: compare-and-delete leaves it
        assert a.holders([2]) == {2: a.owner}
        a.release([2])
        assert a.holders([2]) == {2: None}
        assert 2 not in a.tokens
    finally:
        a.stop()
        b.stop()
    assert a.holders([1, 3]) == {1: None, 3: None}


def test_a_lease_given_back_stays_free_while_renewals_run(prefix):
    """release() waits for a renewal in flight: a renewal that had read the leases before the
    release would otherwise set the lease again (for a TTL) right after it was given back. The
    renewal is held between its reading of the leases and its script by the client it sends with
    (a real client: its pipeline() waits at a gate on the renewing thread)."""
    import threading

    import redis

    at_gate, gate = threading.Event(), threading.Event()

    class Gated(redis.Redis):
        def pipeline(self, *args, **kwargs):
            if threading.current_thread().name == "renewing":
                at_gate.set()
                gate.wait(10)
            return super().pipeline(*args, **kwargs)

    r = Gated(host="127.0.0.1", port=6379)
    a, other = LeaseKeeper(r, prefix, ttl=5.0), LeaseKeeper(r, prefix, ttl=5.0)
    try:
        assert a.acquire([1, 2]) == ([1, 2], {})
        renewing = threading.Thread(target=a.renew, name="renewing", daemon=True)
        renewing.start()
        assert at_gate.wait(10)  # the renewal has its list of leases (1 and 2) and waits to send
        releasing = threading.Thread(target=a.release, args=([2],), daemon=True)
        releasing.start()
        releasing.join(0.5)
        waited = releasing.is_alive()  # the release waits for the renewal in flight
        gate.set()
        renewing.join(10)
        releasing.join(10)
        assert a.holders([2]) == {2: None} and a.holders([1]) == {1: a.owner}
        assert waited
        assert other.acquire([2]) == ([2], {})  # free for another writer at once
    finally:
        gate.set()
        a.stop()
        other.stop()
        r.close()


def test_lease_expires_when_holder_stops_renewing(client, prefix):
    a = LeaseKeeper(client, prefix, ttl=0.3)
    b = LeaseKeeper(client, prefix, ttl=0.3)
    try:
        a.acquire([7])
        a.stop(release=False)  # "dies": no renewal, no release
        assert b.acquire([7])[1] == {7: a.owner}
        wait_for(lambda: b.acquire([7])[0] == [7], 2, "the dead holder's lease to expire")
        # the old holder can neither renew nor release the new holder's lease
        assert a.renew() == [7] and a.tokens == set()  # reported lost, not renewed
        a.tokens.add(7)
        a.release([7])
        assert b.holders([7]) == {7: b.owner}
    finally:
        b.stop()


def test_dead_local_owner_is_broken_at_once(client, prefix):
    import socket

    dead = f"{socket.gethostname()}:{2 ** 22 + 777}:deadbeef"
    assert not owner_alive(dead) and owner_alive(OTHER)
    client.set(f"{prefix}{{9}}:lease", dead, px=60_000)
    k = LeaseKeeper(client, prefix, ttl=5)
    try:
        assert k.acquire([9]) == ([9], {})
    finally:
        k.stop()


def test_renewal_releases_unwanted_tokens(client, prefix):
    want = {1, 2}
    k = LeaseKeeper(client, prefix, ttl=5, wanted=lambda: want)
    try:
        k.acquire([1, 2])
        want.discard(2)
        k.renew()
        assert k.holders([1, 2]) == {1: k.owner, 2: None}
    finally:
        k.stop()


# ---------------------------------------------------------------------- attached readers
def fake_collector(prefix: str, tfs=("1m",)):
    """A RedisLive 'collector' holding NIFTY's lease under another owner."""
    from kiteohlc_lab.attach import publish_symbols
    from kiteohlc_lab.stores.redis_live import RedisLive

    live = RedisLive(URL, prefix=prefix)
    live.client.set(f"{prefix}{{{NIFTY}}}:lease", OTHER, px=60_000)
    publish_symbols(live, [("NIFTY", NIFTY)])
    return live


def manager(prefix: str, tmp_path):
    from kiteohlc_lab.runtime import Manager

    return Manager(KiteOHLC(redis_url=URL, redis_prefix=prefix, data_dir=str(tmp_path / "reader")))


def closes(m, tf="1m") -> list[float]:
    return m.candles("NIFTY", tf)["close"].tolist()


def test_auto_attaches_to_a_leased_instrument_and_follows(prefix, tmp_path):
    live = fake_collector(prefix)
    live.write([batch("1m", [M0 + 2 * MIN], [102.0], closed=False)],
               [batch("1m", [M0, M0 + MIN], [100.0, 101.0])], {})
    m = manager(prefix, tmp_path)
    seen = []
    try:
        info = m.start("NIFTY", "1m")  # no --source: NIFTY is leased by a live writer -> attach
        assert info.source == "redis" and "Attached" in info.message and "otherhost" in info.message
        assert not any(s.source.name in ("sim", "kite") for s in m.streams.values())
        wait_for(lambda: closes(m) == [100.0, 101.0, 102.0], 3, "history and forming")
        assert m.series("NIFTY", "1m").forming.start == M0 + 2 * MIN
        m.on_candle("NIFTY", "1m", seen.append)

        # the forming candle moves, then closes; a new one forms
        live.write([batch("1m", [M0 + 2 * MIN], [102.5], closed=False)], [], {})
        wait_for(lambda: closes(m) == [100.0, 101.0, 102.5], 3, "the forming update")
        live.write([batch("1m", [M0 + 3 * MIN], [103.0], closed=False)],
                   [batch("1m", [M0 + 2 * MIN], [102.7])], {})
        wait_for(lambda: closes(m) == [100.0, 101.0, 102.7, 103.0], 3, "the close")
        assert [c.close for c in seen] == [102.7]

        # an amended (or re-sent after a collector restart) candle replaces, never duplicates
        live.write([], [batch("1m", [M0 + 2 * MIN], [102.9])], {})
        wait_for(lambda: closes(m) == [100.0, 101.0, 102.9, 103.0], 3, "the amend")
        st = m.status()[0]
        assert st["source"] == "redis" and st["state"] == "running" and st["symbols"] == ["NIFTY"]
        assert OTHER in st["feed"]["writers"]
    finally:
        m.shutdown()
        live.close()


def test_source_redis_forces_attach_and_unknown_symbol_is_one_line(prefix, tmp_path):
    from kiteohlc_lab.errors import KiteOHLCError

    live = fake_collector(prefix)
    live.client.delete(f"{prefix}{{{NIFTY}}}:lease")  # nobody writes now: still followed when forced
    live.write([], [batch("1m", [M0], [100.0])], {})
    m = manager(prefix, tmp_path)
    try:
        info = m.start("NIFTY", ["1m"], source="redis")
        assert "no collector writing" in info.message
        wait_for(lambda: closes(m) == [100.0], 3, "the stored candle")
        wait_for(lambda: m.status()[0]["state"] == "no writer", 4, "the no-writer state")
        with pytest.raises(KiteOHLCError, match="ZZZNOPE"):
            m.start("ZZZNOPE", "1m", source="redis")
        # a second attach extends the running follower (one thread, one XREAD)
        info2 = m.start("NIFTY", ["5m"], source="redis")
        assert info2.name == info.name and len(m.streams) == 1
    finally:
        m.shutdown()
        live.close()


def test_own_feed_refuses_an_instrument_another_writer_holds(prefix, tmp_path):
    live = fake_collector(prefix)
    m = manager(prefix, tmp_path)
    try:
        with pytest.raises(LeaseHeld, match="NIFTY .*held by otherhost"):
            m.start("NIFTY", "1m", source="sim")  # forced own feed: never a second writer
        assert not m.streams
    finally:
        m.shutdown()
        live.close()


def test_own_feed_takes_and_gives_back_leases(prefix, tmp_path, client):
    m = manager(prefix, tmp_path)
    try:
        info = m.start("NIFTY", "1m")  # nobody streams NIFTY: own (built-in simulator) feed
        assert info.source == "sim"
        owner = client.get(f"{prefix}{{{NIFTY}}}:lease").decode()
        assert owner == m.leases.owner
        m.stop()
        assert client.get(f"{prefix}{{{NIFTY}}}:lease") is None
    finally:
        m.shutdown()


def test_forming_written_before_a_close_is_not_shown_after_it(prefix, tmp_path):
    from kiteohlc_lab.attach import AttachedStream

    live = fake_collector(prefix)

    class L:
        def __init__(self):
            self.closed, self.forming = [], []

        def on_closed(self, s, b):
            self.closed += [c for x in b for c in x]

        def on_forming(self, s, b):
            self.forming += [c for x in b for c in x]

        def on_error(self, s, msg):
            raise AssertionError(msg)

    lis = L()
    initial = []
    live.write([batch("1m", [M0 + MIN], [101.0], closed=False)], [batch("1m", [M0 + MIN], [101.0])], {})
    s = AttachedStream("t", live, [NIFTY], ["1m"], listener=lis, on_initial=initial.extend).start()
    try:
        # writers are checked after the initial load and after the loop's first forming read: once
        # they are known, the stale forming hash has been read (twice) and must have been dropped
        wait_for(lambda: s.writers, 3, "the follower's first pass (initial load, forming, writers)")
        assert [c.start for b in initial for c in b] == [M0 + MIN] and s.writers == {NIFTY: OTHER}
        assert lis.forming == []  # the forming hash still holds the candle closed since
        live.write([batch("1m", [M0 + 2 * MIN], [102.0], closed=False)], [], {})
        wait_for(lambda: [c.start for c in lis.forming] == [M0 + 2 * MIN], 3, "the new forming")
        assert not math.isnan(lis.forming[0].close)
    finally:
        s.stop()
        live.close()


@pytest.mark.integration
@needs(shutil.which("redis-server") and shutil.which("redis-cli"),
       "redis-server / redis-cli not installed")
def test_leases_and_attach_on_redis_cluster(cluster, tmp_path):
    """The same on a 3-master Redis Cluster: single-key scripts, no cross-slot XREAD."""
    url = cluster
    from kiteohlc_lab.attach import publish_symbols
    from kiteohlc_lab.runtime import Manager
    from kiteohlc_lab.stores.factory import open_stores

    live, _hist, _ = open_stores(url, "", str(tmp_path / "w"), prefix="cl:", resilient=False)
    a, b = LeaseKeeper(live.client, "cl:", ttl=2), LeaseKeeper(live.client, "cl:", ttl=2)
    try:
        assert a.acquire([1, 2, NIFTY]) == ([1, 2, NIFTY], {})
        assert b.acquire([2, 4]) == ([4], {2: a.owner})
        assert a.renew() == []
        b.release([2])
        assert a.holders([2]) == {2: a.owner}
    finally:
        a.stop()
        b.stop()
    live.client.set(f"cl:{{{NIFTY}}}:lease", OTHER, px=60_000)
    live.client.set(f"cl:{{{738561}}}:lease", OTHER, px=60_000)
    publish_symbols(live, [("NIFTY", NIFTY), ("RELIANCE", 738561)])
    live.write([], [batch("1m", [M0], [100.0]), batch("1m", [M0], [200.0], token=738561)], {})
    m = Manager(KiteOHLC(redis_url=url, redis_prefix="cl:", data_dir=str(tmp_path / "r")))
    try:
        assert m.start("NIFTY,RELIANCE", "1m").source == "redis"
        wait_for(lambda: closes(m) == [100.0], 3, "the stored candle")
        live.write([], [batch("1m", [M0 + MIN], [101.0]), batch("1m", [M0 + MIN], [201.0], token=738561)], {})
        wait_for(lambda: closes(m) == [100.0, 101.0], 3, "a new candle")
        wait_for(lambda: m.candles("RELIANCE", "1m")["close"].tolist() == [200.0, 201.0], 3, "RELIANCE")
    finally:
        m.shutdown()
