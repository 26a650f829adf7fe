"""``%ohlc_reconcile`` in an in-process TestingShell: arguments and errors against a fake reconcile,
and end to end against the simulator (a shifted clock makes past minutes final within seconds)."""

from __future__ import annotations

import time as _time

import numpy as np
import pandas as pd
import pytest
from IPython.core.error import UsageError

from conftest_notebook import FakeManager, fake_manager, make_shell, shell  # noqa: F401
from kiteohlc_lab.core import stream as stream_mod
from kiteohlc_lab.core.timeframes import NS
from kiteohlc_lab.feeds import simulator as sim_mod
from kiteohlc_lab.notebook import reconcile_magic
from kiteohlc_lab.notebook.reconcile_magic import ReconcileReport
from kiteohlc_lab.reconcile import compare

MIN = 60 * NS
RELIANCE = 738561
T0 = pd.Timestamp("2024-05-02 09:15", tz="Asia/Kolkata").value


def frame(n: int, high: list[float] | None = None, volume: list[float] | None = None) -> pd.DataFrame:
    idx = pd.DatetimeIndex(pd.to_datetime(T0 + np.arange(n) * MIN, utc=True)).tz_convert("Asia/Kolkata")
    idx.name = "date"
    return pd.DataFrame({"open": 100.0, "high": high or [101.0] * n, "low": 99.0, "close": 100.5,
                         "volume": volume or [1000.0] * n}, index=idx)


@pytest.fixture
def calls(monkeypatch):
    """``reconcile`` replaced by one that records its arguments and compares two fixed frames."""
    made: list[dict] = []

    def fake(symbol, tf, start=None, end=None, *, volume_tolerance=0.02, manager=None, **kw):
        made.append(dict(symbol=symbol, tf=tf, start=start, end=end, tol=volume_tolerance,
                         manager=manager))
        if tf == "10s":
            raise ValueError("timeframe '10s' cannot be reconciled: Kite's smallest candle is 1 minute")
        live = frame(4, volume=[1000, 1000, 1000, 1100])
        kite = frame(4, high=[101.0, 101.5, 101.0, 101.0])
        df = compare(live, kite, volume_tolerance=volume_tolerance)
        df.attrs.update(symbol=symbol, tf=tf, live_only=0, kite_only=1)
        return df

    import kiteohlc_lab.reconcile as mod

    monkeypatch.setattr(mod, "reconcile", fake)
    return made


def test_reconcile_shows_summary_mismatches_and_chart(shell, fake_manager, calls):
    rep = shell.run_line_magic("ohlc_reconcile", "NIFTY 1m --from 2024-05-02 --to '2024-05-02 10:00'")
    assert isinstance(rep, ReconcileReport)
    assert rep.summary == "NIFTY 1m: 2 of 4 candles match (1 only at Kite)"
    assert rep.mismatches["mismatched"].tolist() == ["high", "volume"]
    assert len(rep.df) == 4  # every compared candle stays available
    call = calls[-1]
    assert call["manager"] is fake_manager and call["tol"] == 0.02
    assert call["start"] == pd.Timestamp("2024-05-02 00:00", tz="Asia/Kolkata")
    assert call["end"] == pd.Timestamp("2024-05-02 10:00", tz="Asia/Kolkata")
    text = repr(rep)
    assert text.splitlines()[0] == rep.summary and "101.50" in text
    page = rep._repr_html_()
    assert "2 of 4 candles match" in page and "<table" in page and "data:image/png;base64," in page
    assert rep.png().startswith(b"\x89PNG")
    fig = rep.figure()
    assert len(fig.axes) == 2


def test_tolerance_is_passed_and_all_matching_shows_no_table(shell, fake_manager, calls):
    rep = shell.run_line_magic("ohlc_reconcile", "NIFTY 5m --tolerance 0.2")
    assert calls[-1]["tol"] == 0.2 and calls[-1]["tf"] == "5m"
    assert rep.mismatches["mismatched"].tolist() == ["high"]  # 10 % volume is within 20 %
    empty = ReconcileReport(rep.df.iloc[:0])
    assert "0 of 0 candles match" in empty.summary and repr(empty) == empty.summary
    assert "<table" not in empty._repr_html_()


@pytest.mark.parametrize("line, expected", [
    ("NIFTY 10s", "10s"),
    ("NIFTY 1m --tolerance lots", "lots"),
    ("NIFTY 1m --tolerance -1", "-1"),
    ("NIFTY 1m --from yesterday-ish", "yesterday-ish"),
    ("NIFTY", "required"),
])
def test_bad_arguments_are_one_line_usage_errors(shell, fake_manager, calls, line, expected):
    with pytest.raises(UsageError) as err:
        shell.run_line_magic("ohlc_reconcile", line)
    msg = str(err.value)
    assert expected in msg and "\n" not in msg and err.value.__cause__ is None


