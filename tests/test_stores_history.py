"""Contract suite for HistoryStore implementations: SQLite, mongomock, and a real MongoDB when
KITEOHLC_TEST_MONGO_URI is set."""

from __future__ import annotations

import os
import threading
import uuid

import numpy as np
import pandas as pd
import pytest

from kiteohlc_lab.core.candles import CandleBatch, empty_frame
from kiteohlc_lab.core.timeframes import NS
from kiteohlc_lab.stores.base import HistoryStore

from conftest import need_import

T0 = 1_735_703_100 * NS  # 2025-01-01 09:15 IST
MIN = 60 * NS


def make_batch(tf="1m", tokens=(256265,), n=5, t0=T0, step=MIN, base=100.0, oi=False):
    tok = np.repeat(np.array(tokens, np.int64), n)
    start = np.tile(t0 + np.arange(n, dtype=np.int64) * step, len(tokens))
    m = len(tok)
    rng = np.random.default_rng(int(base))
    o = base + rng.random(m)
    c = base + rng.random(m)
    h = np.maximum(o, c) + 1.0
    lo = np.minimum(o, c) - 1.0
    vol = rng.integers(1, 10_000, m).astype(np.float64)
    oi_arr = rng.integers(1, 1000, m).astype(np.float64) if oi else np.full(m, np.nan)
    return CandleBatch(tf, tok, start, o, h, lo, c, vol, oi_arr, np.ones(m, np.int64))


def _sqlite(tmp_path):
    from kiteohlc_lab.stores.sqlite import SQLiteHistory

    return SQLiteHistory(tmp_path / "h" / "history.sqlite3")


def _mongomock(tmp_path):
    mongomock = need_import("mongomock")
    from kiteohlc_lab.stores.mongo import MongoHistory

    return MongoHistory(mongomock.MongoClient(), db="kiteohlc_test")


def _mongo_real(tmp_path):
    uri = os.environ.get("KITEOHLC_TEST_MONGO_URI")
    if not uri:
        pytest.skip("set KITEOHLC_TEST_MONGO_URI to run the contract suite against a real MongoDB")
    from kiteohlc_lab.stores.mongo import MongoHistory

    store = MongoHistory(uri, db="kiteohlc_test", collection=f"candles_{uuid.uuid4().hex[:12]}")
    store._cleanup = lambda: store._coll.drop()  # type: ignore[attr-defined]
    return store


@pytest.fixture(params=[_sqlite, _mongomock, pytest.param(_mongo_real, marks=pytest.mark.mongo)],
                ids=["sqlite", "mongomock", "mongo"])
def store(request, tmp_path):
    s = request.param(tmp_path)
    yield s
    cleanup = getattr(s, "_cleanup", None)
    if cleanup:
        cleanup()
    s.close()


def test_satisfies_protocol(store):
    assert isinstance(store, HistoryStore)


def test_roundtrip_values_and_public_shape(store):
    b = make_batch(n=10)
    store.write(b)
    df = store.read(256265, "1m")
    assert list(df.columns) == ["open", "high", "low", "close", "volume"]
    assert df.index.name == "date" and str(df.index.tz) == "Asia/Kolkata"
    assert df.index[0] == pd.Timestamp("2025-01-01 09:15", tz="Asia/Kolkata")
    pd.testing.assert_frame_equal(df, b.to_frame())


def test_upsert_is_idempotent_and_last_write_wins(store):
    store.write(make_batch(n=3, base=100.0))
    store.write(make_batch(n=3, base=100.0))
    second = make_batch(n=3, base=200.0)
    store.write(second)
    df = store.read(256265, "1m")
    assert len(df) == 3
    pd.testing.assert_frame_equal(df, second.to_frame())


def test_a_candle_and_its_amendment_in_one_batch_the_later_wins(store):
    """The history writer merges what queued into one batch per timeframe: a candle and its
    amended version can arrive together, in that order."""
    first = make_batch(n=400, base=100.0)
    amended = make_batch(n=400, base=300.0)
    both = CandleBatch.concat([first, amended])
    store.write(both)
    pd.testing.assert_frame_equal(store.read(256265, "1m"), amended.to_frame())


