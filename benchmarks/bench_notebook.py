"""Notebook-layer figures: stream start to first candle, ``live.df`` cost, live widget refresh cost.

Run: ``python benchmarks/bench_notebook.py`` (about 40 s; uses a temporary data dir, no credentials).

0. A 1M-tick replay (CSV, then Parquet) from the notebook cell that starts it (``%load_ext`` a
   cell before), in a fresh kernel, against bench_replay's polars and pandas contenders (read +
   the same candles; ``import polars`` / ``import pandas`` a cell before).
1. ``%ohlc_stream NIFTY 5m`` on the built-in simulator (in-process IPython shell) until
   ``kiteohlc_lab.candles("NIFTY", "5m")`` has a row (the forming candle), ``%load_ext`` just before.
2. ``live.df`` on a series of 100k candles: cold (the series changed: a new DataFrame) and cached
   (unchanged version: the same object).
3. ``LiveView`` (chart of the last 100 candles + table) on that series: cost of one render, of a
   coalesced no-change check, and CPU share per second at the default 2 refreshes/s.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def bench_first_candle() -> dict[str, float]:
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    import kiteohlc_lab

    c = Config()
    c.HistoryManager.enabled = False
    ip = InteractiveShell.instance(config=c)
    t_load = time.perf_counter()
    ip.run_line_magic("load_ext", "kiteohlc_lab")  # in the same cell: its imports still run beside
    t0 = time.perf_counter()
    t_load = t0 - t_load
    ip.run_line_magic("ohlc_stream", "NIFTY 5m")
    t_start = time.perf_counter() - t0
    ev = threading.Event()
    while len(kiteohlc_lab.candles("NIFTY", "5m")) == 0 and time.perf_counter() - t0 < 30:
        ev.wait(0.005)
    t_first = time.perf_counter() - t0
    ip.run_line_magic("unload_ext", "kiteohlc_lab")
    return {"load_ext_s": t_load, "magic_returns_s": t_start, "first_candle_s": t_first}


class _OneSeries:
    """The slice of the Manager that LiveCandles/LiveView use."""

    def __init__(self, buf) -> None:
        self.buf = buf

    def series(self, symbol, tf):
        return self.buf

    def status(self):
        return []


def make_series(n: int):
    from kiteohlc_lab.core.candles import Candle, CandleBatch
    from kiteohlc_lab.core.series import SeriesBuffer

    step = 300 * 10**9
    start = 1_780_000_000 * 10**9 + np.arange(n, dtype=np.int64) * step
    close = 24000 + np.cumsum(np.random.default_rng(0).normal(0, 5, n))
    buf = SeriesBuffer(256265, "5m", capacity=n + 16)
    buf.upsert(CandleBatch("5m", np.full(n, 256265, np.int64), start, close - 1, close + 6, close - 6,
                           close, np.full(n, 1000.0), np.full(n, np.nan), np.ones(n, np.int64)))
    last = int(start[-1])

    def bump(k: int) -> None:  # a new tick on the forming candle
        buf.set_forming(Candle(256265, "5m", last + step, close[-1], close[-1] + k % 7, close[-1] - 3,
                               close[-1] + (k % 5), 10.0 + k, closed=False))

    return buf, bump


def bench_live_df(n: int = 100_000, reps: int = 30) -> dict[str, float]:
    from kiteohlc_lab.notebook.live import LiveCandles

    buf, bump = make_series(n)
    live = LiveCandles("NIFTY", "5m", manager=_OneSeries(buf))
    cold = []
    for k in range(reps):
        bump(k)
        t = time.perf_counter()
        df = live.df
        cold.append(time.perf_counter() - t)
    assert len(df) == n + 1
    t = time.perf_counter()
    m = 20_000
    for _ in range(m):
        live.df
    cached = (time.perf_counter() - t) / m
    t = time.perf_counter()
    for _ in range(2000):
        live.close
    attr = (time.perf_counter() - t) / 2000
    return {"rows": n, "cold_ms": statistics.median(cold) * 1e3, "cached_us": cached * 1e6,
            "live_close_us": attr * 1e6}


def bench_widget(n: int = 100_000, seconds: float = 6.0) -> dict[str, float]:
    from kiteohlc_lab.notebook.widgets import LiveView

    buf, bump = make_series(n)
    view = LiveView("NIFTY", "5m", manager=_OneSeries(buf), autostart=False)
    for k in range(3):  # warm-up (imports, fonts)
        bump(k)
        view.refresh()
    view.renders = 0
    view.render_seconds = 0.0
    # ticks arriving continuously (every 50 ms), the view's own thread at the default 0.5 s
    stop = threading.Event()

    def feed() -> None:
        k = 10
        while not stop.wait(0.05):
            bump(k)
            k += 1

    feeder = threading.Thread(target=feed, daemon=True)
    cpu0, t0 = time.process_time(), time.perf_counter()
    feeder.start()
    view.start()
    stop.wait(seconds)
    view.close()
    stop.set()
    feeder.join()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    per_render = view.render_seconds / max(view.renders, 1)
    # a no-change check (coalesced)
    v2 = LiveView("NIFTY", "5m", manager=_OneSeries(buf), autostart=False)
    t = time.perf_counter()
    for _ in range(2000):
        v2.refresh()
    skip = (time.perf_counter() - t) / 2000
    v2.close()
    return {"renders_per_s": view.renders / wall, "render_ms": per_render * 1e3,
            "render_cpu_share": view.render_seconds / wall, "process_cpu_share": cpu / wall,
            "skip_us": skip * 1e6}


# A replay as a notebook user runs it, in a fresh kernel: one cell loads the tool (``%load_ext``;
# ``import polars`` / ``import pandas`` for the baselines), the user takes a second to type the
# next, and that cell is timed: ``%ohlc_stream ALL 1m 5m 15m --source replay --tape X --speed 0``,
# the candles it shows, and ``wait()`` (embedded Redis + SQLite, store start-up included), against
# polars' and pandas' read of the tape + the same candles.
MAGIC = r"""
import json, os, sys, time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "kiteohlc_lab")
time.sleep(1.0)  # the user types the next cell
t0 = time.perf_counter()
live = shell.run_line_magic("ohlc_stream", f"ALL 1m 5m 15m --source replay --tape {sys.argv[1]} --speed 0")
live._repr_html_()  # what the cell shows
import kiteohlc_lab
assert kiteohlc_lab.wait(3600)
t1 = time.perf_counter()
print(json.dumps({"t": t1 - t0}))
sys.stdout.flush()
from kiteohlc_lab.stores.embedded import shutdown_embedded
shutdown_embedded(os.environ["KITEOHLC_DATA_DIR"])
os._exit(0)
"""

def bench_replay_magic(ticks: int = 1_000_000, repeat: int = 3,
                       formats: tuple[str, ...] = ("csv", "parquet")) -> dict[str, dict[str, list[float]]]:
    """Seconds of the timed cell per tape format and contender, each run in a fresh kernel
    (process), alternating: the magic, polars and pandas (bench_replay's contenders, their imports
    made a cell before the timed one). polars is left out where it is not installed."""
    import importlib.util
    import json
    import subprocess

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_replay import PANDAS, POLARS, make_tapes

    typed = "time.sleep(1.0)  # the user types the next cell\n"
    cells = [("magic", MAGIC)]
    if importlib.util.find_spec("polars") is not None:
        cells.append(("polars", "import time, polars\n" + typed + POLARS))
    cells.append(("pandas", "import time, numpy, pandas\n" + typed + PANDAS))
    tapes = make_tapes(ticks, Path(tempfile.gettempdir()) / "kiteohlc_bench_tapes", list(formats))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(root, "kiteohlc_lab")],
                   check=True, capture_output=True)
    out: dict[str, dict[str, list[float]]] = {f: {name: [] for name, _ in cells} for f in formats}
    for fmt in formats:
        for _ in range(repeat):
            for name, code in cells:
                with tempfile.TemporaryDirectory() as data:
                    env = dict(os.environ, KITEOHLC_DATA_DIR=data,
                               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
                    res = subprocess.run([sys.executable, "-c", code, str(tapes[fmt])], env=env,
                                         capture_output=True, text=True, timeout=600)
                    if res.returncode != 0:
                        raise RuntimeError(f"{name} run failed: {res.stderr.strip().splitlines()[-1:]}")
                    line = next(x for x in res.stdout.splitlines() if x.startswith("{"))
                    out[fmt][name].append(json.loads(line)["t"])
    return out


def main() -> int:
    for fmt, r in bench_replay_magic().items():
        m = statistics.median(r["magic"])
        span = lambda v: f"{min(v):.2f}-{max(v):.2f} s"  # noqa: E731
        others = "; ".join(f"{name} (imported a cell before) {span(v)}, x{statistics.median(v) / m:.2f}"
                           for name, v in r.items() if name != "magic")
        print(f"1M-tick {fmt} replay from the cell, fresh kernel, %load_ext a cell before: "
              f"%ohlc_stream ALL 1m 5m 15m --source replay --speed 0 + shown + wait() {span(r['magic'])}; "
              f"{others} (x > 1: the magic is faster; medians of {len(r['magic'])})")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["KITEOHLC_DATA_DIR"] = os.path.join(tmp, "data")
        for k in [k for k in os.environ if k.startswith("KITE_")]:
            del os.environ[k]
        a = bench_first_candle()
        print(f"%load_ext {a['load_ext_s']:.2f} s, then at once %ohlc_stream NIFTY 5m (simulator): "
              f"magic returns in {a['magic_returns_s']:.2f} s, first candle in candles() after "
              f"{a['first_candle_s']:.2f} s")
        b = bench_live_df()
        print(f"live.df on {b['rows']:,} candles: cold {b['cold_ms']:.2f} ms, cached {b['cached_us']:.1f} us; "
              f"live.close {b['live_close_us']:.1f} us")
        c = bench_widget()
        print(f"LiveView refresh (last 100 of 100k candles, ticks every 50 ms, refresh 0.5 s): "
              f"{c['renders_per_s']:.2f} renders/s, {c['render_ms']:.0f} ms per render -> "
              f"{c['render_cpu_share'] * 100:.0f}% of one core in rendering "
              f"(process {c['process_cpu_share'] * 100:.0f}%); no-change check {c['skip_us']:.1f} us")
        from kiteohlc_lab import api

        api.reset()
    return 0


if __name__ == "__main__":
    sys.exit(main())
