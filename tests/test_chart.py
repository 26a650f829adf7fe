"""LiveChart without a browser: the custom messages on its comm are recorded (ipywidgets' test
pattern) and checked: one full sync when a view asks, then only small deltas as candles form and
close; amendments and rewrites; overlays and markers; the updater stops with the widget."""

from __future__ import annotations

import gc
import json
import time

import numpy as np
import pandas as pd
import pytest

from conftest import needs
from conftest_notebook import FakeSeries, fake_manager, shell, wait_for, widget_comm  # noqa: F401
from kiteohlc_lab.notebook import chart as chart_mod

pytestmark = needs(chart_mod.STATIC.is_file(),
                   "kiteohlc_lab/static/chart.js is not built (pip install -e . with Node.js and npm)")


def custom(comm) -> list[tuple[dict, list]]:
    """(content, buffers) of the custom messages sent on ``comm``, in order."""
    out = []
    for args, kwargs in comm.messages:
        data = kwargs.get("data") if "data" in kwargs else (args[0] if args else None)
        if isinstance(data, dict) and data.get("method") == "custom":
            out.append((data["content"], list(kwargs.get("buffers") or [])))
    return out


def front_sync(chart) -> None:
    """What the front end does on every render: ask for a full load."""
    chart._handle_msg({"content": {"data": {"method": "custom", "content": {"type": "sync"}}},
                       "buffers": []})


def size(msg: tuple[dict, list]) -> int:
    content, buffers = msg
    return len(json.dumps(content)) + sum(len(memoryview(b).cast("B")) for b in buffers)


@pytest.fixture
def series(fake_manager):
    s = FakeSeries("5m", n=20)
    fake_manager.buffers[("NIFTY", "5m")] = s
    return s


@pytest.fixture
def chart(series, fake_manager, widget_comm):
    c = chart_mod.LiveChart("NIFTY", "5m", manager=fake_manager, autostart=False)
    yield c
    c.close()


def test_one_full_sync_then_small_deltas(chart, series):
    assert chart.poll() is False  # no view yet: nothing is sent (the view asks on render)
    assert custom(chart.comm) == []
    front_sync(chart)
    msgs = custom(chart.comm)
    assert len(msgs) == 1
    full, buffers = msgs[0]
    assert full["kind"] == "full" and full["n"] == 20 and full["cols"][0] == "time"
    assert full["tick"] == 0.05 and full["title"] == "NIFTY 5m"
    assert len(buffers) == 6 and all(len(b) == 20 * 8 for b in buffers)
    cols = {name: np.frombuffer(b, np.float64) for name, b in zip(full["cols"], buffers)}
    df = series.frame()
    # times are UTC seconds + 19800: the chart's axis reads IST wall clock
    first = df.index[0]
    assert cols["time"][0] == first.value // 10**9 + 19800
    assert pd.Timestamp(cols["time"][0], unit="s").strftime("%H:%M") == first.strftime("%H:%M") == "09:15"
    np.testing.assert_array_equal(cols["close"], df.close.to_numpy())
    np.testing.assert_array_equal(cols["volume"], df.volume.to_numpy())

    # the forming candle changes: one small message with just that bar
    series.tick(23000.0)
    assert chart.poll() is True
    content, bufs = custom(chart.comm)[-1]
    assert content["kind"] == "bars" and content["seq"] == full["seq"] + 1 and bufs == []
    assert content["bars"] == [[cols["time"][-1], *[float(x) for x in series.rows[-1][1:]]]]
    assert content["bars"][0][4] == 23000.0
    assert size(custom(chart.comm)[-1]) < 200
    assert chart.poll() is False  # nothing moved: nothing sent

    # a candle closes and a new one forms: only the new bar (the closed one was already drawn)
    series.add(1)
    assert chart.poll() is True
    content, _ = custom(chart.comm)[-1]
    assert [b[0] for b in content["bars"]] == [cols["time"][-1] + 300]
    assert content["seq"] == full["seq"] + 2

    for p in np.linspace(23000, 23050, 30):  # 30 ticks, 30 polls: 30 deltas, no second full load
        series.tick(float(p))
        chart.poll()
    kinds = [m[0]["kind"] for m in custom(chart.comm)]
    assert kinds.count("full") == 1 and kinds.count("bars") == 32
    assert max(size(m) for m in custom(chart.comm)[1:]) < 250
    assert [m[0]["seq"] for m in custom(chart.comm)] == list(range(1, 34))
    assert chart.fulls == 1 and chart.deltas == 32


