"""The tick store (stores/ticks.py): live from the simulator with the store on, then a replay of the
same period from the store.

* ``ticks()`` equals every clean tick the simulator sent (``sim.sent(injected=False)``), in wire order;
  the injected bad ones (zero price, bogus stamps) are in the rejected dataset, with their reason,
  and never in a read of ``ticks/`` (pyarrow.dataset over the directory, as DuckDB/polars would).
* The replay from the store (no tape, ``start``/``end``) makes the live stream's candles at 5s, 1m
  and 5m, and both equal the oracle (tests/oracle.py, importing nothing from the package) fed with
  the ticks the simulator sent.
* Bad input: a bad ``start``, an empty range, ``end`` before ``start``, an unknown column, polars
  missing: one line each.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import need_import, wait_for
from kiteohlc_lab.feeds.simulator import KiteSimulator

NS = 10**9
SYMS = {"NIFTY": 256265, "RELIANCE": 738561}
TFS = ("5s", "1m", "5m")
COLS = ["open", "high", "low", "close", "volume"]


def all_full(sim, tokens) -> bool:
    subs = sim.subscriptions()
    return bool(subs) and all(s.get(t) == "full" for s in subs for t in tokens)


@pytest.fixture
def store_env(tmp_path, monkeypatch):
    root = tmp_path / "shared-ticks"
    monkeypatch.setenv("KITEOHLC_RECORD_TICKS", "on")
    monkeypatch.setenv("KITEOHLC_TICK_FILE_SECONDS", "1")  # several files in a few seconds
    monkeypatch.setenv("KITEOHLC_TICK_STORE", f"file://{root}")
    return root


def run_live(monkeypatch):
    """Stream SYMS at TFS from a simulator through the public API with the tick store on; bad ticks
    injected on the way. Returns (candles, sent_all frame, clean sent batch, status while running)."""
    import kiteohlc_lab as k
    from kiteohlc_lab import api

    tokens = list(SYMS.values())
    sim = KiteSimulator(tick_interval=0.25, heartbeat_interval=0.5, seed=11).start()
    try:
        sim.pause()  # until the full-mode subscription: quote packets carry no exchange stamp
        monkeypatch.setenv("KITEOHLC_TICKER_URL", sim.ticker_url)
        monkeypatch.setenv("KITEOHLC_API_URL", sim.api_url)
        api.reset()
        k.stream(",".join(SYMS), *TFS, source="sim")
        wait_for(lambda: all_full(sim, tokens), 15, "the stream's full-mode subscription")
        sim.resume()
        wait_for(lambda: len(sim.sent()) >= 2 * 12, 15, "3 s of market")
        sim.inject("zero_price", token=SYMS["RELIANCE"])
        sim.inject("bogus_stamp", token=SYMS["NIFTY"])
        sim.inject("bogus_stamp", token=SYMS["RELIANCE"], stamp=0)
        wait_for(lambda: sim.pending_injections == 0, 10, "the injections on the wire")
        first = int(sim.sent(injected=False).ts.min())
        wait_for(lambda: int(sim.sent(injected=False).ts.max()) >= first + 8 * NS, 25, "8 s of market")
        running = wait_for(lambda: (k.status()[0].get("tick_store") or {}).get("files") and k.status()[0],
                           10, "a published tick file")
        sim.pause()
        n = len(sim.sent())
        wait_for(lambda: k.status()[0]["feed"]["ticks"] == n, 10, "the feed to receive every tick sent")
        k.stop()  # the stream processes everything delivered; its tick store publishes the open file
        got = {(sym, tf): k.candles(sym, tf) for sym in SYMS for tf in TFS}
        return got, sim.sent_all(), sim.sent(injected=False), running
    finally:
        api.reset()
        sim.stop()


def oracle_candles(clean, tfs):
    """The oracle (replay rules) fed with the clean ticks in wire order."""
    from oracle import Oracle

    o = Oracle(list(tfs))
    o.feed(clean)
    o.end_of_tape()
    return o


def test_live_then_replay_from_the_store(store_env, monkeypatch, tmp_path):
    import pyarrow.dataset as ds

    import kiteohlc_lab as k
    from kiteohlc_lab import api

    live, everything, clean, running = run_live(monkeypatch)
    assert set(everything["mode"]) == {"full"}
    st = running["tick_store"]
    assert st["written"] > 0 and st["error"] is None and st["dropped"] == 0
    assert st["today_ticks"] > 0 and st["bytes"] > 0

    # ticks(): every clean tick sent, in wire order, with its exact stamp, price, volume and oi
    got = k.ticks(list(SYMS))
    assert str(got.index.tz) == "Asia/Kolkata" and got.index.name == "exchange_time"
    assert len(got) == len(clean)
    np.testing.assert_array_equal(got["token"].to_numpy(), clean.token)
    np.testing.assert_array_equal(got.index.asi8, clean.ts)
    np.testing.assert_array_equal(got["last_price"].to_numpy(), clean.price)
    np.testing.assert_array_equal(got["volume"].to_numpy(), clean.volume)  # NaN for the index
    np.testing.assert_array_equal(got["oi"].to_numpy(), clean.oi)
    assert (got["receive_time"] >= got.index - pd.Timedelta(seconds=5)).all()
    # the top of the book of the full packets: what the simulator sent; NaN for the index
    assert clean.has_book
    for col, want in zip(("bid", "ask", "bid_qty", "ask_qty"), clean.book()):
        np.testing.assert_array_equal(got[col].to_numpy(np.float64), want, err_msg=col)
    stock = clean.token == SYMS["RELIANCE"]
    assert np.isnan(clean.bid[~stock]).all() and (clean.bid[stock] < clean.price[stock]).all()
    assert (clean.ask[stock] > clean.price[stock]).all() and (clean.bid_qty[stock] > 0).all()

    # the rejected ones apart, with their reason; a read of the directory never sees them
    from kiteohlc_lab.stores.tickread import read

    bad = read(f"file://{store_env}", rejected=True).to_pandas()
    assert sorted(bad["reason"]) == ["bad_price", "bad_stamp", "bad_stamp"]
    assert set(bad.loc[bad["reason"] == "bad_price", "last_price"]) == {0.0}
    whole = ds.dataset(str(store_env), format="parquet", partitioning="hive").to_table()
    assert whole.num_rows == len(clean) and (whole.column("last_price").to_numpy() > 0).all()
    assert set(whole.column("host").to_pylist()) and len(set(whole.column("date").to_pylist())) >= 1
    assert not [p for p in store_env.rglob("*.tmp")], "an open file left after the stream stopped"
    assert len(list(store_env.rglob("part-*.parquet"))) >= 3  # files rolled while it ran

    # polars and Arrow out, the same ticks
    pl = need_import("polars")
    frame = k.ticks("NIFTY", frame="polars")
    assert isinstance(frame, pl.DataFrame) and frame.height == int((clean.token == SYMS["NIFTY"]).sum())
    table = k.ticks("RELIANCE", columns=["last_price"], frame="arrow")
    assert table.column_names == ["exchange_time", "last_price"]
    np.testing.assert_array_equal(table.column("last_price").to_numpy(),
                                  clean.price[clean.token == SYMS["RELIANCE"]])

    # replay of the same period from the store, in a fresh data_dir (nothing of the live stores)
    monkeypatch.setenv("KITEOHLC_DATA_DIR", str(tmp_path / "replayer"))
    api.reset()
    lo = pd.Timestamp(int(clean.ts.min()), unit="ns", tz="UTC").tz_convert("Asia/Kolkata")
    hi = pd.Timestamp(int(clean.ts.max()) + NS, unit="ns", tz="UTC").tz_convert("Asia/Kolkata")
    info = k.stream(",".join(SYMS), *TFS, source="replay", start=lo.tz_localize(None).isoformat(),
                    end=str(hi))
    assert "tick store" in info.message
    assert k.wait(60)
    replayed = {(sym, tf): k.candles(sym, tf) for sym in SYMS for tf in TFS}
    assert not [p for p in store_env.rglob("part-*.parquet") if "replayer" in str(p)]
    assert len(read(f"file://{store_env}").column("token")) == len(clean), "the replay recorded again"
    o = oracle_candles(clean, TFS)
    for (sym, tf), df in live.items():
        have_live = df[COLS].astype(float)
        have_replay = replayed[(sym, tf)][COLS].astype(float)
        want = o.frame(SYMS[sym], tf, closed_only=False)[COLS]
        assert len(want) >= (2 if tf == "5s" else 1), (sym, tf)
        pd.testing.assert_frame_equal(have_replay, have_live, check_freq=False, obj=f"{sym} {tf} replay vs live")
        pd.testing.assert_frame_equal(have_replay, want, check_freq=False, obj=f"{sym} {tf} vs the oracle")


def test_ltp_mode_ticks_have_no_book(store_env, monkeypatch):
    import kiteohlc_lab as k
    from kiteohlc_lab import api

    sim = KiteSimulator(tick_interval=0.1, heartbeat_interval=0.5, seed=3).start()
    try:
        sim.pause()
        for key, value in (("TICKER_URL", sim.ticker_url), ("API_URL", sim.api_url), ("MODE", "ltp")):
            monkeypatch.setenv(f"KITEOHLC_{key}", value)
        api.reset()
        k.stream("RELIANCE", "5s", source="sim")
        wait_for(lambda: [s for s in sim.subscriptions() if s.get(SYMS["RELIANCE"]) == "ltp"], 15,
                 "the stream's ltp subscription")
        sim.resume()
        wait_for(lambda: len(sim.sent()) >= 10, 15, "ticks sent")
        sim.pause()
        n = len(sim.sent())
        wait_for(lambda: k.status()[0]["feed"]["ticks"] == n, 10, "the feed to receive every tick sent")
        k.stop()
        got = k.ticks("RELIANCE", columns=["last_price", "bid", "ask", "bid_qty", "ask_qty"])
    finally:
        api.reset()
        sim.stop()
    assert len(got) == n and set(sim.sent_all()["mode"]) == {"ltp"}
    np.testing.assert_array_equal(got["last_price"].to_numpy(), sim.sent().price)
    assert got[["bid", "ask", "bid_qty", "ask_qty"]].isna().all().all()  # ltp packets carry no depth


def test_frame_polars_and_arrow_of_candles(tmp_path):
    import pyarrow as pa

    import kiteohlc_lab as k

    tape = tmp_path / "t.csv"
    tape.write_text("timestamp,instrument_token,last_price,volume_traded\n"
                    "2026-11-25 09:15:01,738561,100,10\n2026-11-25 09:15:40,738561,101,20\n"
                    "2026-11-25 09:16:05,738561,99,35\n")
    k.stream("738561", "1m", source="replay", tape=str(tape))
    assert k.wait(30)
    df = k.candles(738561, "1m")
    table = k.candles(738561, "1m", frame="arrow")
    assert isinstance(table, pa.Table) and table.column_names[0] == "date"
    assert table.column("close").to_pylist() == df["close"].tolist()
    hist = k.history(738561, "1m", frame="arrow")
    assert hist.num_rows == len(k.history(738561, "1m"))
    pl = need_import("polars")
    frame = k.candles(738561, "1m", frame="polars")
    assert isinstance(frame, pl.DataFrame) and frame["close"].to_list() == df["close"].tolist()
    with pytest.raises(ValueError, match="frame 'excel' is not accepted; use one of pandas, polars, arrow"):
        k.candles(738561, "1m", frame="excel")


def test_bad_input_is_one_line(store_env, monkeypatch):
    import kiteohlc_lab as k
    from kiteohlc_lab.errors import MissingExtraError, TickStoreError

    with pytest.raises(TickStoreError, match=r"^start '2026-13-45 09:15' is not a date/time; use e\.g\."):
        k.stream("NIFTY", "10s", source="replay", start="2026-13-45 09:15")
    with pytest.raises(TickStoreError, match=r"^end '2026-11-25 09:00' is not after start"):
        k.ticks("NIFTY", "2026-11-25 09:15", "2026-11-25 09:00")
    with pytest.raises(TickStoreError, match=r"^no ticks of NIFTY in the tick store .* between "
                                             r"2026-11-25 09:15 and 2026-11-25 15:30 \(it holds no day at all\)$"):
        k.stream("NIFTY", "10s", source="replay", start="2026-11-25 09:15", end="2026-11-25 15:30")
    with pytest.raises(ValueError, match=r"--from/--to replay a range of the tick store"):
        k.stream("NIFTY", "10s", source="sim", start="2026-11-25 09:15")
    with pytest.raises(TickStoreError, match=r"^column\(s\) 'depth' not in the tick store; accepted: token"):
        k.ticks("NIFTY", columns=["depth"])
    assert len(k.ticks("NIFTY", "2026-11-25", "2026-11-26")) == 0  # an empty range reads as empty
    monkeypatch.setitem(sys.modules, "polars", None)  # as if it were not installed
    with pytest.raises(MissingExtraError, match=r"^frame='polars' needs polars, which is not installed: "
                                                r"pip install 'kiteohlc_lab\[polars\]'"):
        k.ticks("NIFTY", frame="polars")


def test_cli_ticks_lists_exports_and_says_no(store_env, tmp_path, capsys):
    from kiteohlc_lab.cli import main
    from kiteohlc_lab.core.ticks import TickBatch
    from kiteohlc_lab.stores.ticks import TickStore

    t0 = 1_795_000_000 * NS  # 2026-11-18 in IST
    s = TickStore(f"file://{store_env}", file_seconds=60)
    s.write(TickBatch([256265, 738561, 256265], [t0, t0 + NS, t0 + 2 * NS], [1.0, 2.0, 3.0],
                      [np.nan, 10.0, np.nan], None))
    s.write_rejected(TickBatch([738561], [0], [5.0], [1.0], None), np.array(["bad_stamp"]))
    s.close()
    assert main(["ticks"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["date", "hosts", "files", "size", "ticks", "instruments", "rejected"]
    row = out[2].split()
    assert row[0] == "2026-11-18" and row[-3:] == ["3", "2", "0"]
    path = tmp_path / "out" / "range.csv"
    assert main(["ticks", "256265", "--from", "2026-11-18", "--to", "2026-11-19", "--export", str(path)]) == 0
    exported = pd.read_csv(path)
    assert exported["last_price"].tolist() == [1.0, 3.0]
    assert main(["ticks", "256265", "--from", "2026-11-20", "--to", "2026-11-21"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"kiteohlc-lab: no ticks of 256265 in the tick store file://{store_env} between "
                   "2026-11-20 and 2026-11-21"]
    assert main(["ticks", "--from", "yesterday-ish"]) == 2
    assert "start 'yesterday-ish' is not a date/time" in capsys.readouterr().err
    assert main(["ticks", "--export", str(tmp_path / "x.xlsx")]) == 2
    assert ".xlsx is not accepted; use a .parquet or .csv" in capsys.readouterr().err


def test_polars_and_pyarrow_readers_agree_and_old_files_read_a_null_book(store_env, monkeypatch):
    """ticks() reads through polars when it is installed (faster for a few instruments), else
    pyarrow's dataset: the same frame either way; a file written before the book columns existed
    reads them as NaN."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import kiteohlc_lab as k
    from kiteohlc_lab.core.ticks import TickBatch
    from kiteohlc_lab.stores.ticks import TickStore

    need_import("polars")
    t0 = 1_795_000_000 * NS  # 2026-11-18 in IST
    old_dir = store_env / "host=old" / "date=2026-11-18"
    old_dir.mkdir(parents=True)
    zone = pa.timestamp("ns", tz="Asia/Kolkata")
    old = pa.table({"token": pa.array([738561], pa.int64()),
                    "exchange_time": pa.array([t0], pa.int64()).view(zone),
                    "receive_time": pa.array([t0], pa.int64()).view(zone),
                    "last_price": [9.0], "volume": [1.0], "oi": pa.nulls(1, pa.float64())})
    pq.write_table(old, old_dir / "part-old-1-1-000001.parquet")
    s = TickStore(f"file://{store_env}", file_seconds=60)
    s.write(TickBatch([738561, 256265], [t0 + NS, t0 + 2 * NS], [10.0, 20.0], [2.0, np.nan], None,
                      [9.95, np.nan], [10.05, np.nan], [5, np.nan], [7, np.nan]))
    s.close()
    window = ("2026-11-18", "2026-11-19")
    fast = k.ticks(None, *window)
    monkeypatch.setitem(sys.modules, "polars", None)  # as if it were not installed
    slow = k.ticks(None, *window)
    pd.testing.assert_frame_equal(fast, slow)
    assert fast["last_price"].tolist() == [9.0, 10.0, 20.0]  # files by (opened ns, seq): the old first
    np.testing.assert_array_equal(fast["bid"].to_numpy(), [np.nan, 9.95, np.nan])
    np.testing.assert_array_equal(fast["ask_qty"].to_numpy(), [np.nan, 7, np.nan])
    assert str(fast["bid_qty"].dtype) == "float32" and str(fast["bid"].dtype) == "float64"
    small = k.ticks(738561, *window, columns=["bid"], frame="arrow")
    assert small.column_names == ["exchange_time", "bid"] and small.num_rows == 2


