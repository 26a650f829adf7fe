"""Collector benchmark: close-to-reader latency and the collector's CPU share.

    python benchmarks/bench_collector.py --instruments 9000 --seconds 40

- a Kite-protocol simulator in its own process streams N instruments (full mode, one tick per second
  each; Kite's limits put 9000 on 3 connections);
- a collector subprocess (``kiteohlc-lab collect <tokens> 10s 1m --source sim``) aggregates them into
  the Redis at ``--redis-url`` (unique prefix, keys deleted at the end);
- 10 reader processes, each an own Manager attached with ``source="redis"`` to a slice of the
  instruments, read ``candles(..., closed_only=True)`` when ``on_candle`` says a candle closed
  (push, the default) or every ``--poll`` seconds. Latency = when the
  reader's ``candles()`` first shows a closed 10s candle minus when the collector appended it to the
  candle's Redis Stream (the entry id's millisecond clock, set by the Redis server on this host),
  looked up after the window (a lookup per candle inside the window queued each reader's next
  ``candles()`` behind the collector's writes on the Redis server).
- CPU: ``psutil`` over the measurement window, of the collector process (100% = one core), and the
  Redis server's (``INFO cpu``, the server at ``--redis-url``: the live state's scripts run there, so
  the collector's cost is both).
- Two windows of ``--seconds`` each: the machine otherwise idle, then under load: ``--load`` processes
  (default: one per core) spinning on the CPU as a researcher's heavy notebook would, started between
  the windows and stopped after (``--load 0``: the idle window only). A candle counts in the window in
  which its reader's ``candles()`` showed it.
- Baseline (the ratio to print): once the collector has stopped, the same simulator streams to the
  stock ``KiteTicker`` of kiteconnect (its own parser, three connections) feeding a dict aggregator of
  10s and 1m candles that stores nothing, for one idle window (``--no-baseline``: skip it).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _run_sim(n: int, q, stop) -> None:
    from kiteohlc_lab.feeds.simulator import KiteSimulator, SimInstrument

    instruments = [SimInstrument(((100_000 + i) << 8) | 1, f"SYM{i}", f"SYM{i}", "NSE", "NSE", "EQ",
                                 100.0 + i % 500) for i in range(n)]
    sim = KiteSimulator(instruments=instruments, tick_interval=1.0, api_key="bench",
                        access_token="bench-token-secret").start()
    q.put((sim.ticker_url, sim.api_url, [i.instrument_token for i in instruments]))
    while not stop.wait(0.5):
        q.put(("stats", len(sim._clients), sim.max_seen_connections))
    sim.stop()


def _stock(ticker_url: str, tokens: list[int], counter, stop) -> None:
    """The baseline: kiteconnect's stock ``KiteTicker`` (its own parser: a dict per tick), one per
    3000 instruments in full mode on one Twisted reactor, and the aggregator a researcher writes in a
    few lines: each tick updates its instrument's forming 10s and 1m candle in a dict (OHLC, volume
    from the cumulative volume). It stores nothing and serves no reader: all it does is a part of
    what the collector does."""
    import threading

    from kiteconnect import KiteTicker
    from twisted.internet import reactor

    forming: dict[tuple[int, int], list] = {}

    def on_ticks(ws, ticks) -> None:
        for t in ticks:
            tok, px, vol = t["instrument_token"], t["last_price"], t.get("volume_traded", 0)
            stamp = t.get("exchange_timestamp")
            sec = stamp.timestamp() if stamp is not None else time.time()
            for tf in (10, 60):
                start = sec - sec % tf
                c = forming.get((tok, tf))
                if c is None or c[0] != start:
                    forming[(tok, tf)] = [start, px, px, px, px, vol, vol]
                else:
                    c[2], c[3], c[4], c[6] = max(c[2], px), min(c[3], px), px, vol
        with counter.get_lock():
            counter.value += len(ticks)

    threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True).start()
    for i in range(0, len(tokens), 3000):
        chunk = tokens[i:i + 3000]
        kt = KiteTicker("bench", "bench-token-secret", root=ticker_url)
        kt.on_ticks = on_ticks
        kt.on_connect = lambda ws, resp, chunk=chunk: (ws.subscribe(chunk), ws.set_mode(ws.MODE_FULL, chunk))
        reactor.callFromThread(kt.connect)  # on the reactor's thread: connect() does not run it again
    stop.wait()
    reactor.callFromThread(reactor.stop)


def _burn(stop) -> None:
    """A CPU hog for the loaded window: pure Python arithmetic until ``stop`` is set."""
    x = 0
    while not stop.is_set():
        for i in range(200_000):
            x = (x * 31 + i) & 0xFFFF


def _reader(mine: list[int], url: str, prefix: str, data_dir: str, poll: float, go, end, out) -> None:
    """One reader process: an own Manager attached through Redis. ``poll`` > 0: check the series'
    versions every ``poll`` seconds (what a live view does); 0: push, ``on_candle`` wakes the reader
    when a candle closes (no polling at all)."""

    import redis

    from kiteohlc_lab.config import KiteOHLC
    from kiteohlc_lab.runtime import Manager

    m = Manager(KiteOHLC(redis_url=url, redis_prefix=prefix, data_dir=data_dir))
    m.start(",".join(map(str, mine)), ["10s"], source="redis")
    bufs = {t: m.series(t, "10s") for t in mine}
    last: dict[int, int | None] = {t: None for t in mine}
    versions = {t: -1 for t in mine}
    rc = redis.Redis.from_url(url)
    seen_at: list[tuple[int, int, float]] = []  # (token, candle start ns, when candles() showed it)

    def check(t: int) -> None:
        df = m.candles(t, "10s", closed_only=True)
        if not len(df):
            return
        s = int(df.index[-1].value)
        if last[t] is None:
            last[t] = s
        elif s != last[t]:
            last[t] = s
            if go.is_set():  # the stream entry is looked up at the end: no Redis call in between
                seen_at.append((t, s, time.time()))

    if poll <= 0:
        for t in mine:
            m.on_candle(t, "10s", lambda c, t=t: check(t))
    out.put("ready")
    go.wait()
    while not end.is_set():
        if poll <= 0:
            end.wait(0.5)
            continue
        for t in mine:
            v = bufs[t].version  # what a live view checks before re-reading
            if v == versions[t]:
                continue
            versions[t] = v
            check(t)
        end.wait(poll)
    lat: list[tuple[float, float]] = []  # (latency ms, when candles() showed it)
    for t, start, seen in seen_at:  # when the collector appended that candle (the entry id's ms)
        for eid, f in rc.xrange(f"{prefix}{{{t}}}:closed:10s"):
            if int(f[b"start"]) == start:
                lat.append((seen * 1000 - int(eid.decode().split("-")[0]), seen))
                break
    out.put(lat)
    rc.close()
    m.shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instruments", type=int, default=3000)
    ap.add_argument("--seconds", type=float, default=40.0, help="each measurement window (idle, then loaded)")
    ap.add_argument("--warmup", type=float, default=12.0)
    ap.add_argument("--readers", type=int, default=10)
    ap.add_argument("--per-reader", type=int, default=20, help="instruments each reader follows")
    ap.add_argument("--poll", type=float, default=0.0,
                    help="seconds between a reader's version checks; 0 (default): push (on_candle)")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false",
                    help="skip the stock KiteTicker + dict aggregator window after the collector's")
    ap.add_argument("--load", type=int, default=-1,
                    help="CPU-spinning processes in the second window (default: one per core; 0: no loaded window)")
    args = ap.parse_args(argv)

    import psutil
    import redis

    ctx = mp.get_context("spawn")
    q, stop = ctx.Queue(), ctx.Event()
    simp = ctx.Process(target=_run_sim, args=(args.instruments, q, stop), daemon=True)
    simp.start()
    ticker_url, api_url, tokens = q.get(timeout=60)
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    tmp = Path(tempfile.mkdtemp(prefix="kohlc-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KITEOHLC_", "KITE_"))}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "kiteohlc_lab.cli", "collect", ",".join(map(str, tokens)), "10s", "1m",
           "--source", "sim", "--ticker-url", ticker_url, "--api-url", api_url, "--api-key", "bench",
           "--access-token", "bench-token-secret", "--grace", "1", "--redis-url", args.redis_url,
           "--redis-prefix", prefix, "--data-dir", str(tmp / "collector"), "--quiet"]
    t_start = time.monotonic()
    coll = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = redis.Redis.from_url(args.redis_url)
    readers: list = []
    burn_stop, burners = ctx.Event(), []  # the loaded window's CPU hogs
    try:
        deadline = time.monotonic() + 120
        while not r.exists(f"{prefix}{{{tokens[-1]}}}:state"):
            if coll.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"collector did not start (rc {coll.poll()}); see {tmp}/collector/logs")
            time.sleep(0.2)
        print(f"collector streaming {args.instruments} instruments after {time.monotonic() - t_start:.1f} s")

        go, end, out = ctx.Event(), ctx.Event(), ctx.Queue()
        rng = np.random.default_rng(1)
        picks = rng.choice(tokens, size=min(len(tokens), args.readers * args.per_reader), replace=False)
        readers = [ctx.Process(target=_reader, daemon=True, args=(
            [int(t) for t in picks[i * args.per_reader:(i + 1) * args.per_reader]], args.redis_url,
            prefix, str(tmp / f"r{i}"), args.poll, go, end, out)) for i in range(args.readers)]
        for p in readers:
            p.start()
        for _ in readers:
            out.get(timeout=120)  # "ready"
        time.sleep(args.warmup)
        proc = psutil.Process(coll.pid)
        n_load = (os.cpu_count() or 1) if args.load < 0 else args.load
        windows: list[tuple] = []  # (name, t0, t1 wall, cpu, machine, the Redis server's cpu)

        def server_cpu() -> float:  # seconds of CPU the Redis server at --redis-url has used
            try:
                info = r.info("cpu")
                return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
            except Exception:  # noqa: BLE001 - a server that refuses INFO: not reported (nan)
                return float("nan")

        go.set()
        for name in (["idle"] + (["loaded"] if n_load else [])):
            if name == "loaded":
                burners = [ctx.Process(target=_burn, args=(burn_stop,), daemon=True) for _ in range(n_load)]
                for b in burners:
                    b.start()
                time.sleep(2.0)  # the hogs running before the window opens
            proc.cpu_percent(None)
            psutil.cpu_percent(None)
            s0, w0 = server_cpu(), time.time()
            time.sleep(args.seconds)
            w1 = time.time()
            windows.append((name, w0, w1, proc.cpu_percent(None), psutil.cpu_percent(None),
                            (server_cpu() - s0) / (w1 - w0) * 100))
        burn_stop.set()
        for b in burners:
            b.join(5)
        end.set()
        lat: list[tuple[float, float]] = []
        for _ in readers:
            lat += out.get(timeout=60)
        for p in readers:
            p.join(10)
        conns = None
        while not q.empty():
            item = q.get_nowait()
            if item[0] == "stats":
                conns = item[1:]
        import json as _json

        entry = next((_json.loads(v) for v in r.mget(list(r.scan_iter(match=f"{prefix}collector:*")))
                      if v), {})
        coll.terminate()  # the baseline gets the simulator (and the machine) to itself
        coll.wait(10)
        stock = None
        if args.baseline:
            counter, stock_stop = ctx.Value("q", 0), ctx.Event()
            sp = ctx.Process(target=_stock, args=(ticker_url, [int(t) for t in tokens], counter, stock_stop),
                             daemon=True)
            sp.start()
            deadline = time.monotonic() + 60
            while counter.value < 3 * len(tokens) and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(min(args.warmup, 3.0))
            sproc = psutil.Process(sp.pid)
            sproc.cpu_percent(None)
            n0, t0 = counter.value, time.monotonic()
            time.sleep(args.seconds)
            stock = (sproc.cpu_percent(None), (counter.value - n0) / (time.monotonic() - t0))
            stock_stop.set()
            sp.join(10)
            if sp.is_alive():
                sp.terminate()
        print(f"instruments {args.instruments}, simulator connections now/max {conns}, "
              f"windows of {args.seconds:.0f} s")
        print(f"collector: ticks/s {entry.get('ticks_per_s')}, health {entry.get('health')!r}")
        for name, w0, w1, cpu, machine, server in windows:
            a = np.array([ms for ms, seen in lat if w0 <= seen < w1] or [np.nan])
            load = f", {n_load} CPU-spinning processes" if name == "loaded" else ""
            print(f"[{name}{load}] collector CPU {cpu:.1f}% of one core ({cpu / psutil.cpu_count():.1f}% of "
                  f"the machine's {psutil.cpu_count()} cores); whole machine busy {machine:.1f}%")
            print(f"[{name}] Redis server CPU {server:.1f}% of one core (its live-state scripts, the "
                  f"readers' reads and anything else on that server); collector + server {cpu + server:.1f}%")
            print(f"[{name}] close -> reader candles() latency over {int(np.isfinite(a).sum())} candles, "
                  f"{args.readers} readers: p50 {np.nanpercentile(a, 50):.1f} ms, "
                  f"p99 {np.nanpercentile(a, 99):.1f} ms, max {np.nanmax(a):.1f} ms")
        if stock is not None:
            idle_cpu, idle_server = windows[0][3], windows[0][5]
            print(f"[baseline, idle] stock KiteTicker + dict aggregator (stores nothing): CPU {stock[0]:.1f}% "
                  f"of one core at {stock[1]:,.0f} ticks/s; the collector uses x{idle_cpu / stock[0]:.2f} of it, "
                  f"x{(idle_cpu + idle_server) / stock[0]:.2f} with its Redis server's work "
                  f"(and stores every candle in Redis and SQLite, serving {args.readers} readers)")
        return 0
    finally:
        for p in readers:
            if p.is_alive():
                p.terminate()
        burn_stop.set()
        for b in burners:
            if b.is_alive():
                b.terminate()
        if coll.poll() is None:
            coll.terminate()
        try:
            rc = coll.wait(10)
            print(f"collector exit code on SIGTERM: {rc}")
        except subprocess.TimeoutExpired:
            coll.kill()
        stop.set()
        simp.join(10)
        keys = list(r.scan_iter(match=prefix + "*", count=5000))
        for i in range(0, len(keys), 5000):
            r.delete(*keys[i:i + 5000])
        r.close()


if __name__ == "__main__":
    raise SystemExit(main())
