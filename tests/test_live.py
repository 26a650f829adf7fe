"""LiveCandles: the current frame, cached by version; delegation; reprs; plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest_notebook import FakeManager, FakeSeries, fake_manager  # noqa: F401
from kiteohlc_lab.notebook.live import LiveCandles
from kiteohlc_lab.notebook.plots import plot_candles, png_bytes


@pytest.fixture
def live(fake_manager):
    fake_manager.buffers[("NIFTY", "5m")] = FakeSeries("5m", n=30)
    return LiveCandles("NIFTY", "5m", manager=fake_manager)


def test_df_is_cached_until_version_changes(live, fake_manager):
    s = fake_manager.buffers[("NIFTY", "5m")]
    first = live.df
    assert live.df is first and live.df is first
    assert s.frames == 1
    s.add(2)
    assert len(live.df) == 32 and s.frames == 2
    s.tick(22100.0)
    assert live.df["close"].iloc[-1] == 22100.0


def test_delegation(live):
    sma = live.close.rolling(20).mean()
    assert isinstance(sma, pd.Series) and len(sma) == 30 and not np.isnan(sma.iloc[-1])
    assert live["volume"].sum() == 30 * 1500.0
    assert len(live) == 30
    assert live.iloc[-1]["close"] == live.df["close"].iloc[-1]
    assert list(live.columns) == ["open", "high", "low", "close", "volume"]
    with pytest.raises(AttributeError):
        live._repr_latex_  # private names never reach the frame (IPython display probing)
    with pytest.raises(AttributeError):
        live.no_such_column


def test_closed_excludes_forming(live):
    assert len(live.closed) == 29
    assert live.closed.attrs.get("forming") is None
    assert live.forming == live.df.index[-1]


def test_repr_marks_forming_row_and_header(live, fake_manager):
    fake_manager.start("NIFTY", "5m")
    text = repr(live)
    assert text.splitlines()[0].startswith("LiveCandles NIFTY 5m: 30 candles, running (sim)")
    assert "◀ forming" in text.splitlines()[-1]
    assert len(text.splitlines()) == 2 + 10  # header, column names, 10 rows
    page = live._repr_html_()
    assert "NIFTY 5m" in page and "<table" in page and page.count("◀ forming") == 1


def test_repr_empty(fake_manager):
    live = LiveCandles("BANKNIFTY", "1m", manager=fake_manager)
    assert "no candles yet" in repr(live) and "no candles yet" in live._repr_html_()
    assert "not streaming" in repr(live)


def test_plot_figure(live):
    from matplotlib.figure import Figure

    fig = live.plot(last=20)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert png_bytes(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_candles_handles_oi_index_volume_and_empty():
    s = FakeSeries("1m", n=50, with_oi=True)
    df = s.frame()
    assert "oi" in df.columns and str(df.index.tz) == "Asia/Kolkata"
    fig = plot_candles(df, last=10, title="X")
    # the wall-clock IST times are drawn: 09:15 IST start, not 03:45 UTC
    assert png_bytes(fig)
    no_volume = df.assign(volume=np.nan)
    assert len(plot_candles(no_volume).axes) == 1  # an index has no volume: no volume panel
    empty = plot_candles(df.iloc[:0])
    texts = [t.get_text() for ax in empty.axes for t in ax.texts]
    assert texts == ["no candles yet"]


def test_wall_clock_conversion():
    from kiteohlc_lab.notebook.plots import _wall_clock

    df = FakeSeries("5m", n=2).frame()
    out = _wall_clock(df)
    assert out.index.tz is None and out.index[0] == pd.Timestamp("2024-05-02 09:15")
    assert list(out.columns) == ["open", "high", "low", "close", "volume"]


def test_a_live_object_pins_its_series_until_it_is_dropped(tmp_path):
    """The idle-series LRU (``max_idle_series``) never drops a series a LiveCandles shows; once the
    object is garbage-collected (or released) the series is idle again and can go."""
    import gc

    from kiteohlc_lab.config import KiteOHLC
    from kiteohlc_lab.runtime import Manager

    m = Manager(KiteOHLC(data_dir=str(tmp_path / "d"), max_idle_series=4))
    try:
        live = LiveCandles(111, "1m", manager=m)
        assert live.pinned and m.memory_status()["pinned"] == 1  # pinned before the first read
        shown = live.series
        other = LiveCandles(222, "1m", manager=m)
        released = other.series
        other.release()
        other.release()  # idempotent
        assert not other.pinned and m.memory_status()["pinned"] == 1
        for i in range(50):  # reads of many instruments nobody shows
            m.candles(1_000_000 + i, "1m")
        assert live.series is shown and (111, "1m") in m.buffers
        assert (222, "1m") not in m.buffers and other.series is not released  # released: evicted
        assert not other.pinned  # reading a released object does not pin it again
        del live, shown
        gc.collect()
        assert m.memory_status()["pinned"] == 0
        for i in range(50):
            m.candles(2_000_000 + i, "1m")
        assert (111, "1m") not in m.buffers  # dropped with its object: idle, evicted
        # an unknown symbol: no pin (and no error) until it resolves; reading it says why
        from kiteohlc_lab.errors import KiteOHLCError

        nope = LiveCandles("NOPE_NOT_A_SYMBOL", "1m", manager=m)
        assert not nope.pinned
        with pytest.raises(KiteOHLCError):
            nope.series
    finally:
        m.shutdown()