def test_partitions_are_ist_dates_and_retention_prunes(tmp_path, monkeypatch):
    """Under TZ=UTC too: 23:00 UTC is the next IST day; days older than the retention go."""
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        from kiteohlc_lab.core.ticks import TickBatch
        from kiteohlc_lab.stores.ticks import TickStore, ist_date

        root = tmp_path / "ticks"
        late_utc = int(pd.Timestamp("2026-11-24 23:00", tz="UTC").value)  # 04:30 IST on the 25th
        old = root / "host=other" / "date=2020-01-01"
        old.mkdir(parents=True)
        (old / "part-other-1-1-000001.parquet").write_bytes(b"x")
        s = TickStore(str(root), file_seconds=60, retention_days=3)
        s.write(TickBatch([256265, 256265], [late_utc - 6 * 3600 * NS, late_utc], [1.0, 2.0], None, None))
        s.close()
        assert not old.exists()  # pruned at start, whichever host wrote it
        dates = sorted(p.parent.name for p in root.rglob("part-*.parquet"))
        assert dates == ["date=2026-11-24", "date=2026-11-25"]
        assert ist_date(late_utc) == "2026-11-25"
    finally:
        os.environ.pop("TZ", None)
        time.tzset()


def test_magic_replays_a_range_of_the_store(store_env, tmp_path):
    """``%ohlc_stream SYM 10s --source replay --from ... --to ...`` with no --tape, on the real Manager."""
    from IPython.core.error import UsageError

    from conftest_notebook import TestingShell, make_shell
    from kiteohlc_lab.core.ticks import TickBatch
    from kiteohlc_lab.stores.ticks import TickStore

    t0 = int(pd.Timestamp("2026-11-25 09:15", tz="Asia/Kolkata").value)
    ts = [t0 + 1 * NS, t0 + 4 * NS, t0 + 12 * NS, t0 + 15 * NS, t0 + 70 * NS]
    s = TickStore(f"file://{store_env}", file_seconds=60)
    s.write(TickBatch([738561] * 5, ts, [100.0, 103.0, 99.0, 101.0, 104.0], [10, 20, 35, 50, 80], None))
    s.close()
    ip = make_shell()
    ip.run_line_magic("load_ext", "kiteohlc_lab")
    try:
        live = ip.run_line_magic("ohlc_stream", '738561 10s --source replay --from "2026-11-25 09:15" '
                                 '--to "2026-11-25 09:16"')
        import kiteohlc_lab as k

        assert k.wait(30)
        df = live.df
        assert list(df["close"]) == [103.0, 101.0]  # 09:16:10 is outside the range
        assert list(df.index.strftime("%H:%M:%S")) == ["09:15:00", "09:15:10"]
        with pytest.raises(UsageError, match=r"^start '2026-11-25 25:00' is not a date/time"):
            ip.run_line_magic("ohlc_stream", '738561 10s --source replay --from "2026-11-25 25:00"')
        with pytest.raises(UsageError, match=r"^no ticks of 738561 in the tick store"):
            ip.run_line_magic("ohlc_stream", "738561 10s --source replay --from 2026-11-26 --to 2026-11-27")
        with pytest.raises(UsageError, match=r"--source replay needs --tape PATH .* or --from/--to"):
            ip.run_line_magic("ohlc_stream", "738561 10s --source replay")
        ip.run_line_magic("ohlc_stream", "738561 1m --source replay --from 2026-11-25 --to 2026-11-26 "
                          "--no-warm-start")
        assert k.wait(30) and k.manager().cfg.warm_start == "auto"  # for that start only
    finally:
        ip.run_line_magic("unload_ext", "kiteohlc_lab")
        TestingShell.clear_instance()


