"""The bounded spool and the Resilient wrapper: a store that is down or goes away mid-stream."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
import uuid

import numpy as np
import pytest

from kiteohlc_lab.errors import StoreError
from kiteohlc_lab.stores.spool import Resilient, Spool, decode_batch, encode_batch
from conftest import needs
from test_stores_history import MIN, T0, make_batch


def test_spool_is_fifo_bounded_and_persistent(tmp_path):
    path = tmp_path / "spool" / "q.sqlite3"
    sp = Spool(path, max_entries=3)
    for i in range(5):
        sp.push("h", {"i": i})
    assert len(sp) == 3 and sp.dropped == 2
    assert [p["i"] for _, _, p in sp.peek(10)] == [2, 3, 4]
    first_id = sp.peek(1)[0][0]
    sp.remove(first_id)
    sp.close()
    sp2 = Spool(path, max_entries=3)
    assert len(sp2) == 2 and sp2.dropped == 2
    assert [p["i"] for _, _, p in sp2.peek(10)] == [3, 4]
    sp2.close()


def test_spool_file_is_made_by_the_first_push_and_an_old_one_is_read_at_once(tmp_path):
    """A store that never goes down leaves no spool file (none is opened for nothing at every
    start); one an earlier process left is opened when the spool is made, so its entries replay."""
    path = tmp_path / "spool" / "q.sqlite3"
    sp = Spool(path)
    assert not path.parent.exists() and len(sp) == 0 and sp.peek() == [] and sp.dropped == 0
    sp.remove(10)  # nothing to remove: no file made for it
    assert not path.exists()
    sp.push("h", {"i": 1})
    assert path.exists() and len(sp) == 1
    sp.close()
    with pytest.raises(StoreError, match="closed"):
        sp.push("h", {"i": 2})
    left = Spool(path)
    assert len(left) == 1 and [p for _, _, p in left.peek()] == [{"i": 1}]
    left.close()
    never = Spool(tmp_path / "never.sqlite3")
    never.close()  # closing one that never opened a file
    assert not (tmp_path / "never.sqlite3").exists()


def test_spool_byte_bound(tmp_path):
    sp = Spool(tmp_path / "q.sqlite3", max_bytes=100)
    for i in range(10):
        sp.push("h", {"pad": "x" * 30, "i": i})
    assert sp.nbytes <= 100 and sp.dropped == 10 - len(sp)
    assert sp.peek(10)[-1][2]["i"] == 9
    sp.close()


def test_batch_encoding_round_trips_nan_and_amended():
    b = make_batch(n=3, oi=True)
    b.oi[0] = np.nan
    b.amended = np.array([False, True, False])
    d = decode_batch(encode_batch(b))
    np.testing.assert_array_equal(d.start, b.start)
    np.testing.assert_array_equal(d.oi, b.oi)
    assert d.amended.tolist() == [False, True, False] and d.tf == "1m" and d.closed


class FlakyHistory:
    name = "flaky"

    def __init__(self):
        self.up = True
        self.calls = 0
        self.rows: dict[int, float] = {}

    def write(self, batch):
        self.calls += 1
        if not self.up:
            raise ConnectionRefusedError("server down")
        self.rows.update(zip(batch.start.tolist(), batch.close.tolist()))

    def read(self, *a, **k):
        if not self.up:
            raise ConnectionRefusedError("server down")
        return self.rows

    def close(self):
        pass


def test_resilient_spools_warns_once_probes_rarely_and_replays_in_order(tmp_path, caplog):
    now = [0.0]
    store = FlakyHistory()
    res = Resilient(store, Spool(tmp_path / "s.sqlite3"), retry_interval=1.5, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="kiteohlc_lab.stores")
    res.write(make_batch(n=1, base=1.0))
    store.up = False
    for k in range(1, 11):  # ten writes while down, same start rewritten: order matters
        res.write(make_batch(n=1, base=float(k)))
    assert store.calls == 2  # one failed attempt, then no probing within the interval
    assert res.health() == dict(name="flaky", ok=False, error="ConnectionRefusedError: server down",
                                spooled=10, dropped=0)
    now[0] = 2.0
    res.write(make_batch(n=1, base=11.0))  # probe fails: still down, still one warning
    assert store.calls == 3 and len(res.spool) == 11
    with pytest.raises(StoreError, match="flaky store is unreachable"):
        res.read(1, "1m")
    store.up = True
    res.write(make_batch(n=1, base=12.0))  # within interval: spooled, not tried
    assert len(res.spool) == 12
    now[0] = 4.0
    res.write(make_batch(n=1, base=13.0))
    assert len(res.spool) == 0 and res.health()["ok"]
    assert store.rows[T0] == make_batch(n=1, base=13.0).close[0]  # the last write won
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings
    assert "unreachable" in warnings[0] and "reachable again; replayed 12" in warnings[1]


def test_resilient_replays_a_previous_sessions_spool(tmp_path):
    path = tmp_path / "s.sqlite3"
    store = FlakyHistory()
    store.up = False
    res = Resilient(store, Spool(path))
    res.write(make_batch(n=2))
    res.spool.close()
    store.up = True
    res2 = Resilient(store, Spool(path))
    assert res2.flush() and store.rows.keys() == {T0, T0 + MIN}


# -- a real redis-server killed and restarted mid-stream ----------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_redis(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


@pytest.mark.integration
@needs(shutil.which("redis-server"), "redis-server is not installed")
def test_redis_killed_mid_stream_nothing_lost(tmp_path, caplog):
    from kiteohlc_lab.stores.redis_live import RedisLive

    port = _free_port()
    proc = _start_redis(port)
    live = RedisLive(f"redis://127.0.0.1:{port}/0", prefix=f"kohlc-test-{uuid.uuid4().hex[:8]}:")
    res = Resilient(live, Spool(tmp_path / "spool" / "live.sqlite3"), retry_interval=0.3)
    caplog.set_level(logging.WARNING, logger="kiteohlc_lab.stores")
    try:
        written = []

        def step(k):
            f = make_batch(tf="1m", tokens=(11, 22), n=1, t0=T0 + (k + 1) * MIN, base=100.0 + k)
            f.closed = False
            c = make_batch(tf="1m", tokens=(11, 22), n=1, t0=T0 + k * MIN, base=200.0 + k)
            res.write([f], [c], {11: {"k": k}, 22: {"k": k}})
            written.append((f, c))

        for k in range(5):
            step(k)
        assert len(res.spool) == 0
        proc.kill()
        proc.wait()
        for k in range(5, 25):
            step(k)  # must not raise
        assert len(res.spool) >= 19 and not res.health()["ok"]
        proc = _start_redis(port)
        deadline = time.time() + 10
        k = 25
        while len(res.spool) and time.time() < deadline:
            step(k)
            k += 1
            time.sleep(0.05)
        assert len(res.spool) == 0 and res.health()["ok"]
        # the new server started empty: everything it holds came from the replay after the restart
        assert live.load_states([11, 22]) == {11: {"k": k - 1}, 22: {"k": k - 1}}
        last_f = written[-1][0]
        assert live.forming(22, "1m").close == last_f.for_token(22).close[0]
        rc = live.recent_closed(11, "1m", 1000)
        exp = [c.for_token(11).start[0] for _, c in written[5:]]
        assert rc.start.tolist() == exp
        # the store's own messages (another test's Kite client retrying in this process logs too)
        msgs = [r.getMessage() for r in caplog.records if r.name.startswith("kiteohlc_lab.stores")]
        assert len(msgs) == 2 and "unreachable" in msgs[0] and "reachable again" in msgs[1]
    finally:
        res.close()
        proc.kill()
        proc.wait()