def test_ticks_between_polls_coalesce(chart, series):
    front_sync(chart)
    for p in range(50):
        series.tick(23000.0 + p)
    assert chart.poll() is True
    msgs = custom(chart.comm)
    assert len(msgs) == 2 and len(msgs[1][0]["bars"]) == 1 and msgs[1][0]["bars"][0][4] == 23049.0


def test_amended_candle_is_sent_alone(chart, series):
    front_sync(chart)
    series.add(1)  # the old forming candle closes
    chart.poll()
    with series._lock:  # a late tick amends the last closed candle (late_policy="amend")
        series.rows[-2][2] += 5.0
        series.version += 1
    assert chart.poll() is True
    content, _ = custom(chart.comm)[-1]
    t = (series.rows[-2][0] // 10**9) + 19800
    assert content["kind"] == "bars" and [b[0] for b in content["bars"]] == [t]
    assert content["bars"][0][2] == series.rows[-2][2]


def test_rewritten_history_reloads(chart, series):
    front_sync(chart)
    with series._lock:  # a repaired gap: rows appear before the end
        rows = series.rows
        extra = rows[:1].copy()
        extra[0, 0] -= series.step
        series.rows = np.vstack([extra, rows])
        series.version += 1
    assert chart.poll() is True
    content, bufs = custom(chart.comm)[-1]
    assert content["kind"] == "full" and content["n"] == 21 and len(bufs) == 6


def test_each_render_resyncs(chart, series):
    front_sync(chart)
    series.tick(23001.0)
    chart.poll()
    front_sync(chart)  # re-displayed widget, reloaded page
    kinds = [m[0]["kind"] for m in custom(chart.comm)]
    assert kinds == ["full", "bars", "full"]
    series.tick(23002.0)
    chart.poll()
    assert custom(chart.comm)[-1][0]["seq"] == custom(chart.comm)[-2][0]["seq"] + 1


def test_switching_timeframe_reloads(chart, series, fake_manager):
    fake_manager.buffers[("NIFTY", "1m")] = FakeSeries("1m", n=7)
    front_sync(chart)
    chart.tf = "1m"
    content, bufs = custom(chart.comm)[-1]
    assert content["kind"] == "full" and content["n"] == 7 and content["title"] == "NIFTY 1m"
    assert chart.title == "NIFTY 1m"


def front_set(chart, **state) -> None:
    """What the picker in the chart's header does: set traits from the front end."""
    chart._handle_msg({"content": {"data": {"method": "update", "state": state, "buffer_paths": []}},
                       "buffers": []})


def test_picker_switches_symbol_and_timeframe_from_the_front_end(chart, series, fake_manager):
    from kiteohlc_lab.errors import KiteOHLCError

    fake_manager.streams["s1"] = {"state": "running", "symbols": ["NIFTY", "NSE:RELIANCE"],
                                  "timeframes": ["1m", "5m"]}
    fake_manager.streams["s2"] = {"state": "running", "symbols": ["BANKNIFTY"], "timeframes": ["10s"]}
    fake_manager.buffers[("NIFTY", "1m")] = FakeSeries("1m", n=7)
    fake_manager.buffers[("BANKNIFTY", "10s")] = FakeSeries("10s", n=3)
    chart._refresh_choices(force=True)
    assert chart.symbol_choices == ["NIFTY", "NSE:RELIANCE", "BANKNIFTY"]
    assert chart.tf_choices == ["1m", "5m"]  # what is streamed for the shown symbol
    front_sync(chart)
    front_set(chart, tf="1m")
    content, _ = custom(chart.comm)[-1]
    assert content["kind"] == "full" and content["n"] == 7 and content["title"] == "NIFTY 1m"
    # another symbol: the timeframe list follows it (a tf it does not stream stays listed as shown)
    front_set(chart, symbol="BANKNIFTY", tf="10s")
    assert chart.title == "BANKNIFTY 10s" and custom(chart.comm)[-1][0]["n"] == 3
    assert chart.tf_choices == ["10s"] and chart.error == ""

    real = fake_manager.series

    def series_or_fail(symbol, tf):
        if symbol == "NOPE":
            raise KiteOHLCError("unknown symbol 'NOPE'; did you mean NIFTY?")
        return real(symbol, tf)

    fake_manager.series = series_or_fail
    sent = len(custom(chart.comm))
    front_set(chart, symbol="NOPE")  # a bad pick changes nothing and says why in the header
    assert chart.symbol == "BANKNIFTY" and "NOPE" in chart.error and len(custom(chart.comm)) == sent
    front_set(chart, tf="7x")
    assert chart.tf == "10s" and "7x" in chart.error
    with pytest.raises(KiteOHLCError):  # from Python, the same mistake raises
        chart.symbol = "NOPE"
    assert chart.symbol == "BANKNIFTY"


def test_overlays_and_markers(chart, series):
    front_sync(chart)
    chart.add_line("sma5", lambda df: df.close.rolling(5).mean())
    content, bufs = custom(chart.comm)[-1]
    assert content["kind"] == "overlay" and content["reset"] and content["name"] == "sma5"
    closed = series.frame(closed_only=True)
    np.testing.assert_allclose(np.frombuffer(bufs[1], np.float64),
                               closed.close.rolling(5).mean().to_numpy(), equal_nan=True)
    series.tick(22990.0)  # forming only: the overlay (closed candles) is not re-evaluated
    chart.poll()
    assert custom(chart.comm)[-1][0]["kind"] == "bars"
    series.add(1)  # a candle closes: one new overlay point
    chart.poll()
    content, bufs = custom(chart.comm)[-1]
    assert content["kind"] == "overlay" and "reset" not in content and len(content["points"]) == 1
    assert content["points"][0][1] == pytest.approx(series.frame(closed_only=True).close.iloc[-5:].mean())
    # a broken overlay shows empty, the chart goes on
    chart.add_histogram("bad", lambda df: 1 / 0)
    assert chart.overlays["bad"].error.startswith("ZeroDivisionError")
    # markers land on the candle holding their time, sent by the updater
    when = series.frame().index[-3] + pd.Timedelta("1min")
    chart.add_marker(when, "buy", "belowBar")
    assert chart.poll() is True
    content, _ = custom(chart.comm)[-1]
    assert content["kind"] == "markers"
    assert content["markers"] == [{"time": float(series.frame().index[-3].value // 10**9 + 19800),
                                   "position": "belowBar", "shape": "arrowUp", "color": "#26a69a",
                                   "text": "buy"}]
    front_sync(chart)  # a reload carries overlays and markers
    content, bufs = custom(chart.comm)[-1]
    assert [o["name"] for o in content["overlays"]] == ["sma5", "bad"] and len(bufs) == 8
    assert len(content["markers"]) == 1


def test_updater_sends_at_most_rate(series, fake_manager, widget_comm):
    c = chart_mod.LiveChart("NIFTY", "5m", manager=fake_manager, rate=20)
    try:
        front_sync(c)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:  # ~1000 ticks in a second
            series.tick(23000.0 + (time.monotonic() - t0))
            time.sleep(0.001)
        elapsed = time.monotonic() - t0
        assert wait_for(lambda: c.polls >= 5, timeout=2)
        deltas = [m for m in custom(c.comm) if m[0]["kind"] == "bars"]
        assert 8 <= len(deltas) <= 20 * elapsed + 3, len(deltas)
    finally:
        c.close()


def test_closed_chart_stops_its_updater(series, fake_manager, widget_comm):
    c = chart_mod.LiveChart("NIFTY", "5m", manager=fake_manager, rate=50)
    assert c.running
    c.close()
    assert not c.running
    # the front end closing the comm (cell cleared, notebook closed) stops it too
    c = chart_mod.LiveChart("NIFTY", "5m", manager=fake_manager, rate=50)
    thread = c._thread
    c.comm.front_end_close()
    thread.join(2)
    assert not thread.is_alive()
    c.close()


def test_dropped_chart_stops(series, fake_manager, widget_comm):
    from ipywidgets.widgets.widget import _instances

    c = chart_mod.LiveChart("NIFTY", "5m", manager=fake_manager, rate=50)
    thread = c._thread
    for w in (c, c.layout):
        _instances.pop(w.model_id, None)
    c.layout.close()
    del c, w
    gc.collect()
    thread.join(2)
    assert not thread.is_alive()


def test_snapshot_of_a_series_buffer_matches_its_frame():
    from kiteohlc_lab.core.candles import Candle, CandleBatch
    from kiteohlc_lab.core.series import SeriesBuffer

    n = 1000
    start = pd.Timestamp("2024-05-02 09:15", tz="Asia/Kolkata").value + np.arange(n) * 60 * 10**9
    close = 22000 + np.cumsum(np.random.default_rng(1).normal(0, 2, n))
    batch = CandleBatch(tf="1m", token=np.full(n, 256265), start=start, open=close - 1, high=close + 3,
                        low=close - 4, close=close, volume=np.arange(n, dtype=float), oi=np.full(n, np.nan),
                        ticks=np.ones(n, np.int64))
    buf = SeriesBuffer(256265, "1m")
    buf.upsert(batch)
    buf.set_forming(Candle(256265, "1m", int(start[-1] + 60 * 10**9), 1.0, 2.0, 0.5, 1.5, 7.0, closed=False))

    class Generic:  # only version + frame(): the general path
        version = buf.version

        @staticmethod
        def frame():
            return buf.frame()

    fast, slow = chart_mod.snapshot(buf, None), chart_mod.snapshot(Generic(), None)
    assert (fast.total, fast.closed) == (slow.total, slow.closed) == (n + 1, n)
    np.testing.assert_array_equal(fast.rows, slow.rows)
    tail = chart_mod.snapshot(buf, 10)
    np.testing.assert_array_equal(tail.rows, fast.rows[-11:])


def test_first_sync_of_100k_candles_is_one_quick_message(fake_manager, widget_comm):
    s = FakeSeries("1m", n=100_000)
    fake_manager.buffers[("NIFTY", "1m")] = s
    c = chart_mod.LiveChart("NIFTY", "1m", manager=fake_manager, autostart=False)
    try:
        t0 = time.perf_counter()
        front_sync(c)
        elapsed = time.perf_counter() - t0
        (content, bufs), = custom(c.comm)
        assert content["n"] == 100_000 and sum(len(b) for b in bufs) == 100_000 * 6 * 8
        assert len(json.dumps(content)) < 1000
        assert elapsed < 0.5, elapsed
    finally:
        c.close()


def test_magic_and_live_method(shell, series, fake_manager, widget_comm):
    from IPython.core.error import UsageError

    c = shell.run_line_magic("ohlc_chart", "NIFTY 5m --rate 5 --height 300")
    try:
        assert type(c).__name__ == "LiveChart" and c.rate == 5 and c.height == 300 and c.running
    finally:
        c.close()
    with pytest.raises(UsageError, match="unknown symbol"):
        shell.run_line_magic("ohlc_chart", "NOPE 5m")
    with pytest.raises(UsageError, match="--rate"):
        shell.run_line_magic("ohlc_chart", "NIFTY 5m --rate 0")
    from kiteohlc_lab.notebook.live import LiveCandles

    c = LiveCandles("NIFTY", "5m", manager=fake_manager).chart(autostart=False)
    assert c.symbol == "NIFTY" and c.tf == "5m"
    c.close()


def test_missing_javascript_is_one_clear_error(shell, series, fake_manager, monkeypatch, tmp_path):
    from IPython.core.error import UsageError

    monkeypatch.setattr(chart_mod, "STATIC", tmp_path / "chart.js")
    with pytest.raises(chart_mod.ChartUnavailable, match="Node.js and npm.*live.view"):
        chart_mod.LiveChart("NIFTY", "5m", manager=fake_manager)
    with pytest.raises(UsageError, match="not built"):
        shell.run_line_magic("ohlc_chart", "NIFTY 5m")


def test_a_chart_pins_its_series_until_it_closes(tmp_path, widget_comm):
    """The idle-series LRU never drops the series a chart shows; closing (or retargeting) unpins."""
    from kiteohlc_lab.config import KiteOHLC
    from kiteohlc_lab.runtime import Manager

    m = Manager(KiteOHLC(data_dir=str(tmp_path / "d"), max_idle_series=4))
    try:
        c = chart_mod.LiveChart(111, "1m", manager=m, autostart=False, tick_size=0.05)
        shown = c.live.series
        assert m.memory_status()["pinned"] == 1
        for i in range(50):
            m.candles(1_000_000 + i, "1m")
        assert c.live.series is shown and (111, "1m") in m.buffers
        c.tf = "5m"  # the old series is no longer shown: unpinned; the new one pinned
        assert m._pins == {(111, "5m"): 1}
        c.close()
        assert m.memory_status()["pinned"] == 0
        for i in range(50):
            m.candles(2_000_000 + i, "1m")
        assert (111, "1m") not in m.buffers and (111, "5m") not in m.buffers
        # the front end closing the comm unpins too
        c = chart_mod.LiveChart(111, "1m", manager=m, autostart=False, tick_size=0.05)
        assert m.memory_status()["pinned"] == 1
        c.comm.front_end_close()
        assert m.memory_status()["pinned"] == 0
        c.close()
    finally:
        m.shutdown()