def test_collect_replays_a_range_of_the_store(store_env, tmp_path, capsys):
    """``kiteohlc-lab collect SYM 10s --source replay --from T --to T`` (no --tape) replays the store
    into the history store and exits 0 when the range is consumed; bad input is one line, exit 2."""
    import subprocess

    from kiteohlc_lab.cli import main
    from kiteohlc_lab.core.ticks import TickBatch
    from kiteohlc_lab.stores.ticks import TickStore

    t0 = int(pd.Timestamp("2026-11-25 09:15", tz="Asia/Kolkata").value)
    s = TickStore(f"file://{store_env}", file_seconds=60)
    s.write(TickBatch([738561] * 4, [t0 + NS, t0 + 11 * NS, t0 + 21 * NS, t0 + 95 * NS],
                      [100.0, 101.0, 102.0, 103.0], [10, 20, 30, 40], None))
    s.close()
    data = tmp_path / "collector-data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KITEOHLC_", "KITE_"))}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    base = [sys.executable, "-m", "kiteohlc_lab.cli", "collect", "738561", "10s", "--source", "replay",
            "--speed", "0", "--data-dir", str(data), "--tick-store", str(store_env), "--quiet"]
    run = subprocess.run(base + ["--from", "2026-11-25 09:15", "--to", "2026-11-25 09:16"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert main(["history", "738561", "10s", "--csv", "--data-dir", str(data)]) == 0
    hist = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert hist["close"].tolist() == [100.0, 101.0]  # the 09:15:20 candle is the last one, forming
    bad = subprocess.run(base + ["--from", "25/13/2026"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "kiteohlc-lab: start '25/13/2026' is not a date/time; use e.g. 2026-11-25 or '2026-11-25 09:15' "
        "(IST unless it carries a zone)"]


def test_replay_of_many_files_equals_the_oracle(store_env):
    """Half an hour of two instruments written by six successive writers (a restart every five
    minutes: six files, named by their opening time): the replay from the store reads them in order
    and makes the oracle's candles at 5s, 1m and 5m."""
    import kiteohlc_lab as k
    from kiteohlc_lab.core.ticks import TickBatch
    from kiteohlc_lab.stores.ticks import TickStore

    rng = np.random.default_rng(3)
    t0 = int(pd.Timestamp("2026-11-25 09:15", tz="Asia/Kolkata").value)
    n = 1800
    ts = np.repeat(t0 + np.arange(n // 2) * 2 * NS, 2) + rng.integers(0, NS, n)
    tok = np.tile([256265, 738561], n // 2)
    price = np.where(tok == 256265, 26000, 1550) + np.cumsum(rng.normal(0, 0.5, n)).round(2)
    vol = np.where(tok == 256265, np.nan, np.cumsum(rng.integers(0, 30, n)).astype(float))
    ticks = TickBatch(tok, ts, price, vol, None)
    for part in np.array_split(np.arange(n), 6):
        s = TickStore(f"file://{store_env}", file_seconds=600)
        s.write(ticks.take(part))
        s.close()
    assert len(list(store_env.rglob("part-*.parquet"))) == 6
    k.stream("256265,738561", *TFS, source="replay", start="2026-11-25 09:15", end="2026-11-25 09:45")
    assert k.wait(60)
    o = oracle_candles(ticks, TFS)
    for token in (256265, 738561):
        for tf in TFS:
            want = o.frame(token, tf, closed_only=False)[COLS]
            assert len(want) == {"5s": 360, "1m": 30, "5m": 6}[tf]
            pd.testing.assert_frame_equal(k.candles(token, tf)[COLS].astype(float), want,
                                          check_freq=False, obj=f"{token} {tf}")