def test_no_kite_connection_is_a_one_line_usage_error(shell, fake_manager):
    # the fake manager has no simulator and no credentials: reconcile cannot reach Kite
    fake_manager.buffers.clear()
    shell.run_line_magic("ohlc_stream", "NIFTY 1m")
    fake_manager._sim = None
    fake_manager.streams = {}
    fake_manager.token_of = lambda s: 256265

    def closed(symbol, tf, closed_only=False, start=None, end=None):
        df = frame(3)
        df.index = df.index - pd.Timedelta(days=1000)  # long final
        return df

    fake_manager.candles = closed
    with pytest.raises(UsageError, match="historical API") as err:
        shell.run_line_magic("ohlc_reconcile", "NIFTY 1m")
    assert "\n" not in str(err.value)


def test_registered_with_the_other_magics_and_unloaded(fake_manager):
    ip = make_shell()
    ip.run_line_magic("load_ext", "kiteohlc_lab")
    assert "--tolerance" in ip.find_line_magic("ohlc_reconcile").__doc__
    ip.run_line_magic("unload_ext", "kiteohlc_lab")
    assert ip.find_line_magic("ohlc_reconcile") is None
    assert reconcile_magic.MAGICS == ("ohlc_reconcile",)


# ------------------------------------------------------------------------------------ simulator
from test_reconcile import ShiftedClock  # noqa: E402  (one clock stand-in for both tests)

from kiteohlc_lab.feeds import kite as kite_mod  # noqa: E402


def wait_for(pred, timeout: float = 10.0) -> bool:
    end = _time.monotonic() + timeout
    while _time.monotonic() < end:
        if pred():
            return True
        _time.sleep(0.05)
    return bool(pred())


@pytest.mark.integration
def test_reconcile_magic_against_the_simulator(monkeypatch):
    from kiteohlc_lab.notebook import use_manager
    from kiteohlc_lab.runtime import Manager

    clock = ShiftedClock()
    monkeypatch.setattr(sim_mod, "time", clock)
    monkeypatch.setattr(stream_mod, "time", clock)
    monkeypatch.setattr(kite_mod, "time", clock)  # the machine's clock, as the Kite feed reads it
    M = (_time.time_ns() // MIN - 30) * MIN  # half an hour ago: every minute is final at Kite's
    clock.jump_to(M + 300_000_000)
    m = Manager()
    m._sim = sim_mod.KiteSimulator(tick_interval=0.05, heartbeat_interval=0.2).start()
    previous = use_manager(m)
    ip = make_shell()
    ip.run_line_magic("load_ext", "kiteohlc_lab")
    try:
        ip.run_line_magic("ohlc_stream", "RELIANCE 1m --source sim")
        m._sim.set_history_override(RELIANCE, M + MIN, high=99999.0)  # Kite disagrees on minute 2
        st = next(iter(m.streams.values()))
        assert wait_for(lambda: st.stats.ticks >= 10)
        for k in (1, 2):
            clock.jump_to(M + k * MIN + 300_000_000)
            n = st.stats.ticks
            assert wait_for(lambda: st.stats.ticks >= n + 10)
        m._sim.pause()  # the clock jumps once the stream has every tick sent (one client, no drops)
        assert wait_for(lambda: st.stats.ticks >= len(m._sim.sent()))
        clock.jump_to(M + 4 * MIN)
        assert wait_for(lambda: len(m.candles("RELIANCE", "1m", closed_only=True)) >= 3)

        rep = ip.run_line_magic("ohlc_reconcile", "RELIANCE 1m --tolerance 0.05")
        df = rep.df
        assert [int(i.value) for i in df.index] == [M, M + MIN, M + 2 * MIN]
        ok = int(df["match"].sum())
        assert rep.summary.startswith(f"RELIANCE 1m: {ok} of 3 candles match")
        bad = rep.mismatches
        assert "high" in bad.loc[pd.Timestamp(M + MIN, tz="UTC"), "mismatched"]
        assert bad.loc[pd.Timestamp(M + MIN, tz="UTC"), "high_kite"] == 99999.0
        assert bool(df["match"].iloc[2])
        assert "<img" in rep._repr_html_()
        # --from bounds the candles compared (IST wall clock, as typed in a notebook)
        start = pd.Timestamp(M + MIN, tz="UTC").tz_convert("Asia/Kolkata").strftime("%Y-%m-%dT%H:%M")
        later = ip.run_line_magic("ohlc_reconcile", f"RELIANCE 1m --from {start}")
        assert [int(i.value) for i in later.df.index] == [M + MIN, M + 2 * MIN]
        assert later.mismatches.index[0] == pd.Timestamp(M + MIN, tz="UTC")
    finally:
        ip.run_line_magic("unload_ext", "kiteohlc_lab")
        use_manager(previous)
        m.shutdown()
