"""Magics in an in-process TestingShell, against the fake Manager (the API's shape)."""

from __future__ import annotations

import pandas as pd
import pytest
from IPython.core.error import UsageError

from conftest_notebook import FakeManager, fake_manager, make_shell, shell  # noqa: F401
from kiteohlc_lab.notebook.live import LiveCandles
from kiteohlc_lab.notebook.magics import KiteOHLCMagics, StatusTable


def test_stream_returns_live_candles_and_prints_one_line(shell, fake_manager, capsys):
    live = shell.run_line_magic("ohlc_stream", "NIFTY,BANKNIFTY 1m 5m --speed 0")
    assert isinstance(live, LiveCandles) and (live.symbol, live.tf) == ("NIFTY", "1m")
    out = capsys.readouterr().out
    assert out == "No Kite credentials: streaming NIFTY, BANKNIFTY from the built-in simulator\n"
    call = fake_manager.started[-1]
    assert call["symbols"] == ["NIFTY", "BANKNIFTY"] and call["timeframes"] == ["1m", "5m"]
    assert call["source"] is None and call["speed"] == 0.0


def test_stream_passes_every_option(shell, fake_manager, tmp_path):
    tape = tmp_path / "t.csv"
    shell.run_line_magic(
        "ohlc_stream",
        f"NSE:RELIANCE 5m --source replay --tape {tape} --speed 60 --mode ltp --backfill 5d "
        f"--record {tmp_path / 'rec.csv'}")
    call = fake_manager.started[-1]
    assert call == dict(symbols=["NSE:RELIANCE"], timeframes=["5m"], source="replay", tape=str(tape),
                        speed=60.0, mode="ltp", backfill="5d", record=str(tmp_path / "rec.csv"))
    assert callable(fake_manager.progress)  # --backfill shows a progress bar in the cell
    fake_manager.progress(0.5, "backfill NSE:RELIANCE 5m (5d)")  # the thread's update must not raise


@pytest.mark.parametrize("line, expected", [
    ("NIFTY 7x", "7x"),
    ("NOPE 5m", "NOPE"),
    ("NIFTY 5m --speed fast", "fast"),
    ("NIFTY 5m --speed -2", "-2"),
    ("NIFTY 5m --source yahoo", "yahoo"),
    ("NIFTY", "required"),
    (", 5m", "no symbol"),
])
def test_bad_arguments_are_one_line_usage_errors(shell, line, expected):
    with pytest.raises(UsageError) as err:
        shell.run_line_magic("ohlc_stream", line)
    msg = str(err.value)
    assert expected in msg and "\n" not in msg
    assert err.value.__cause__ is None  # no chained traceback


