"""LiveView without a browser: comm messages are recorded (as in ipywidgets' own tests)."""

from __future__ import annotations

import gc
import threading

import pytest

from conftest_notebook import FakeSeries, fake_manager, state_updates, wait_for, widget_comm  # noqa: F401
from kiteohlc_lab.notebook.widgets import LiveView, close_all


@pytest.fixture
def series(fake_manager):
    s = FakeSeries("5m", n=20)
    fake_manager.buffers[("NIFTY", "5m")] = s
    return s


def test_initial_render_and_coalescing(series, fake_manager, widget_comm):
    view = LiveView("NIFTY", "5m", manager=fake_manager, autostart=False)
    try:
        assert view.renders == 1 and view.chart.value[:4] == b"\x89PNG"
        assert "NIFTY 5m" in view.status.value and "forming" in view.table.value
        first = view.chart.value
        assert view.refresh() is False and view.refresh() is False
        assert (view.renders, view.skipped) == (1, 2)
        series.tick(23000.0)
        series.tick(23010.0)  # two changes, one render
        assert view.refresh() is True and view.refresh() is False
        assert view.renders == 2 and view.chart.value != first
        # what went over the wire: one PNG per render on the Image's comm
        image_comm = view.chart.comm
        assert len(state_updates(image_comm, "value")) == view.renders == 2
    finally:
        view.close()


def test_thread_refreshes_and_stops_on_close(series, fake_manager, widget_comm):
    view = LiveView("NIFTY", "5m", manager=fake_manager, refresh=0.02)
    assert view.running
    series.add(1)
    assert wait_for(lambda: view.renders >= 2, timeout=5)
    assert wait_for(lambda: view.skipped >= 3, timeout=5)  # no change: no render
    renders = view.renders
    view.close()
    assert not view.running
    series.add(1)
    assert not wait_for(lambda: view.renders > renders, timeout=0.2)


def test_front_end_close_stops_thread(series, fake_manager, widget_comm):
    view = LiveView("NIFTY", "5m", manager=fake_manager, refresh=0.02)
    thread = view._thread
    view.comm.front_end_close()
    thread.join(2)
    assert not thread.is_alive()
    view.close()


def test_dropped_view_stops(series, fake_manager, widget_comm):
    from ipywidgets.widgets.widget import _instances

    view = LiveView("NIFTY", "5m", manager=fake_manager, refresh=0.02)
    thread = view._thread
    for w in (view, view.status, view.chart, view.table):  # as if the registry held them weakly
        _instances.pop(w.model_id, None)
        for part in ("layout", "style"):
            if getattr(w, part, None) is not None:
                getattr(w, part).close()
    del view, w
    gc.collect()
    thread.join(2)
    assert not thread.is_alive()


def test_refresh_error_is_shown_not_fatal(series, fake_manager, widget_comm, monkeypatch):
    view = LiveView("NIFTY", "5m", manager=fake_manager, refresh=0.02)
    try:
        broken = threading.Event()

        def boom(closed_only=False):
            broken.set()
            raise RuntimeError("store went away")

        monkeypatch.setattr(series, "frame", boom)
        series.add(1)
        assert wait_for(lambda: view.errors >= 1, timeout=5)
        assert "store went away" in view.status.value
        assert view.running
    finally:
        view.close()


def test_close_all(series, fake_manager, widget_comm):
    views = [LiveView("NIFTY", "5m", manager=fake_manager, refresh=0.05) for _ in range(2)]
    assert close_all() >= 2
    assert not any(v.running for v in views)


def test_slow_renders_back_off(series, fake_manager, widget_comm):
    view = LiveView("NIFTY", "5m", manager=fake_manager, refresh=0.5, autostart=False)
    try:
        view.last_render_seconds = 1.0
        assert view.next_wait(rendered=True) == 4.0  # at most a quarter of a core
        assert view.next_wait(rendered=False) == 0.5  # a no-change check is cheap
        view.last_render_seconds = 0.01
        assert view.next_wait(rendered=True) == 0.5
    finally:
        view.close()


def test_replay_progress_bar_shows_ticks_per_second_and_eta_then_completes(tmp_path, monkeypatch):
    """A replay's bar in the cell (``%ohlc_stream --source replay``): while the tape plays, its label
    says how far (percent, ticks of the total), how fast (ticks/s) and how long is left (ETA);
    when the tape is done the bar is full and green. A tape below MIN_TICKS gets no bar."""
    import kiteohlc_lab
    from kiteohlc_lab import api
    from kiteohlc_lab.feeds.synthetic import make_ticks, write_tape
    from kiteohlc_lab.notebook import progress

    ticks, syms = make_ticks(20_000, seed=5)  # 22,498 s of tape
    path = write_tape(tmp_path / "day.parquet", ticks, syms)
    small = kiteohlc_lab.stream("ALL", "1m", source="replay", tape=str(path), speed=0)
    assert kiteohlc_lab.wait(60)
    assert progress.show_replay_progress(api.manager().streams[small.name]) is None  # 20k < MIN_TICKS

    monkeypatch.setattr(progress, "MIN_TICKS", 1)
    info = kiteohlc_lab.stream("ALL", "1m", source="replay", tape=str(path), speed=30_000)  # ~0.75 s
    stream = api.manager().streams[info.name]
    before = set(threading.enumerate())
    box = progress.show_replay_progress(stream, interval=0.05)
    assert box is not None
    [updater] = [t for t in set(threading.enumerate()) - before if t.name == "kiteohlc-replay-progress"]
    bar, label = box.children
    seen: list[str] = []
    label.observe(lambda change: seen.append(change["new"]), "value")
    assert stream.done.wait(60)
    updater.join(5)
    assert not updater.is_alive()
    assert bar.value == 1.0 and bar.bar_style == "success"
    running = [s for s in seen if "ETA" in s]
    assert running, seen  # at least one update while it played
    assert all("ticks/s" in s and f"of {len(ticks):,} ticks" in s for s in running)
    assert not any("0.0M ticks/s" in s for s in seen[1:])  # thousands a second, said so
    assert seen[-1].startswith("replay day.parquet: 100%")