def test_range_read_is_start_inclusive_end_exclusive(store):
    store.write(make_batch(n=10))
    df = store.read(256265, "1m", start_ns=T0 + 2 * MIN, end_ns=T0 + 5 * MIN)
    assert [int(x) for x in df.index.asi8] == [T0 + k * MIN for k in (2, 3, 4)]
    assert len(store.read(256265, "1m", start_ns=T0 + 8 * MIN)) == 2
    assert len(store.read(256265, "1m", end_ns=T0 + MIN)) == 1


def test_keys_separate_token_and_timeframe(store):
    store.write(make_batch(tokens=(1, 2), n=4))
    store.write(make_batch(tf="5m", tokens=(1,), n=2, step=5 * MIN, base=300.0))
    assert len(store.read(1, "1m")) == 4
    assert len(store.read(2, "1m")) == 4
    assert len(store.read(1, "5m")) == 2
    assert store.last_start(1, "5m") == T0 + 5 * MIN
    assert store.last_start(1, "1m") == T0 + 3 * MIN


def test_empty_read_is_the_empty_public_frame(store):
    df = store.read(999, "1m")
    pd.testing.assert_frame_equal(df, empty_frame())
    assert str(df.index.tz) == "Asia/Kolkata"
    assert all(dt == np.float64 for dt in df.dtypes)
    assert store.last_start(999, "1m") is None
    store.write(CandleBatch.empty("1m"))  # no-op


def test_oi_column_only_when_present(store):
    store.write(make_batch(tokens=(1,), oi=True))
    store.write(make_batch(tokens=(2,), oi=False))
    with_oi = store.read(1, "1m")
    assert "oi" in with_oi.columns and not with_oi["oi"].isna().any()
    assert "oi" not in store.read(2, "1m").columns


def test_nan_volume_round_trips(store):
    b = make_batch(n=3)
    b.volume[1] = np.nan
    store.write(b)
    df = store.read(256265, "1m")
    assert np.isnan(df["volume"].iloc[1]) and df["volume"].iloc[0] == b.volume[0]


def test_out_of_order_writes_read_sorted(store):
    b = make_batch(n=20)
    order = np.random.default_rng(1).permutation(20)
    store.write(b.select(order[:10]))
    store.write(b.select(order[10:]))
    df = store.read(256265, "1m")
    assert df.index.is_monotonic_increasing
    pd.testing.assert_frame_equal(df, b.to_frame())


def test_large_batch(store):
    b = make_batch(tokens=(1, 2, 3, 4), n=6000)  # 24k rows, several bulk chunks
    store.write(b)
    df = store.read(3, "1m")
    assert len(df) == 6000
    pd.testing.assert_frame_equal(df, b.for_token(3).to_frame())


def test_reads_from_another_thread_while_writing(store):
    errors: list[BaseException] = []

    def writer():
        try:
            for k in range(20):
                store.write(make_batch(n=50, t0=T0 + k * 50 * MIN))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    th = threading.Thread(target=writer)
    th.start()
    while th.is_alive():
        store.read(256265, "1m")
    th.join()
    assert not errors
    assert len(store.read(256265, "1m")) == 1000


def test_sqlite_persists_across_reopen(tmp_path):
    from kiteohlc_lab.stores.sqlite import SQLiteHistory

    path = tmp_path / "history.sqlite3"
    s = SQLiteHistory(path)
    s.write(make_batch(n=4))
    s.close()
    s2 = SQLiteHistory(path)
    assert len(s2.read(256265, "1m")) == 4
    assert s2._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s2.close()


