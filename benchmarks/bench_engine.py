"""Engine throughput: kiteohlc_lab's batch engine vs a naive per-tick dict aggregator vs pandas groupby.

One command: ``python benchmarks/bench_engine.py [--ticks 1000000] [--instruments 50]``.
Same generated tape for every contender; timeframes 1m 5m 15m. Prints ticks/s and ratios side by side.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kiteohlc_lab.core.engine import Engine  # noqa: E402
from kiteohlc_lab.core.timeframes import IST_OFFSET_NS, NS  # noqa: E402
from kiteohlc_lab.feeds.synthetic import make_ticks, write_tape  # noqa: E402

TFS = ["1m", "5m", "15m"]
SECONDS = [60, 300, 900]
ANCHOR = (9 * 3600 + 15 * 60) * NS
DAY = 86_400 * NS


def best_of(fn, repeat=3):
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def naive(token, ts, price, vol):
    """The obvious per-tick aggregator: a dict per (token, tf), one Python call per tick."""
    candles: dict = {}
    last_cum: dict = {}
    closed = []
    for tok, t, p, v in zip(token.tolist(), ts.tolist(), price.tolist(), vol.tolist()):
        inc = 0.0
        if v == v:  # not NaN
            prev = last_cum.get(tok)
            inc = 0.0 if prev is None else max(0.0, v - prev)
            last_cum[tok] = v
        local = t + IST_OFFSET_NS
        day = local - local % DAY
        off = local - day - ANCHOR
        for tf, sec in zip(TFS, SECONDS):
            size = sec * NS
            b = day + ANCHOR + (off // size) * size
            key = (tok, tf)
            c = candles.get(key)
            if c is None or c[0] != b:
                if c is not None:
                    closed.append(c)
                candles[key] = [b, p, p, p, p, inc]
            else:
                if p > c[2]:
                    c[2] = p
                if p < c[3]:
                    c[3] = p
                c[4] = p
                c[5] += inc
    return closed


def groupby(df, with_volume=True):
    """The same candles with pandas: OHLC per (token, bucket) and, as the engine does, volume as the
    increase of the cumulative volume over the previous candle's last tick (``with_volume``)."""
    out = []
    local = df["ts"].to_numpy() + IST_OFFSET_NS
    day = local - local % DAY
    for sec in SECONDS:
        size = sec * NS
        b = day + ANCHOR + ((local - day - ANCHOR) // size) * size
        g = df.assign(b=b).groupby(["token", "b"], sort=with_volume)
        c = g.agg(open=("price", "first"), high=("price", "max"), low=("price", "min"),
                  close=("price", "last"), vol=("volume", "last"))
        if with_volume:
            c["volume"] = c.groupby(level=0)["vol"].diff().clip(lower=0)
        out.append(c)
    return out


def engine_run(batch, chunk):
    e = Engine(TFS)
    for i in range(0, len(batch), chunk):
        e.process(batch.take(slice(i, i + chunk)))
    e.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=1_000_000)
    ap.add_argument("--instruments", type=int, default=50)
    ap.add_argument("--naive-ticks", type=int, default=200_000, help="the naive loop runs on a prefix")
    args = ap.parse_args()
    batch, syms = make_ticks(args.ticks, n_instruments=args.instruments, seed=42)
    n = len(batch)
    print(f"tape: {n:,} ticks, {args.instruments} instruments, timeframes {' '.join(TFS)}")

    t_engine = best_of(lambda: engine_run(batch, 65_536))
    t_engine_frames = best_of(lambda: engine_run(batch, 3_000), repeat=1)
    k = min(args.naive_ticks, n)
    t_naive = best_of(lambda: naive(batch.token[:k], batch.ts[:k], batch.price[:k], batch.volume[:k]), repeat=1) * n / k
    df = pd.DataFrame({"token": batch.token, "ts": batch.ts, "price": batch.price, "volume": batch.volume})
    t_groupby = best_of(lambda: groupby(df), repeat=2)
    t_groupby_ohlc = best_of(lambda: groupby(df, with_volume=False), repeat=2)

    tmp = Path(tempfile.mkdtemp())
    tape_csv = write_tape(tmp / "tape.csv", batch, syms)
    tape_pq = write_tape(tmp / "tape.parquet", batch, syms)

    def pandas_path(path):
        d = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        ts = pd.to_datetime(d["timestamp"])
        ts = (ts.dt.tz_localize("Asia/Kolkata") if ts.dt.tz is None else ts).dt.tz_convert("UTC")
        d = pd.DataFrame({"token": d["instrument_token"], "ts": ts.astype("int64"),
                          "price": d["last_price"], "volume": d["volume_traded"]})
        groupby(d)

    import kiteohlc_lab
    from kiteohlc_lab import api

    opened = []

    def replay_path(path):
        # stores are opened before the clock starts (starting embedded Redis is not the replay path)
        api.reset()
        os.environ["KITEOHLC_DATA_DIR"] = tempfile.mkdtemp()
        t = time.perf_counter()
        api.manager().stores()
        opened.append(time.perf_counter() - t)
        t = time.perf_counter()
        kiteohlc_lab.stream("ALL", *TFS, source="replay", tape=str(path))
        assert kiteohlc_lab.wait(600)
        return time.perf_counter() - t

    def timed(fn, path, repeat=3):
        return min(fn(path) for _ in range(repeat))

    t_pd_pq = best_of(lambda: pandas_path(tape_pq), repeat=3)
    t_replay_pq = timed(replay_path, tape_pq)
    t_pd_csv = best_of(lambda: pandas_path(tape_csv), repeat=3)
    t_replay_csv = timed(replay_path, tape_csv)
    api.reset()

    rate = lambda t: f"{n / t / 1e6:8.2f} M ticks/s"  # noqa: E731
    print(f"{'aggregation core (65k-tick batches)':44s} {rate(t_engine)}")
    print(f"{'aggregation core (3k-tick frames)':44s} {rate(t_engine_frames)}")
    print(f"{'naive per-tick dict aggregator':44s} {rate(t_naive)}   engine is {t_naive / t_engine:5.1f}x faster")
    print(f"{'pandas groupby (in memory, same candles)':44s} {rate(t_groupby)}   engine is {t_groupby / t_engine:5.1f}x faster")
    print(f"{'pandas groupby (OHLC + last cum. volume only)':44s} {rate(t_groupby_ohlc)}   engine is {t_groupby_ohlc / t_engine:5.1f}x faster")
    print(f"{'replay path, Parquet (read+aggregate+store)':44s} {rate(t_replay_pq)}   "
          f"vs pandas read+groupby {rate(t_pd_pq)}: ratio {t_pd_pq / t_replay_pq:4.2f}")
    print(f"{'replay path, CSV (read+aggregate+store)':44s} {rate(t_replay_csv)}   "
          f"vs pandas read+groupby {rate(t_pd_csv)}: ratio {t_pd_csv / t_replay_csv:4.2f}")
    print(f"(opening the embedded stores, not timed above: {min(opened):.2f} s; ratio > 1 means the "
          "replay path is faster than the pandas baseline)")


if __name__ == "__main__":
    main()
