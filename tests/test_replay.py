"""Replay tapes: reading, malformed rows, pacing, recording, and the whole path through the API."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pandas as pd
import pytest

import kiteohlc_lab
from kiteohlc_lab.core.ticks import TickBatch
from kiteohlc_lab.errors import SymbolError, TapeError
from kiteohlc_lab.feeds.replay import ReplaySource, read_tape
from kiteohlc_lab.feeds.synthetic import make_ticks, write_tape
from oracle import Oracle

RELIANCE, NIFTY = 738561, 256265


def reference_frame(ticks: TickBatch, token: int, tf: str, grace: float = 5.0) -> pd.DataFrame:
    """The oracle's candles of one instrument (replay: the whole tape, its last candles included)."""
    ref = Oracle([tf], grace=grace)
    ref.feed(ticks)
    ref.flush()
    return ref.frame(token, tf)


@pytest.fixture
def tape(tmp_path):
    ticks, syms = make_ticks(6000, seed=11, days=2)
    return write_tape(tmp_path / "day.csv", ticks, syms), ticks


def test_naive_timestamps_are_ist_and_aware_ones_are_exact(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("timestamp,instrument_token,last_price\n"
                 "2026-11-25T09:15:00,738561,100\n"
                 "2026-11-25T03:45:01Z,738561,101\n"
                 "2026-11-25T09:15:02+05:30,738561,102\n")
    t = read_tape(p)
    got = pd.to_datetime(t.ticks.ts, utc=True).tz_convert("Asia/Kolkata").strftime("%H:%M:%S").tolist()
    assert got == ["09:15:00", "09:15:01", "09:15:02"]
    assert t.error is None and np.isnan(t.ticks.volume).all()


def test_malformed_row_reported_with_line_and_content_rows_before_kept(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("timestamp,instrument_token,tradingsymbol,last_price,volume_traded\n"
                 "2026-11-25T09:15:00,738561,RELIANCE,100,10\n"
                 "2026-11-25T09:15:01,738561,RELIANCE,101,20\n"
                 "2026-11-25T09:15:02,738561,RELIANCE,abc,30\n"
                 "2026-11-25T09:15:03,738561,RELIANCE,103,40\n")
    t = read_tape(p)
    assert len(t.ticks) == 2
    assert "line 4" in t.error and "last_price" in t.error and "abc" in t.error
    assert "\n" not in t.error


def test_missing_column_is_one_clear_line(tmp_path):
    p = tmp_path / "cols.csv"
    p.write_text("time,token,price\n1,2,3\n")
    with pytest.raises(TapeError, match="missing column.*timestamp.*instrument_token.*last_price"):
        read_tape(p)


def test_parquet_and_csv_tapes_read_the_same(tmp_path):
    ticks, syms = make_ticks(500, seed=2)
    a = read_tape(write_tape(tmp_path / "a.csv", ticks, syms)).ticks
    b = read_tape(write_tape(tmp_path / "a.parquet", ticks, syms)).ticks
    for f in ("token", "ts", "price"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    np.testing.assert_array_equal(a.volume, b.volume)


def test_replay_through_the_api_gives_exactly_the_reference(tape):
    path, ticks = tape
    info = kiteohlc_lab.stream("RELIANCE,NIFTY", "1m", "15m", "1h", source="replay", tape=str(path))
    assert "Replaying" in info.message
    assert kiteohlc_lab.wait(60)
    for tok, sym in ((RELIANCE, "RELIANCE"), (NIFTY, "NIFTY")):
        for tf in ("1m", "15m", "1h"):
            got = kiteohlc_lab.candles(sym, tf)
            want = reference_frame(ticks, tok, tf)
            pd.testing.assert_frame_equal(got, want, check_freq=False)
    assert got.index.tz is not None and str(got.index.tz) == "Asia/Kolkata"
    assert kiteohlc_lab.candles("NIFTY", "1m")["volume"].eq(0).all()  # an index has no volume
    [st] = kiteohlc_lab.status()
    assert st["state"] == "done" and st["source"] == "replay"


def test_unknown_symbol_names_what_the_tape_has(tape):
    path, _ = tape
    with pytest.raises(SymbolError, match="TCS.*not on tape"):
        kiteohlc_lab.stream("TCS", "1m", source="replay", tape=str(path))


def test_malformed_tape_keeps_rows_before_and_reports_once(tmp_path):
    ticks, syms = make_ticks(400, seed=5)
    p = write_tape(tmp_path / "t.csv", ticks, syms)
    lines = p.read_text().splitlines()
    lines.insert(201, "2026-11-25T12:00:00,738561,RELIANCE,oops,5")
    p.write_text("\n".join(lines) + "\n")
    info = kiteohlc_lab.stream("RELIANCE", "1m", source="replay", tape=str(p))
    assert "line 202" in info.message
    assert kiteohlc_lab.wait(30)
    got = kiteohlc_lab.candles("RELIANCE", "1m")
    want = reference_frame(ticks.take(slice(0, 200)), RELIANCE, "1m")
    pd.testing.assert_frame_equal(got, want, check_freq=False)
    assert "line 202" in (kiteohlc_lab.status()[0]["error"] or "")


class _Collect:
    def __init__(self):
        self.batches, self.done = [], threading.Event()

    def on_batch(self, b):
        self.batches.append(b)

    def on_done(self):
        self.done.set()

    def on_error(self, message, fatal):
        pass


def test_speed_paces_by_the_tapes_own_clock(tmp_path):
    t0 = pd.Timestamp("2026-11-25 09:15:00", tz="Asia/Kolkata").value
    ts = t0 + np.arange(0, 21) * 10**8 * 10  # 20 s of tape, one tick a second
    batch = TickBatch(np.full(21, RELIANCE), ts, np.full(21, 100.0), None, None)
    p = write_tape(tmp_path / "p.parquet", batch)
    tape = read_tape(p)
    fast = _Collect()
    ReplaySource(tape, speed=0).start(fast)
    assert fast.done.wait(5) and sum(len(b) for b in fast.batches) == 21
    paced = _Collect()
    src = ReplaySource(tape, speed=40)  # 20 s of tape in ~0.5 s
    import time

    start = time.monotonic()
    src.start(paced)
    assert paced.done.wait(10)
    elapsed = time.monotonic() - start
    assert elapsed >= 0.45  # not faster than the tape's clock allows
    assert len(paced.batches) > 3  # delivered progressively, not at once


def test_negative_speed_is_rejected(tape):
    path, _ = tape
    with pytest.raises(Exception, match="speed"):
        kiteohlc_lab.stream("RELIANCE", "1m", source="replay", tape=str(path), speed=-1)


def test_recording_a_stream_replays_to_the_same_candles(tape, tmp_path):
    path, ticks = tape
    rec = tmp_path / "rec.parquet"
    kiteohlc_lab.stream("RELIANCE", "5m", source="replay", tape=str(path), record=str(rec))
    assert kiteohlc_lab.wait(60)
    first = kiteohlc_lab.candles("RELIANCE", "5m")
    kiteohlc_lab.api.reset()
    os.environ["KITEOHLC_DATA_DIR"] = str(tmp_path / "other")
    kiteohlc_lab.stream("RELIANCE", "5m", source="replay", tape=str(rec))
    assert kiteohlc_lab.wait(60)
    pd.testing.assert_frame_equal(kiteohlc_lab.candles("RELIANCE", "5m"), first, check_freq=False)


def test_same_candles_whatever_the_machine_zone(tmp_path):
    """kiteconnect hands out naive local datetimes: the same ticks give the same candles anywhere.

    One process per machine zone (TZ=...), run side by side, and their candles compared."""
    code = textwrap.dedent(
        """
        import datetime as dt, json
        from kiteohlc_lab.core.engine import Engine
        from kiteohlc_lab.core.ticks import TickBatch
        base = 1795580700  # 2026-11-25 09:55:00 IST
        ticks = [{"instrument_token": 738561, "last_price": 100 + i % 7, "volume_traded": 10 * i,
                  "exchange_timestamp": dt.datetime.fromtimestamp(base + 7 * i)} for i in range(60)]
        e = Engine(["1m", "1h"])
        out = e.process(TickBatch.from_ticks(ticks)) + e.flush()
        print(json.dumps(sorted((c.tf, c.date.isoformat(), c.open, c.close, c.volume) for b in out for c in b)))
        """
    )
    import json

    zones = ["UTC", "Asia/Kolkata", "America/New_York"]
    procs = {tz: subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "TZ": tz},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for tz in zones}
    got = {}
    try:
        for tz, p in procs.items():
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, f"TZ={tz}: {err}"
            got[tz] = json.loads(out)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
    ist = got["Asia/Kolkata"]
    # 60 ticks 7 s apart from 09:55:00 IST: 1-minute candles 09:55 ... 10:01, one 1-hour 09:15
    assert [g[1] for g in ist if g[0] == "1h"] == ["2026-11-25T09:15:00+05:30"]
    assert [g[1] for g in ist if g[0] == "1m"] == [f"2026-11-25T{h}:00+05:30" for h in
                                                   ("09:55", "09:56", "09:57", "09:58", "09:59",
                                                    "10:00", "10:01")]
    for tz in ("UTC", "America/New_York"):
        assert got[tz] == ist, f"TZ={tz} differs from TZ=Asia/Kolkata"


def test_fractional_token_is_a_malformed_row_not_a_truncated_token(tmp_path):
    p = tmp_path / "frac.csv"
    p.write_text("timestamp,instrument_token,last_price\n"
                 "2026-11-25T09:15:00,738561,100\n"
                 "2026-11-25T09:15:01,738561.5,101\n")
    t = read_tape(p)
    assert len(t.ticks) == 1 and "line 3" in t.error and "instrument_token" in t.error
