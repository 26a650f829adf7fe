"""Store benchmarks: history writes/reads (SQLite, mongomock) against a naive per-row baseline, and
Redis round trips + RedisLive.write time for one engine batch.

    python benchmarks/bench_stores.py [--quick]

Full: one year of 1m candles (375/day x 250 days) for 50 instruments (4.7M rows). --quick: 5
instruments (mongomock: 2, it scans every document per query). The naive baselines run on a sample
(per-row statements/documents are slow) and are reported as rows/s.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kiteohlc_lab.core.candles import CandleBatch  # noqa: E402
from kiteohlc_lab.core.timeframes import DAY_NS, NS  # noqa: E402

PER_DAY, DAYS = 375, 250
T0 = 1_704_080_700 * NS  # 2024-01-01 09:15 IST
BASELINE_ROWS = 20_000


def instrument_year(token: int) -> CandleBatch:
    day_starts = T0 + np.arange(DAYS, dtype=np.int64) * DAY_NS
    start = (day_starts[:, None] + np.arange(PER_DAY, dtype=np.int64)[None, :] * 60 * NS).ravel()
    n = len(start)
    rng = np.random.default_rng(token)
    close = 100 + np.cumsum(rng.normal(0, 0.1, n))
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) + 0.05
    low = np.minimum(open_, close) - 0.05
    vol = rng.integers(1, 5000, n).astype(np.float64)
    return CandleBatch("1m", np.full(n, token, np.int64), start, open_, high, low, close, vol,
                       np.full(n, np.nan), np.ones(n, np.int64))


def chunks(b: CandleBatch, size: int):
    for i in range(0, len(b), size):
        yield b.select(slice(i, i + size))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def row(name, ours_rows, ours_s, base_rows, base_s):
    o, b = ours_rows / ours_s, base_rows / base_s
    print(f"  {name:<28} ours {o:>12,.0f} rows/s   naive {b:>10,.0f} rows/s   x{o / b:,.1f}")


# -- naive baselines -------------------------------------------------------------------------------
def naive_sqlite_write(path, b: CandleBatch):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS c (token INTEGER, tf TEXT, start INTEGER, open REAL, "
               "high REAL, low REAL, close REAL, volume REAL, oi REAL, PRIMARY KEY(token, tf, start))")
    for c in b:  # one statement and one commit per candle, as an on_candle writer would
        db.execute("INSERT OR REPLACE INTO c VALUES (?,?,?,?,?,?,?,?,?)",
                   (c.token, c.tf, c.start, c.open, c.high, c.low, c.close, c.volume, c.oi))
        db.commit()
    return db


def naive_sqlite_read(db, token):
    cur = db.execute("SELECT * FROM c WHERE token = ? AND tf = '1m' ORDER BY start", (token,))
    names = [d[0] for d in cur.description]
    recs = [dict(zip(names, r)) for r in cur]
    df = pd.DataFrame(recs)
    df["date"] = pd.to_datetime(df["start"], unit="ns", utc=True).dt.tz_convert("Asia/Kolkata")
    return df.set_index("date")[["open", "high", "low", "close", "volume"]]


def naive_mongo_write(coll, b: CandleBatch):
    for c in b:
        coll.insert_one({k: v for k, v in c.to_dict().items() if k not in ("closed", "amended")})


def naive_mongo_read(coll, token):
    df = pd.DataFrame(list(coll.find({"token": token, "tf": "1m"}).sort("start", 1)))
    df["date"] = pd.to_datetime(df["start"], unit="ns", utc=True).dt.tz_convert("Asia/Kolkata")
    return df.set_index("date")[["open", "high", "low", "close", "volume"]]


# -- history ---------------------------------------------------------------------------------------
def bench_history(n_sqlite: int, n_mongo: int, tmp: str) -> None:
    import mongomock

    from kiteohlc_lab.stores.mongo import MongoHistory
    from kiteohlc_lab.stores.sqlite import SQLiteHistory

    years = {t: instrument_year(t) for t in range(1, max(n_sqlite, n_mongo) + 1)}
    sample = years[1].select(slice(0, BASELINE_ROWS))

    print(f"History, SQLite: {n_sqlite} instruments x {len(years[1]):,} 1m candles "
          f"= {n_sqlite * len(years[1]):,} rows (writes in 7,500-row batches ~ 20 days)")
    s = SQLiteHistory(os.path.join(tmp, "h.sqlite3"))
    tw, _ = timed(lambda: [s.write(c) for t in range(1, n_sqlite + 1) for c in chunks(years[t], 7500)])
    tr, df = timed(lambda: s.read(1, "1m"))
    assert len(df) == len(years[1])
    bw, db = timed(lambda: naive_sqlite_write(os.path.join(tmp, "naive.sqlite3"), sample))
    br, bdf = timed(lambda: naive_sqlite_read(db, 1))
    rows = n_sqlite * len(years[1])
    row("write (upsert)", rows, tw, len(sample), bw)
    row("read 1 instrument-year", len(df), tr, len(bdf), br)
    print(f"  (read of {len(df):,} rows into the public frame: {tr * 1000:.0f} ms)")
    s.close()

    bench_replay_batches(tmp)

    print(f"History, mongomock: {n_mongo} instruments = {n_mongo * len(years[1]):,} rows")
    m = MongoHistory(mongomock.MongoClient(), db="bench")
    tw, _ = timed(lambda: [m.write(c) for t in range(1, n_mongo + 1) for c in chunks(years[t], 7500)])
    tr, df = timed(lambda: m.read(1, "1m"))
    assert len(df) == len(years[1])
    tq, docs = timed(lambda: list(m._coll.find({"token": 1, "tf": "1m"}, {"_id": 0}).sort("start", 1)))
    print(f"  (mongomock's own find+sort of those {len(docs):,} documents: {tq:.1f} s of the "
          f"{tr:.1f} s read)")
    coll = mongomock.MongoClient().bench.naive
    msample = years[1].select(slice(0, BASELINE_ROWS // 2))
    bw, _ = timed(lambda: naive_mongo_write(coll, msample))
    br, bdf = timed(lambda: naive_mongo_read(coll, 1))
    row("write (upsert)", n_mongo * len(years[1]), tw, len(msample), bw)
    row("read 1 instrument-year", len(df), tr, len(bdf), br)
    # the read alone, same collection size for both: naive over ours' collection
    tr2, bdf2 = timed(lambda: naive_mongo_read(m._coll, 1))
    row("read, same collection", len(df), tr, len(bdf2), tr2)


def replay_day(n_tokens: int = 50) -> list[CandleBatch]:
    """One session of 1m, 5m and 15m candles of ``n_tokens`` instruments, in the batches a replay
    closes them in: four blocks of the day, each batch time by time, instrument after instrument."""
    out = []
    for tf, sec in (("1m", 60), ("5m", 300), ("15m", 900)):
        per = 22_500 // sec
        start = T0 + np.arange(per, dtype=np.int64) * sec * NS
        for blk in np.array_split(np.arange(per), 4):
            st = np.repeat(start[blk], n_tokens)
            tok = np.tile(np.arange(1, n_tokens + 1, dtype=np.int64), len(blk))
            px = 100 + np.random.default_rng(len(out)).random(len(st))
            out.append(CandleBatch(tf, tok, st, px, px + 1, px - 1, px, np.ones(len(st)),
                                   np.full(len(st), np.nan), np.ones(len(st), np.int64)))
    return out


def arrival_order_write(path, batches: list[CandleBatch], key_order: bool = False) -> None:
    """Baselines: what SQLiteHistory did before, the same multi-row upserts of 3,000 rows a
    statement (each batch's last one of its own size, prepared afresh), a transaction a batch.
    ``key_order=False``: before 2026-12-02 04:00 UTC, rows in the order the batch has them and
    SQLite's default temp store (a statement journal file per upsert); True: until 2026-12-02
    06:30 UTC, rows in key order and the journal in memory."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    if key_order:
        db.execute("PRAGMA temp_store=MEMORY")
    db.execute("CREATE TABLE c (token INTEGER NOT NULL, tf TEXT NOT NULL, start INTEGER NOT NULL, "
               "open REAL, high REAL, low REAL, close REAL, volume REAL, oi REAL, ticks INTEGER, "
               "PRIMARY KEY (token, tf, start)) WITHOUT ROWID")
    for b in batches:
        if key_order:
            b = b.select(np.lexsort((b.start, b.token)))
        cols = [b.token.tolist(), b.start.tolist(), b.open.tolist(), b.high.tolist(), b.low.tolist(),
                b.close.tolist(), b.volume.tolist(), b.oi.tolist(), b.ticks.tolist()]
        with db:
            for i in range(0, len(b), 3000):
                part = [c[i:i + 3000] for c in cols]
                n = len(part[0])
                params = [v for r in zip(part[0], [b.tf] * n, *part[1:]) for v in r]
                db.execute("INSERT INTO c VALUES " + ",".join(["(?,?,?,?,?,?,?,?,?,?)"] * n)
                           + " ON CONFLICT (token, tf, start) DO UPDATE SET open = excluded.open, "
                           "high = excluded.high, low = excluded.low, close = excluded.close, "
                           "volume = excluded.volume, oi = excluded.oi, ticks = excluded.ticks", params)
    db.close()


def bench_replay_batches(tmp: str, repeat: int = 5) -> None:
    """A replay's history writes: time-ordered batches, into a fresh file each run."""
    from kiteohlc_lab.stores.sqlite import SQLiteHistory

    batches = replay_day()
    rows = sum(len(b) for b in batches)
    ours, base, prev = [], [], []
    for k in range(repeat):  # alternating, each into a fresh file
        s = SQLiteHistory(os.path.join(tmp, f"replay_{k}.sqlite3"))
        ours.append(timed(lambda: [s.write(b) for b in batches])[0])
        assert s.count() == rows
        s.close()
        base.append(timed(lambda: arrival_order_write(os.path.join(tmp, f"arrival_{k}.sqlite3"),
                                                      batches))[0])
        prev.append(timed(lambda: arrival_order_write(os.path.join(tmp, f"keyorder_{k}.sqlite3"),
                                                      batches, key_order=True))[0])
    o, b, p = statistics.median(ours), statistics.median(base), statistics.median(prev)
    print(f"History, SQLite: a replay's batches ({rows:,} candles of 50 instruments, 1m 5m 15m, "
          f"{len(batches)} time-ordered batches), median of {repeat}")
    print(f"  ours (1024-row statements, key order) {o / rows * 1e6:.2f} us a row   "
          f"3,000-row statements in arrival order, journals on disk {b / rows * 1e6:.2f} x{b / o:.2f}   "
          f"the same in key order, journal in memory {p / rows * 1e6:.2f} x{p / o:.2f}")


# -- redis -----------------------------------------------------------------------------------------
def bench_redis(iterations: int) -> None:
    import redis

    from kiteohlc_lab.stores.redis_live import RedisLive

    class Counting(redis.Connection):
        sends = 0

        def send_packed_command(self, command, check_health=True):
            Counting.sends += 1
            return super().send_packed_command(command, check_health)

    client = redis.Redis(connection_pool=redis.ConnectionPool(
        host="127.0.0.1", port=6379, connection_class=Counting, socket_connect_timeout=0.5))
    try:
        client.ping()
    except redis.ConnectionError:
        print("Redis: no server on 127.0.0.1:6379, skipped")
        return
    live = RedisLive(client, prefix=f"kohlc-bench-{uuid.uuid4().hex[:8]}:")
    tokens = np.arange(1, 51, dtype=np.int64)
    tfs = ("1m", "5m", "15m")

    def batch(k):
        forming = []
        for tf in tfs:
            n = len(tokens)
            px = 100.0 + k + np.arange(n) * 0.01
            forming.append(CandleBatch(tf, tokens, np.full(n, T0 + k * 60 * NS), px, px + 1, px - 1,
                                       px, np.full(n, 10.0 * k), np.full(n, np.nan),
                                       np.full(n, k), closed=False))
        closed = [forming[0].select(slice(None))]
        closed[0].closed = True
        states = {int(t): {"forming": {tf: [T0, 1.0, 2.0] for tf in tfs}, "baseline": 1e6}
                  for t in tokens}
        return forming, closed, states

    def cmdstats():
        return sum(int(v["calls"]) for v in client.info("commandstats").values())

    try:
        b = batch(0)
        live.write(*b)
        c0 = cmdstats()
        s0 = Counting.sends
        live.write(*b)
        s1 = Counting.sends
        c1 = cmdstats()
        rt, cmds = s1 - s0, c1 - c0 - 1  # minus the first INFO (counted once it has run)
        times = []
        for k in range(iterations):
            b = batch(k)
            t = time.perf_counter()
            live.write(*b)
            times.append(time.perf_counter() - t)
        # naive: the same commands without a pipeline (one round trip each)
        f, c, st = batch(1)
        s2 = Counting.sends
        t = time.perf_counter()
        for fb in f:
            for cd in fb:
                client.hset(live.key(cd.token, "forming", fb.tf), mapping={
                    "start": cd.start, "open": cd.open, "high": cd.high, "low": cd.low,
                    "close": cd.close, "volume": cd.volume, "oi": repr(cd.oi), "ticks": cd.ticks})
        for cd in c[0]:
            client.xadd(live.key(cd.token, "closed", "1m"), {"start": cd.start, "close": cd.close},
                        maxlen=10_000, approximate=True)
        import json

        for tok, sv in st.items():
            client.set(live.key(tok, "state"), json.dumps(sv))
        naive_s = time.perf_counter() - t
        naive_rt = Counting.sends - s2
        ms = np.array(times) * 1000
        print("Redis (127.0.0.1:6379), one engine batch = 50 instruments x 3 timeframes "
              "(150 forming, 50 closed, 50 states):")
        print(f"  RedisLive.write: {rt} round trip(s), {cmds} commands (INFO commandstats delta); "
              f"median {np.median(ms):.2f} ms, p95 {np.percentile(ms, 95):.2f} ms over {iterations}")
        print(f"  naive (no pipeline): {naive_rt} round trips, {naive_s * 1000:.1f} ms   "
              f"x{naive_s * 1000 / np.median(ms):.1f}")
    finally:
        live.delete_all()
        client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 instruments (mongomock: 2)")
    args = ap.parse_args()
    n_sqlite, n_mongo, iters = (5, 2, 100) if args.quick else (50, 10, 500)
    with tempfile.TemporaryDirectory() as tmp:
        bench_history(n_sqlite, n_mongo, tmp)
    bench_redis(iters)


if __name__ == "__main__":
    main()
