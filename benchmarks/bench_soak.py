"""Soak: resident memory while an accelerated market streams and thousands of ``candles()`` reads of
different instruments come in (issue 11, "bounded memory").

Run: ``python benchmarks/bench_soak.py [--reads 6000] [--days 3] [--max-idle 256]`` (about a minute;
temporary data dir, no credentials). ``--max-idle 1000000`` shows the unbounded behaviour.

- The market: a synthetic tape of ``--days`` sessions (09:15-15:30 IST, hours of market time each) of
  200 instruments, replayed as fast as possible at 1m and 5m, again and again (each pass a later
  week), with an ``on_candle`` callback that sleeps 2 ms per candle (its backlog is bounded).
- The reads: one thread reads ``candles()`` of instruments in turn: the 200 streamed ones and
  ``--reads`` distinct instruments nobody streams (what any read-API key holder can ask for).
- Printed every 2 s: resident memory (psutil), series kept / evicted, callback backlog / dropped.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> int:
    import psutil

    from kiteohlc_lab.config import KiteOHLC
    from kiteohlc_lab.feeds.synthetic import make_ticks, write_tape
    from kiteohlc_lab.runtime import Manager

    ap = argparse.ArgumentParser()
    ap.add_argument("--reads", type=int, default=6000, help="distinct unstreamed instruments read")
    ap.add_argument("--days", type=int, default=3, help="market sessions per tape")
    ap.add_argument("--passes", type=int, default=3, help="tapes replayed one after the other")
    ap.add_argument("--max-idle", type=int, default=256, help="KiteOHLC.max_idle_series")
    args = ap.parse_args()

    proc = psutil.Process()
    tmp = tempfile.mkdtemp(prefix="kohlc-soak-")
    tapes = []
    for k in range(args.passes):
        ticks, symbols = make_ticks(400_000, n_instruments=200, days=args.days, seed=k,
                                    start=f"2026-11-{2 + 7 * k:02d} 09:15:00")
        tapes.append(write_tape(os.path.join(tmp, f"tape{k}.csv"), ticks, symbols))
    tokens = sorted(symbols)
    m = Manager(KiteOHLC(data_dir=os.path.join(tmp, "data"), max_idle_series=args.max_idle))
    m.on_candle(tokens[0], "1m", lambda c: time.sleep(0.002))
    m.on_candle(tokens[1], "5m", lambda c: time.sleep(0.002))

    stop = threading.Event()
    reads = [0]
    base = [5_000_000]  # the unstreamed instruments read; moved to fresh ones for the last phase

    def reader() -> None:
        i = 0
        while not stop.is_set():
            tok = tokens[i % len(tokens)] if i % 4 == 0 else base[0] + (i // 2) % args.reads
            m.candles(tok, "1m" if i % 2 else "5m")
            reads[0] += 1
            i += 1

    rows = []

    def sample(label: str) -> None:
        mem = m.memory_status()
        cb = mem["callbacks"]
        rss = proc.memory_info().rss / 1e6
        rows.append(rss)
        print(f"{label:>8} rss {rss:7.1f} MB  reads {reads[0]:7d}  series {mem['series']:5d} "
              f"(idle {mem['idle_series']:4d}, evicted {mem['evicted']:6d})  callbacks queued "
              f"{cb['queued']:4d} called {cb['called']:6d} dropped {cb['dropped']:5d}", flush=True)

    t0 = time.perf_counter()
    th = threading.Thread(target=reader, daemon=True)
    th.start()
    sample("start")
    next_t = time.perf_counter() + 2
    for tape in tapes:
        m.start("ALL", ["1m", "5m"], tape=str(tape), speed=0)
        while not m.wait(0.2):
            if time.perf_counter() >= next_t:
                sample(f"{time.perf_counter() - t0:6.1f}s")
                next_t += 2
    sample("market")
    at_market_end, reads_then = rows[-1], reads[0]
    base[0] = 9_000_000  # then only reads: --reads more distinct instruments never read before
    while reads[0] < reads_then + 3 * args.reads:
        time.sleep(0.2)
        if time.perf_counter() >= next_t:
            sample(f"{time.perf_counter() - t0:6.1f}s")
            next_t += 2
    sample("end")
    stop.set()
    th.join(5)
    market_h = args.passes * args.days * 6.25
    print(f"\n{market_h:.0f} h of market time (200 instruments streamed at 1m+5m), {reads[0]} candles() "
          f"reads in {time.perf_counter() - t0:.0f} s, max_idle_series {args.max_idle}: rss start {rows[0]:.1f} MB, "
          f"at market end {at_market_end:.1f} MB, end {rows[-1]:.1f} MB; read-only phase "
          f"({reads[0] - reads_then} reads, {args.reads} new instruments): {rows[-1] - at_market_end:+.1f} MB; "
          f"series kept {len(m.buffers)}, evicted {m.evicted}")
    m.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
