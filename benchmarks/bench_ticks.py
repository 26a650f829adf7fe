"""The tick store's cost: recording CPU, bytes per tick on disk, and ``ticks()`` read speed.

One command: ``python benchmarks/bench_ticks.py [--instruments 9000] [--seconds 300] [--repeat 3]``.

1. Recording: ``--seconds`` of a market of ``--instruments`` instruments at one tick a second each,
   delivered as Kite frames of 1000 packets (9 a second for 9000 instruments), fed as fast as the
   machine goes to (a) the collector's own per-tick work, ``TickFilter.check`` + ``Engine.process`` at
   10s 1m 5m, and (b) ``TickStore.write`` (the writer thread included: zstd Parquet, files rolled and
   published). Each is timed in process CPU (``time.process_time``, every thread) and divided by the
   seconds of market: the share of one core it costs live. The ratio (b)/(a) is printed too.
2. Disk: the bytes of the published files over the ticks written.
3. Reading: ``kiteohlc_lab.ticks(...)`` (the public API: pandas with the IST index) for one instrument
   over a 5 minute window, for one instrument over the whole recorded day, and for all of it (also
   as ``frame="arrow"``, no pandas conversion), against
   polars ``scan_parquet(<the same files>).filter(...).collect()`` (best of ``--repeat``, runs
   alternating); the ratio project/polars is printed (below 1: the project is faster). With polars
   installed ``ticks()`` reads through it (``stores/tickread.scan``), else through pyarrow's dataset.
4. ``--book``: the market carries a top of the book (full mode), for its bytes per tick.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NS = 10**9
DAY0 = 1_795_500_000 * NS  # 2026-11-24 in IST (the market's first second, rounded below)
FRAME = 1000


def market(n_inst: int, seconds: int, seed: int = 1, book: bool = False):
    """Yield TickBatch frames: every instrument once a second, in shuffled frame order (``book``:
    with a top of the book, as full mode sends it: a tick either side, 1-40 lots of 1)."""
    from kiteohlc_lab.core.ticks import TickBatch

    rng = np.random.default_rng(seed)
    tokens = (np.arange(n_inst, dtype=np.int64) * 256 + 1) + 100_000  # NSE-like (segment 1)
    price = rng.uniform(50, 5000, n_inst).round(2)
    vol = rng.integers(1_000, 100_000, n_inst).astype(np.float64)
    order = rng.permutation(n_inst)
    for s in range(seconds):
        price = np.maximum(0.05, (price * (1 + rng.normal(0, 2e-4, n_inst))).round(2))
        vol = vol + rng.integers(0, 50, n_inst)
        ts = np.full(n_inst, DAY0 + s * NS, np.int64)
        for lo in range(0, n_inst, FRAME):
            idx = order[lo:lo + FRAME]
            if not book:
                yield TickBatch(tokens[idx], ts[idx], price[idx], vol[idx], None)
                continue
            p = price[idx]
            qty = rng.integers(1, 41, (2, len(idx))).astype(np.float64)
            yield TickBatch(tokens[idx], ts[idx], p, vol[idx], None, (p - 0.05).round(2),
                            (p + 0.05).round(2), qty[0], qty[1])


def cpu(fn) -> float:
    c0 = time.process_time()
    fn()
    return time.process_time() - c0


def collector_work(frames) -> float:
    from kiteohlc_lab.core.engine import Engine
    from kiteohlc_lab.core.sanity import TickFilter

    eng = Engine(["10s", "1m", "5m"], grace=5.0)
    flt = TickFilter(True)

    def run() -> None:
        for b in frames:
            eng.process(flt.check(b, int(b.ts[0])))
            eng.advance(int(b.ts[0]))

    return cpu(run)


def store_work(frames, root: Path, file_seconds: float) -> tuple[float, object]:
    from kiteohlc_lab.stores.ticks import TickStore

    holder = {}

    def run() -> None:
        s = holder["s"] = TickStore(str(root), file_seconds=file_seconds)
        for b in frames:
            s.write(b)
        s.close(timeout=600)

    return cpu(run), holder["s"]


def best(fns, repeat: int) -> list[tuple[float, object]]:
    """Best time (and last result) of each of ``fns``, runs alternating (a, b, a, b ...) so noise
    from other processes hits both."""
    times: list[list[float]] = [[] for _ in fns]
    outs: list[object] = [None] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - t0)
    return [(min(t), o) for t, o in zip(times, outs)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instruments", type=int, default=9000)
    ap.add_argument("--seconds", type=int, default=300, help="seconds of market recorded")
    ap.add_argument("--file-seconds", type=float, default=2.0,
                    help="tick_file_seconds while recording (wall clock; several files either way)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--book", action="store_true",
                    help="ticks with a top of the book (full mode): its cost on disk")
    args = ap.parse_args()

    frames = list(market(args.instruments, args.seconds, book=args.book))
    n = sum(len(b) for b in frames)
    tmp = Path(tempfile.mkdtemp(prefix="kiteohlc_bench_ticks_"))
    root = tmp / "ticks"
    print(f"market: {args.instruments} instruments x {args.seconds} s = {n:,} ticks in {len(frames)} frames")

    c_coll = collector_work(frames)
    c_store, store = store_work(frames, root, args.file_seconds)
    per_s = lambda c: 100.0 * c / args.seconds  # noqa: E731 - % of one core per second of market
    print(f"collector work (filter + engine 10s 1m 5m): {c_coll:.2f} s CPU = {per_s(c_coll):.2f}% of a core live")
    print(f"tick store (write + writer thread):        {c_store:.2f} s CPU = {per_s(c_store):.2f}% of a core live"
          f"  ({c_store / c_coll:.2f}x the collector work; {1e9 * c_store / n:.0f} ns/tick)")
    assert store.written == n and store.dropped == 0 and store.error is None, store.status()

    files = sorted(root.rglob("part-*.parquet"))
    size = sum(p.stat().st_size for p in files)
    print(f"disk: {size / 1e6:.1f} MB in {len(files)} files = {size / n:.2f} bytes/tick (zstd)")

    os.environ["KITEOHLC_DATA_DIR"] = str(tmp / "data")
    os.environ["KITEOHLC_TICK_STORE"] = str(root)
    import polars as pl

    import kiteohlc_lab as k

    import pandas as pd

    tok = int(frames[0].token[0])
    lo = pd.Timestamp(DAY0 + 60 * NS, tz="UTC").tz_convert("Asia/Kolkata")
    hi = lo + pd.Timedelta(minutes=5)
    glob = str(root / "host=*" / "date=*" / "*.parquet")

    def pl_scan():
        return pl.scan_parquet(glob, hive_partitioning=False)

    win = (pl.col("exchange_time") >= lo.to_pydatetime()) & (pl.col("exchange_time") < hi.to_pydatetime())
    cases = [
        ("1 instrument, 5 min", lambda: k.ticks(tok, lo, hi),
         lambda: pl_scan().filter((pl.col("token") == tok) & win).collect()),
        ("1 instrument, the day", lambda: k.ticks(tok),
         lambda: pl_scan().filter(pl.col("token") == tok).collect()),
        ("all, the day", lambda: k.ticks(),
         lambda: pl_scan().collect()),
        ("all, the day, Arrow", lambda: k.ticks(frame="arrow"),
         lambda: pl_scan().collect()),
    ]
    print(f"read ({n:,} ticks stored; best of {args.repeat}):")
    for label, ours, theirs in cases:
        (t_ours, df), (t_pl, pf) = best([ours, theirs], args.repeat)
        rows = df.num_rows if hasattr(df, "num_rows") else len(df)
        assert rows == pf.height, (label, rows, pf.height)
        print(f"  {label:<24} ticks() {t_ours * 1e3:8.1f} ms   polars {t_pl * 1e3:8.1f} ms   "
              f"ratio {t_ours / t_pl:5.2f}   ({rows:,} rows)")
    k.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
