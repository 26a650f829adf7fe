"""The live chart's cost in the kernel vs the PNG view, and the first paint of 100k candles.

Run: ``python benchmarks/bench_chart.py`` (about 1.5 minutes; temporary data dir, no credentials).

1. A stream from a Kite-protocol simulator ticking 20 times a second (NSE:RELIANCE 1m, a day of
   history), in this process. For ``SECONDS`` each: the stream alone, + 1 chart, + 4 charts (the same
   symbol at 1m, 5m, 15m, 1h), + the PNG view (``live.view()`` at its default 2 refreshes/s). Widget
   messages go to a comm that serialises them as the kernel would (JSON + buffers) and counts bytes.
   Reported: the process's CPU share (of one core) and the share added to the stream alone, bytes/s,
   messages/s.
2. Time to first paint of 100k candles in Chromium (when installed): the served ``/chart`` page over
   server-sent events, from navigation to the candles drawn (``data-loads`` set after ``setData``),
   and the kernel-side cost of building the full-sync message.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # FakeSeries/FakeManager for part 2
SECONDS = float(os.environ.get("BENCH_SECONDS", "15"))


class CountingComm:
    """A widget comm that serialises like ipykernel's and counts what would go to the front end."""

    comm_id_counter = 0
    kernel = "Truthy"

    def __init__(self, *a, **k):
        CountingComm.comm_id_counter += 1
        self.comm_id = f"bench-{CountingComm.comm_id_counter}"
        self.bytes = 0
        self.messages = 0

    def open(self, *a, **k):
        pass

    def on_msg(self, *a, **k):
        pass

    def on_close(self, *a, **k):
        pass

    def close(self, *a, **k):
        pass

    def send(self, data=None, metadata=None, buffers=None):
        self.bytes += len(json.dumps(data, separators=(",", ":"))) + sum(
            memoryview(b).nbytes for b in buffers or [])
        self.messages += 1


def cpu_share(seconds: float) -> float:
    t0, c0 = time.perf_counter(), time.process_time()
    time.sleep(seconds)
    return (time.process_time() - c0) / (time.perf_counter() - t0)


def part1() -> list[tuple[str, float, float, float]]:
    import comm
    import ipywidgets.widgets.widget as wmod

    made: list[CountingComm] = []

    def create_comm(**kwargs):
        c = CountingComm()
        made.append(c)
        return c

    comm.create_comm = create_comm
    wmod.comm.create_comm = create_comm

    import kiteohlc_lab as k
    from kiteohlc_lab.feeds.simulator import KiteSimulator
    from kiteohlc_lab.notebook.chart import LiveChart
    from kiteohlc_lab.notebook.widgets import LiveView

    from kiteohlc_lab.api import manager
    from kiteohlc_lab.config import KiteOHLC

    sim = KiteSimulator(tick_interval=0.05).start()
    m = manager()
    m.configure(KiteOHLC(ticker_url=sim.ticker_url, api_url=sim.api_url, api_key=sim.api_key,
                         access_token=sim.access_token))
    k.stream("NSE:RELIANCE", "1m", "5m", "15m", "1h", source="kite", backfill="1d")
    time.sleep(5)  # connected, history loaded
    rows = []

    def measure(name, widgets):
        for c in made:
            c.bytes = c.messages = 0
        share = cpu_share(SECONDS)
        b = sum(c.bytes for c in made) / SECONDS
        n = sum(c.messages for c in made) / SECONDS
        rows.append((name, share, b, n))
        for w in widgets:
            w.close()

    measure("stream alone", [])
    c = LiveChart("NSE:RELIANCE", "1m", manager=m)
    c._on_front(c, {"type": "sync"}, [])
    measure("stream + 1 chart (10/s)", [c])
    charts = [LiveChart("NSE:RELIANCE", tf, manager=m) for tf in ("1m", "5m", "15m", "1h")]
    for c in charts:
        c._on_front(c, {"type": "sync"}, [])
    measure("stream + 4 charts (10/s)", charts)
    v = LiveView("NSE:RELIANCE", "1m", manager=m)
    measure("stream + PNG view (2/s)", [v])
    k.stop()
    sim.stop()
    return rows


def part2() -> dict[str, float]:
    import numpy as np

    from conftest_notebook import FakeManager, FakeSeries
    from kiteohlc_lab.serve_chart import Tracker

    out: dict[str, float] = {}
    s = FakeSeries("1m", n=100_000)
    t0 = time.perf_counter()
    msg = Tracker().full(s)
    out["kernel: full sync of 100k candles (ms)"] = (time.perf_counter() - t0) * 1e3
    out["full sync payload (MB, binary)"] = 100_000 * 6 * 8 / 1e6
    del msg, np
    chromium = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)
    if chromium is None:
        return out
    import socket

    import uvicorn
    from playwright.sync_api import sync_playwright

    from kiteohlc_lab.serve import build_app

    m = FakeManager()
    m.buffers[("NIFTY", "1m")] = s
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(m, "k"), host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.05)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, headless=True,
                               args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = b.new_page(viewport={"width": 1200, "height": 700})
        page.goto(f"http://127.0.0.1:{port}/login")  # the key goes in the form, a session cookie comes back
        page.fill("input[name=key]", "k")
        page.click("button[type=submit]")
        page.wait_for_load_state()
        times, load_ms = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}/chart/NIFTY/1m")
            page.wait_for_function("() => { const c = document.querySelector('.kohlc-chart');"
                                   " return c && c.parentElement.dataset.loads === '1'; }", timeout=30_000)
            times.append(time.perf_counter() - t0)
            # the browser paints the next frame after setData: wait for it, then read the load time
            page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            load_ms.append(float(page.evaluate(
                "() => document.querySelector('.kohlc-chart').parentElement.dataset.loadMs")))
        b.close()
    server.should_exit = True
    th.join(5)
    out["browser: page open -> 100k candles drawn (s, best of 3)"] = min(times)
    out["browser: full load decode + setData of 100k candles (ms, best of 3)"] = min(load_ms)
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        os.environ["KITEOHLC_DATA_DIR"] = d
        for key in ("KITE_API_KEY", "KITE_ACCESS_TOKEN", "KITEOHLC_API_KEY", "KITEOHLC_ACCESS_TOKEN"):
            os.environ.pop(key, None)
        rows = part1()
        base = rows[0][1]
        print(f"{'what':28} {'CPU (of a core)':>16} {'added':>8} {'bytes/s':>10} {'msgs/s':>7}")
        for name, share, b, n in rows:
            print(f"{name:28} {share:16.1%} {share - base:8.1%} {b:10,.0f} {n:7.1f}")
        for k_, v in part2().items():
            print(f"{k_}: {v:.3g}")


if __name__ == "__main__":
    main()