def test_sqlite_read_many_equals_reads(tmp_path):
    """Stream start with thousands of instruments reads history in one query per 500 tokens."""
    from kiteohlc_lab.stores.sqlite import SQLiteHistory

    h = SQLiteHistory(str(tmp_path / "h.sqlite3"))
    n = 40
    for tok in (11, 22, 33):
        start = (np.arange(n, dtype=np.int64) + 28_000_000) * 60 * 1_000_000_000
        oi = np.full(n, np.nan) if tok != 33 else np.arange(n, dtype=float)
        h.write(CandleBatch("1m", np.full(n, tok, np.int64), start, np.arange(n) + 1.0, np.arange(n) + 2.0,
                            np.arange(n) + 0.5, np.arange(n) + 1.5, np.arange(n) * 10.0, oi, np.ones(n, np.int64)))
    got = h.read_many([11, 33, 44] + list(range(1000, 1600)), "1m")
    assert set(got) == {11, 33}
    for tok in (11, 33):
        pd.testing.assert_frame_equal(got[tok].to_frame(), h.read(tok, "1m"))
    h.close()


def test_sqlite_write_many_in_time_order_equals_writes_one_by_one(tmp_path):
    """A replay's writer hands several timeframes' batches at once, each closed time by time
    (instrument after instrument, not in the table's key order), a candle and its amendment among
    them: one transaction for all of them stores what one write per batch stores, the later
    version winning."""
    from kiteohlc_lab.stores.sqlite import SQLiteHistory

    def time_ordered(b: CandleBatch) -> CandleBatch:
        return b.select(np.lexsort((b.token, b.start)))

    toks = (11, 22, 33, 44)
    one = time_ordered(make_batch("1m", toks, n=30, base=100.0, oi=True))
    five = time_ordered(make_batch("5m", toks, n=6, step=5 * MIN, base=200.0))
    amended = time_ordered(make_batch("1m", toks[:2], n=30, base=400.0, oi=True)).select(slice(10, 20))
    batches = [CandleBatch.concat([one, amended]), five]
    a, b = SQLiteHistory(str(tmp_path / "a.sqlite3")), SQLiteHistory(str(tmp_path / "b.sqlite3"))
    a.write_many(batches)
    for x in batches:
        b.write(x)
    assert a.count() == b.count() == len(one) + len(five)
    for tok in toks:
        for tf in ("1m", "5m"):
            pd.testing.assert_frame_equal(a.read(tok, tf), b.read(tok, tf))
    # the later version of the amended candles won
    got = a.read(11, "1m")
    want = amended.select(amended.token == 11).to_frame()
    pd.testing.assert_frame_equal(got.loc[want.index], want)
    # a statement's journal stays in memory, not a file under /var/tmp per statement
    assert a._conn().execute("PRAGMA temp_store").fetchone()[0] == 2
    a.close()
    b.close()


@pytest.mark.parametrize("rows", [1, 5, 1023, 1024, 1025, 3 * 1024 + 777])
def test_sqlite_batches_of_any_size_go_in_whole_in_few_statement_shapes(tmp_path, rows):
    """A batch is written in statements of up to 1024 rows, the rest in powers of two: every
    candle of a batch of any size is stored once with its values (read back against the batch
    itself, as pandas holds it), and a run of batches of many sizes needs few statement shapes."""
    from kiteohlc_lab.stores.sqlite import SQLiteHistory, _pieces

    per_token = -(-rows // 3)
    b = make_batch("1m", (7, 8, 9), n=per_token, base=123.0, oi=True).select(slice(0, rows))
    h = SQLiteHistory(str(tmp_path / "h.sqlite3"))
    h.write(b)
    assert h.count() == rows
    for tok in (7, 8, 9):
        want = b.select(b.token == tok).to_frame()
        pd.testing.assert_frame_equal(h.read(tok, "1m"), want)
    h.close()
    shapes = {k for n in range(1, 5000, 37) for _, k in _pieces(n, 1024)}
    assert shapes <= {1024 >> i for i in range(11)}
    for n in (0, 1, rows, 4097):
        parts = _pieces(n, 1024)
        assert [a for a, _ in parts] == list(np.cumsum([0] + [k for _, k in parts])[:-1])
        assert sum(k for _, k in parts) == n