def test_usage_error_shows_without_traceback(fake_manager, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    ip = make_shell()
    ip.run_line_magic("load_ext", "kiteohlc_lab")
    try:
        InteractiveShell.run_cell(ip, "%ohlc_stream NIFTY 7x")  # the plain (non re-raising) path
        err = capsys.readouterr().err
        assert err.startswith("UsageError:") and "7x" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    finally:
        ip.run_line_magic("unload_ext", "kiteohlc_lab")


def test_help_lists_arguments(shell):
    doc = shell.find_line_magic("ohlc_stream").__doc__
    for flag in ("--source", "--tape", "--speed", "--mode", "--backfill", "--record", "TF"):
        assert flag in doc
    assert "--last" in shell.find_line_magic("ohlc_plot").__doc__
    assert "--from" in shell.find_line_magic("ohlc_history").__doc__


def test_config_lists_options_and_masks_token(fake_manager, capsys, monkeypatch):
    monkeypatch.setenv("KITE_ACCESS_TOKEN", "tok-SECRET-123")
    monkeypatch.setenv("KITE_API_KEY", "key42")
    ip = make_shell()
    ip.run_line_magic("load_ext", "kiteohlc_lab")
    try:
        ip.run_line_magic("config", "")
        assert "KiteOHLC" in capsys.readouterr().out
        ip.run_line_magic("config", "KiteOHLC")
        out = capsys.readouterr().out
        for name in ("redis_url", "mongo_uri", "data_dir", "grace", "late_policy", "access_token",
                     "refresh_interval"):
            assert f"KiteOHLC.{name}" in out
        assert "tok-SECRET-123" not in out and "*** (set)" in out
    finally:
        ip.run_line_magic("unload_ext", "kiteohlc_lab")


def test_config_changes_apply_at_next_stream(shell, fake_manager):
    shell.run_line_magic("config", "KiteOHLC.redis_url = 'redis://127.0.0.1:6390/1'")
    shell.run_line_magic("ohlc_stream", "NIFTY 5m")
    assert fake_manager.configured[-1]["redis_url"] == "redis://127.0.0.1:6390/1"
    shell.run_line_magic("config", "KiteOHLC.grace = 2.5")
    shell.run_line_magic("ohlc_stream", "BANKNIFTY 5m")
    assert fake_manager.configured[-1]["grace"] == 2.5


def test_ipython_config_file_values(fake_manager):
    from traitlets.config import Config

    c = Config()  # what ipython_config.py's `c` is
    c.KiteOHLC.redis_url = "redis://10.0.0.5:6379/2"
    c.KiteOHLC.late_policy = "amend"
    ip = make_shell(c)
    ip.run_line_magic("load_ext", "kiteohlc_lab")
    try:
        ip.run_line_magic("ohlc_stream", "NIFTY 1m")
        assert fake_manager.configured[-1]["redis_url"] == "redis://10.0.0.5:6379/2"
        assert fake_manager.configured[-1]["late_policy"] == "amend"
    finally:
        ip.run_line_magic("unload_ext", "kiteohlc_lab")


def test_stop_status_history_plot(shell, fake_manager, capsys):
    shell.run_line_magic("ohlc_stream", "NIFTY 5m")
    capsys.readouterr()
    table = shell.run_line_magic("ohlc_status", "")
    assert isinstance(table, StatusTable)
    text, page = repr(table), table._repr_html_()
    for col in ("stream", "source", "state", "ticks/s", "last tick", "reconnects", "store"):
        assert col in text and col in page
    assert "running" in text and "0.4 s" in text and "sqlite ok" in text
    hist = shell.run_line_magic("ohlc_history", "NIFTY 5m --from 2024-05-02 --to '2024-05-03 15:30'")
    assert len(hist) == 2
    start, end = fake_manager.history_args
    assert str(start) == "2024-05-02 00:00:00+05:30" and str(end) == "2024-05-03 15:30:00+05:30"
    with pytest.raises(UsageError, match="not a date"):
        shell.run_line_magic("ohlc_history", "NIFTY 5m --from yesterdayish")
    fig = shell.run_line_magic("ohlc_plot", "NIFTY 5m --last 50")
    assert fig.__class__.__name__ == "Figure"
    fmt = shell.display_formatter.formatters["image/png"]
    assert fmt(fig)[:4] == b"\x89PNG"  # shows as a PNG even without the inline backend
    with pytest.raises(UsageError, match="--last"):
        shell.run_line_magic("ohlc_plot", "NIFTY 5m --last 0")
    shell.run_line_magic("ohlc_stop", "NIFTY")
    assert capsys.readouterr().out == "Stopped: sim-1\n"
    assert "stopped" in repr(shell.run_line_magic("ohlc_status", ""))


def test_plot_live_returns_widget(shell, fake_manager, monkeypatch):
    import comm

    from conftest_notebook import RecordingComm

    monkeypatch.setattr(comm, "create_comm", lambda **kw: RecordingComm())
    shell.run_line_magic("ohlc_stream", "NIFTY 5m")
    view = shell.run_line_magic("ohlc_plot", "NIFTY 5m --live")
    try:
        assert view.running and view.interval == 0.5 and view.renders == 1
    finally:
        view.close()


def test_background_error_warns_once(shell, fake_manager, capsys):
    shell.run_line_magic("ohlc_stream", "NIFTY 5m")
    shell.run_cell("x = 1")
    assert capsys.readouterr().err == ""
    fake_manager.streams["sim-1"]["error"] = "ConnectionError: simulator went away\nmore detail"
    shell.run_cell("x = 2")
    err = capsys.readouterr().err
    assert err.count("stream sim-1 failed: ConnectionError: simulator went away") == 1
    assert "more detail" not in err
    shell.run_cell("x = 3")
    assert capsys.readouterr().err == ""
    assert "simulator went away" in repr(shell.run_line_magic("ohlc_status", ""))


def test_unload_shuts_down_and_removes_magics(fake_manager):
    from kiteohlc_lab.config import KiteOHLC

    ip = make_shell()
    ip.run_line_magic("load_ext", "kiteohlc_lab")
    ip.run_line_magic("ohlc_stream", "NIFTY 5m")
    assert any(isinstance(c, KiteOHLC) for c in ip.configurables)
    ip.run_line_magic("unload_ext", "kiteohlc_lab")
    assert fake_manager.shut == 1
    assert ip.find_line_magic("ohlc_stream") is None
    assert not any(isinstance(c, KiteOHLC) for c in ip.configurables)
    assert not any(getattr(cb, "__self__", None).__class__ is KiteOHLCMagics
                   for cb in ip.events.callbacks["post_run_cell"])
    ip.run_line_magic("load_ext", "kiteohlc_lab")  # and back again
    assert ip.find_line_magic("ohlc_stream") is not None
    ip.run_line_magic("unload_ext", "kiteohlc_lab")


# -- against the real Manager (replay: no network, no simulator)
from conftest_notebook import real_shell, small_tape  # noqa: E402,F401


@pytest.mark.parametrize("line, expected", [
    ("NIFTY 7x", "7x"),
    ("NIFTY 5m --speed -1", "-1"),
    ("NIFTY 5m --source replay", "--tape"),
    ("NIFTY 5m --source replay --tape /nonexistent/tape.csv", "tape"),
])
def test_real_manager_errors_are_one_line(real_shell, line, expected):
    with pytest.raises(UsageError) as err:
        real_shell.run_line_magic("ohlc_stream", line)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_real_unknown_symbol_on_tape(real_shell, small_tape):
    with pytest.raises(UsageError, match="NOPE"):
        real_shell.run_line_magic("ohlc_stream", f"NOPE 5m --source replay --tape {small_tape}")


def test_real_replay_stream_status_history(real_shell, small_tape, capsys):
    import kiteohlc_lab

    live = real_shell.run_line_magic("ohlc_stream", f"RELIANCE,INFY 5m 15m --source replay --tape {small_tape}")
    assert "Replaying RELIANCE, INFY" in capsys.readouterr().out
    assert kiteohlc_lab.wait(timeout=30)
    assert isinstance(live, LiveCandles) and len(live) >= 70
    assert live.close.rolling(20).mean().notna().any()
    status = repr(real_shell.run_line_magic("ohlc_status", ""))
    assert "replay" in status and "done" in status
    fig = real_shell.run_line_magic("ohlc_plot", "RELIANCE 5m --last 30")
    assert len(fig.axes) == 2
    real_shell.run_line_magic("ohlc_stop", "")
    hist = real_shell.run_line_magic("ohlc_history", "RELIANCE 15m --from '2026-11-25 12:00'")
    assert len(hist) and hist.index[0] >= pd.Timestamp("2026-11-25 12:00", tz="Asia/Kolkata")


def test_real_background_failure_warns_once_and_shows_in_status(real_shell, small_tape, capsys):
    import kiteohlc_lab

    real_shell.run_line_magic("ohlc_stream", f"RELIANCE 5m --source replay --tape {small_tape}")
    assert kiteohlc_lab.wait(timeout=30)
    real_shell.run_cell("x = 1")
    capsys.readouterr()
    stream = next(iter(kiteohlc_lab.manager().streams.values()))
    stream._fail("RuntimeError: history store write failed: disk full")  # as the thread records it
    real_shell.run_cell("x = 2")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "disk full" in err and stream.name in err
    real_shell.run_cell("x = 3")
    assert capsys.readouterr().err == ""
    table = repr(real_shell.run_line_magic("ohlc_status", ""))
    assert "failed" in table and "disk full" in table


def test_real_unload_leaves_no_threads(small_tape):
    import threading

    from kiteohlc_lab.notebook import use_manager

    from conftest_notebook import RecordingComm, wait_for

    previous = use_manager(None)
    before = set(threading.enumerate())
    ip = make_shell()
    try:
        ip.run_line_magic("load_ext", "kiteohlc_lab")
        live = ip.run_line_magic("ohlc_stream", f"RELIANCE 5m --source replay --tape {small_tape}")
        import comm

        orig, comm.create_comm = comm.create_comm, lambda **kw: RecordingComm()
        try:
            view = live.view(refresh=0.05)
        finally:
            comm.create_comm = orig
        assert view.running
        ip.run_line_magic("unload_ext", "kiteohlc_lab")
        assert not view.running
        assert wait_for(lambda: not (set(threading.enumerate()) - before), timeout=10), \
            [t.name for t in set(threading.enumerate()) - before]
    finally:
        use_manager(previous)


LOAD_EXT = r"""
import sys, threading
from IPython.core.interactiveshell import InteractiveShell
HEAVY = ("pandas", "ipywidgets", "matplotlib", "pyarrow", "redis", "twisted", "autobahn", "requests",
         "pymongo")
where = {}

class Watch:  # which thread first imports each heavy library
    def find_spec(self, name, path=None, target=None):
        if name in HEAVY and name not in where:
            where[name] = threading.current_thread().name
        return None

sys.meta_path.insert(0, Watch())
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "kiteohlc_lab")
on_load = dict(where)
magics = shell.magics_manager.magics["line"]
print(all(m in magics for m in ("ohlc_stream", "ohlc_reconcile", "ohlc_status")))
[warm] = [t for t in threading.enumerate() if t.name == "kiteohlc-prewarm"]
warm.join(60)
print(sorted(n for n, t in on_load.items() if t != "kiteohlc-prewarm"))
print(sorted(n for n, t in where.items() if t == "kiteohlc-prewarm"), "kiteohlc_lab.api" in sys.modules)
print("twisted.internet.reactor" in sys.modules, "kiteconnect" in sys.modules)  # no reactor installed
"""


def test_load_ext_registers_the_magics_and_leaves_the_heavy_imports_to_a_thread():
    """``%load_ext kiteohlc_lab`` in a fresh kernel registers every magic without importing pandas,
    ipywidgets, matplotlib, pyarrow, redis, twisted or pymongo itself (pandas came with
    %ohlc_reconcile's module: 0.3-0.6 s of a first %load_ext); what a first %ohlc_stream needs
    (pandas, pyarrow, redis, ipywidgets for a replay's progress bar, the package's API; a live
    feed's requests, autobahn and Twisted modules) loads on a thread of its own meanwhile,
    without installing Twisted's reactor."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", LOAD_EXT], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    registered, by_load_ext, by_thread, reactor = out.stdout.strip().splitlines()
    assert registered == "True"
    assert by_load_ext == "[]"
    assert by_thread == "['autobahn', 'ipywidgets', 'pandas', 'pyarrow', 'redis', 'requests', 'twisted'] True"
    assert reactor == "False False"


def test_real_replay_of_every_instrument_shows_the_first_one(real_shell, small_tape, capsys):
    """``%ohlc_stream ALL 5m --source replay`` streams every instrument of the tape and returns (and
    shows, without an error) the live candles of the first of them; "ALL" is no symbol to look up."""
    import kiteohlc_lab

    live = real_shell.run_line_magic("ohlc_stream", f"ALL 5m --source replay --tape {small_tape}")
    out = capsys.readouterr().out
    assert "Replaying INFY, RELIANCE 5m" in out or "Replaying RELIANCE, INFY 5m" in out
    assert kiteohlc_lab.wait(timeout=30)
    assert isinstance(live, LiveCandles) and live.symbol in ("RELIANCE", "INFY")
    html = live._repr_html_()
    assert live.symbol in html and len(live) >= 70
    pd.testing.assert_frame_equal(live.df, kiteohlc_lab.candles(live.symbol, "5m"))


def test_prewarm_wait_returns_once_the_thread_passed_the_module_asked_for(tmp_path, monkeypatch):
    """``Prewarm.wait(name)`` returns when the thread has imported ``name`` (not before), whatever
    comes after it; ``wait(None)`` when it imported everything; an import that fails counts as done
    (the magic's own import says why); the thread then runs the full garbage collection its imports
    made due."""
    import sys
    import threading

    from kiteohlc_lab.notebook.prewarm import Prewarm

    gate = type(sys)("kohlc_gate")
    gate.started = {k: threading.Event() for k in "ab"}
    gate.release = {k: threading.Event() for k in "ab"}
    monkeypatch.setitem(sys.modules, "kohlc_gate", gate)
    for k in "ab":
        (tmp_path / f"kohlc_warm_{k}.py").write_text(
            f"import kohlc_gate\nkohlc_gate.started[{k!r}].set()\nkohlc_gate.release[{k!r}].wait(30)\n")
    (tmp_path / "kohlc_warm_bad.py").write_text("raise ImportError('not here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import gc

    full = []  # the full collection it ends with, on its own thread (not in the user's next cell)
    record = lambda phase, info: phase == "stop" and info["generation"] == 2 and full.append(  # noqa: E731
        threading.current_thread().name)
    gc.callbacks.append(record)
    p = Prewarm(("kohlc_warm_a", "kohlc_warm_bad", "kohlc_warm_b"))
    try:
        assert gate.started["a"].wait(10)
        assert not p.wait("kohlc_warm_a", timeout=0.05)  # still importing it
        gate.release["a"].set()
        assert p.wait("kohlc_warm_a", timeout=10)
        assert p.wait("kohlc_warm_bad", timeout=10)  # failed: done all the same
        assert gate.started["b"].wait(10)
        assert not p.wait(None, timeout=0.05)
    finally:
        gate.release["a"].set()
        gate.release["b"].set()
    assert p.wait(None, timeout=10)
    p.thread.join(10)
    gc.callbacks.remove(record)
    assert "kiteohlc-prewarm" in full
    assert "kohlc_warm_b" in sys.modules
    for k in ("kohlc_warm_a", "kohlc_warm_b"):
        sys.modules.pop(k, None)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the exiting import
def test_prewarm_imports_without_automatic_collections_and_gives_the_collector_back(tmp_path, monkeypatch):
    """While the thread imports, the automatic garbage collection is off (a full pass in the middle
    of the imports held up a magic waiting for them); afterwards it is on again, and left off
    where it was off before, also when an import raises something other than an Exception."""
    import gc
    import sys

    from kiteohlc_lab.notebook.prewarm import Prewarm

    seen = type(sys)("kohlc_gc_seen")
    seen.enabled = []
    monkeypatch.setitem(sys.modules, "kohlc_gc_seen", seen)
    (tmp_path / "kohlc_gc_probe.py").write_text(
        "import gc, kohlc_gc_seen\nkohlc_gc_seen.enabled.append(gc.isenabled())\n")
    (tmp_path / "kohlc_gc_exit.py").write_text("raise SystemExit('an import that exits')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    was = gc.isenabled()
    try:
        for before in (True, False):
            (gc.enable if before else gc.disable)()
            for names in (("kohlc_gc_probe",), ("kohlc_gc_probe", "kohlc_gc_exit")):
                sys.modules.pop("kohlc_gc_probe", None)
                p = Prewarm(names)
                assert p.wait(None, timeout=30)
                p.thread.join(30)
                assert seen.enabled.pop() is False  # off while importing
                assert gc.isenabled() is before, (before, names)
    finally:
        (gc.enable if was else gc.disable)()
        for k in ("kohlc_gc_probe", "kohlc_gc_exit"):
            sys.modules.pop(k, None)


def test_magics_wait_for_the_import_thread_a_live_stream_for_all_of_it(real_shell, small_tape, monkeypatch):
    """Every magic first waits for %load_ext's import thread up to the end of a replay's part
    (``prewarm.REPLAY``); a live stream (Kite or the simulator) for the whole of it (kiteconnect's
    modules), a replay not."""
    import kiteohlc_lab
    from kiteohlc_lab.notebook import prewarm

    asked = []

    class Recorder:
        def wait(self, upto=None, timeout=120.0):
            asked.append(upto)
            return True

    monkeypatch.setattr(prewarm, "_CURRENT", Recorder())
    real_shell.run_line_magic("ohlc_stream", f"ALL 5m --source replay --tape {small_tape}")
    assert kiteohlc_lab.wait(timeout=30)
    assert asked == [prewarm.REPLAY[-1]] == ["kiteohlc_lab.notebook.live"]
    asked.clear()
    monkeypatch.delenv("KITE_API_KEY", raising=False)
    monkeypatch.delenv("KITE_ACCESS_TOKEN", raising=False)
    with pytest.raises(UsageError, match="no Kite credentials"):  # before the feed would start
        real_shell.run_line_magic("ohlc_stream", "NIFTY 5m --source kite")
    assert asked == [prewarm.REPLAY[-1], None]


def test_a_refused_stream_leaves_warm_start_as_configured(real_shell):
    """``--no-warm-start`` is for the start it is given with: a start refused for its arguments
    (``--from`` without ``--source replay``) leaves ``KiteOHLC.warm_start`` as it was."""
    from kiteohlc_lab import api

    before = api.manager().cfg.warm_start
    assert before != "off"
    with pytest.raises(UsageError, match="--from/--to replay a range of the tick store"):
        real_shell.run_line_magic("ohlc_stream", "NIFTY 5m --from 2026-11-25 --no-warm-start")
    assert api.manager().cfg.warm_start == before
